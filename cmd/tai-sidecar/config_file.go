package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// The config file is YAML: a mapping whose keys are the settings' keys
// (config_settings.go) and per_governor, the per-governor settings. It is
// read strictly: an unknown key, a key given twice or a value of the wrong
// shape is an error naming the file and the line.

// maxConfigFile bounds the config file: a configuration is a few kilobytes.
const maxConfigFile = 1 << 20

// perGovernorKey is the file's per-governor section; "*" in it is the entry
// of every governor that has none.
const perGovernorKey = "per_governor"

// The keys of a per_governor entry.
const (
	govResolver          = "resolver"
	govSnapshotEvery     = "snapshot_every"
	govSnapshotKeep      = "snapshot_keep"
	govHistoryMaxAge     = "history_max_age"
	govHistoryKeepEvents = "history_keep_events"
)

// configFile is a parsed config file.
type configFile struct {
	path      string
	values    map[string]fileValue      // by setting key
	governors map[string]*governorEntry // per_governor, by governor
}

// fileValue is a value given in the file, as text, and its line; line 0
// means not given.
type fileValue struct {
	text string
	line int
}

// governorEntry is one governor's entry under per_governor, by key
// (govResolver, ...).
type governorEntry struct {
	line   int
	fields map[string]fileValue
}

// errAt is an error about line of the file.
func (f *configFile) errAt(line int, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %s", f.path, line, fmt.Sprintf(format, args...))
}

// readConfigFile reads and checks the shape of the config file at path;
// settings are the known keys. The values are read by the settings.
func readConfigFile(path string, settings map[string]*setting) (*configFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxConfigFile+1))
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	if len(b) > maxConfigFile {
		return nil, fmt.Errorf("config file %s: larger than %d bytes", path, maxConfigFile)
	}
	f := &configFile{path: path, values: make(map[string]fileValue), governors: make(map[string]*governorEntry)}
	return f, f.parse(b, settings)
}

func (f *configFile) parse(b []byte, settings map[string]*setting) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return nil // an empty file
	} else if err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return fmt.Errorf("%s: %w", f.path, err)
	default:
		return f.errAt(next.Line, "more than one YAML document (the file is one mapping of settings)")
	}
	root := deref(doc.Content[0])
	if isNull(root) {
		return nil
	}
	return eachKey(f, root, "settings", func(key string, k, v *yaml.Node) error {
		if key == perGovernorKey {
			return f.parseGovernors(v)
		}
		s, ok := settings[key]
		if !ok {
			return f.errAt(k.Line, "unknown key %q%s", key, keyHint(key, settings))
		}
		if isNull(v) {
			return nil
		}
		text, err := f.text(key, v, s.list)
		if err != nil {
			return err
		}
		f.values[key] = fileValue{text: text, line: v.Line}
		return nil
	})
}

// eachKey calls fn with every key of mapping m, whose values are what, in
// order, refusing anything but a mapping and keys given twice.
func eachKey(f *configFile, m *yaml.Node, what string, fn func(key string, k, v *yaml.Node) error) error {
	if m.Kind != yaml.MappingNode {
		return f.errAt(m.Line, "want a mapping of %s, not %s", what, kindName(m))
	}
	seen := make(map[string]int)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := deref(m.Content[i]), deref(m.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return f.errAt(k.Line, "a key must be a single value, not %s", kindName(k))
		}
		if first, dup := seen[k.Value]; dup {
			return f.errAt(k.Line, "%q is given twice (first at line %d)", k.Value, first)
		}
		seen[k.Value] = k.Line
		if err := fn(k.Value, k, v); err != nil {
			return err
		}
	}
	return nil
}

// text is a setting's value as text: a single value, or for a list
// setting a list of single values, joined with commas as in a variable.
func (f *configFile) text(key string, v *yaml.Node, list bool) (string, error) {
	switch {
	case v.Kind == yaml.ScalarNode:
		return v.Value, nil
	case v.Kind == yaml.SequenceNode && list:
		items := make([]string, len(v.Content))
		for i, it := range v.Content {
			it = deref(it)
			if it.Kind != yaml.ScalarNode || isNull(it) {
				return "", f.errAt(it.Line, "%s[%d]: want a single value, not %s", key, i, kindName(it))
			}
			items[i] = it.Value
		}
		return strings.Join(items, ","), nil
	case list:
		return "", f.errAt(v.Line, "%s: want a list, not %s", key, kindName(v))
	}
	return "", f.errAt(v.Line, "%s: want a single value, not %s", key, kindName(v))
}

// parseGovernors reads per_governor: governor name -> entry.
func (f *configFile) parseGovernors(m *yaml.Node) error {
	if isNull(m) {
		return nil
	}
	return eachKey(f, m, "governors", func(name string, k, v *yaml.Node) error {
		if name != "*" {
			if err := wire.ValidateName("governor", name); err != nil {
				return f.errAt(k.Line, "%s: %v", perGovernorKey, err)
			}
		}
		e := &governorEntry{line: k.Line, fields: make(map[string]fileValue)}
		f.governors[name] = e
		if isNull(v) {
			return nil
		}
		where := fmt.Sprintf("%s.%s", perGovernorKey, name)
		return eachKey(f, v, where+" settings", func(key string, k, v *yaml.Node) error {
			if !slices.Contains(govKeys, key) {
				return f.errAt(k.Line, "%s: unknown key %q (want one of %s)", where, key, strings.Join(govKeys, ", "))
			}
			if isNull(v) {
				return nil
			}
			text, err := f.text(where+"."+key, v, false)
			if err != nil {
				return err
			}
			e.fields[key] = fileValue{text: text, line: v.Line}
			return nil
		})
	})
}

// keyHint suggests the key meant by a flag name or a variable name.
func keyHint(key string, settings map[string]*setting) string {
	for k, s := range settings {
		if key == s.flag || key == "--"+s.flag || strings.EqualFold(key, k) || len(s.env) > 0 && key == s.env[0] {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
	}
	return ""
}

// deref follows an alias to the node it names.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		return "a single value"
	}
	return "an alias"
}
