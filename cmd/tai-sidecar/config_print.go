package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"

	"go.yaml.in/yaml/v3"
)

// runConfig is `tai-sidecar config print [--format yaml|json] [serve
// flags]`: it reads serve's settings as serve would, from the same flags,
// environment and config file, and prints the effective value of each with
// where it came from. An invalid configuration is a usage error, as for
// serve. The YAML form is itself a valid config file.
func runConfig(args []string, socket string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 || args[0] != "print" {
		return &usageError{"usage: tai-sidecar config print [--config FILE] [--format yaml|json] [serve flags]"}
	}
	format := "yaml"
	l, err := loadConfig("config print", args[1:], socket, stderr, getenv, func(fs *flag.FlagSet) {
		fs.StringVar(&format, "format", format, "yaml (a valid config file, sources in comments) or json")
	})
	if err != nil {
		return err
	}
	switch format {
	case "yaml":
		enc := yaml.NewEncoder(stdout)
		enc.SetIndent(2)
		if err := enc.Encode(l.yamlDoc()); err != nil {
			return err
		}
		return enc.Close()
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(l.jsonDoc())
	}
	return &usageError{fmt.Sprintf("config print: --format %q: want yaml or json", format)}
}

// printed is one value of config print and where it came from.
type printed struct {
	Value  any    `json:"value"`
	Source string `json:"source"`
}

// entries lists the printed settings in definition order, by file key,
// then per_governor's entries by governor ("*" first), by key.
func (l *loaded) entries() (settings []string, values map[string]printed, governors []string, gov map[string]map[string]printed) {
	values = make(map[string]printed)
	path := ""
	if l.file != nil {
		path = l.file.path
	}
	for _, s := range l.settings {
		if s.value == nil {
			continue
		}
		settings = append(settings, s.fileKey())
		values[s.fileKey()] = printed{s.value(), s.sourceName(path)}
	}
	names := map[string]bool{"*": true}
	if l.file != nil {
		for g := range l.file.governors {
			names[g] = true
		}
	}
	for g := range l.cfg.Sync.Resolvers.Governors {
		names[g] = true
	}
	governors = slices.Sorted(maps.Keys(names)) // "*" sorts before any name
	gov = make(map[string]map[string]printed)
	for _, g := range governors {
		every, keep := l.cfg.Snapshots.For(g)
		r := l.cfg.History.For(g)
		gov[g] = map[string]printed{
			govResolver:          {l.cfg.Sync.Resolvers.For(g).String(), l.gov.source(g, govResolver)},
			govSnapshotEvery:     {every, l.gov.source(g, govSnapshotEvery)},
			govSnapshotKeep:      {keep, l.gov.source(g, govSnapshotKeep)},
			govHistoryMaxAge:     {r.MaxAge.String(), l.gov.source(g, govHistoryMaxAge)},
			govHistoryKeepEvents: {r.KeepEvents, l.gov.source(g, govHistoryKeepEvents)},
		}
	}
	return settings, values, governors, gov
}

// source says where governor's key came from: the file's entry of the
// governor, else (resolvers) --resolvers or TAI_RESOLVERS, else "*"'s entry.
func (g *governorSources) source(governor, key string) string {
	if key == govResolver && !g.fromFile {
		path := ""
		if g.file != nil {
			path = g.file.path
		}
		return g.resolvers.sourceName(path)
	}
	if g.file != nil {
		if e, ok := g.file.governors[governor]; ok {
			if v, ok := e.fields[key]; ok {
				return fmt.Sprintf("file %s:%d", g.file.path, v.line)
			}
		}
	}
	if governor != "*" {
		return `"*": ` + g.source("*", key)
	}
	return "default"
}

var govKeys = []string{govResolver, govSnapshotEvery, govSnapshotKeep, govHistoryMaxAge, govHistoryKeepEvents}

// yamlDoc is the configuration as a config file, each value's source in a
// comment after it.
func (l *loaded) yamlDoc() *yaml.Node {
	settings, values, governors, gov := l.entries()
	root := &yaml.Node{Kind: yaml.MappingNode,
		HeadComment: "Effective configuration of tai-sidecar serve; after each value, where it came from."}
	if l.file != nil {
		root.HeadComment += fmt.Sprintf("\nConfig file: %s (%s).", l.file.path, l.fileFrom)
	}
	for _, k := range settings {
		appendPair(root, k, valueNode(values[k]))
	}
	pg := &yaml.Node{Kind: yaml.MappingNode}
	for _, g := range governors {
		m := &yaml.Node{Kind: yaml.MappingNode}
		for _, k := range govKeys {
			appendPair(m, k, valueNode(gov[g][k]))
		}
		appendPair(pg, g, m)
	}
	appendPair(root, perGovernorKey, pg)
	return root
}

func appendPair(m *yaml.Node, key string, v *yaml.Node) {
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, v)
}

func valueNode(p printed) *yaml.Node {
	var n yaml.Node
	if err := n.Encode(p.Value); err != nil {
		panic(fmt.Sprintf("config print: %v", err)) // strings, numbers, booleans and lists of them always encode
	}
	if n.Kind == yaml.SequenceNode {
		n.Style = yaml.FlowStyle
	}
	n.LineComment = p.Source
	return &n
}

// jsonDoc is the configuration with the config file's keys, each value a
// {"value", "source"} object.
func (l *loaded) jsonDoc() map[string]any {
	_, values, _, gov := l.entries()
	doc := make(map[string]any, len(values)+1)
	for k, v := range values {
		doc[k] = v
	}
	doc[perGovernorKey] = gov
	return doc
}
