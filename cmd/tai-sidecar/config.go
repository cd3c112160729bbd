package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// This file reads serve's settings from their four layers. Each setting is
// defined once (config_settings.go) and can be given as a flag, a TAI_*
// environment variable or a key of the config file; the highest layer that
// gives it wins:
//
//	flag > environment > config file > default
//
// A flag or variable given as "" counts as not given, as before the config
// file existed; a file key with no value (null) too.

// source is the layer a setting's value came from, lowest first.
type source int

const (
	fromDefault source = iota
	fromFile
	fromEnv
	fromFlag
)

// setting is one serve setting: where it can be given, its default, and how
// its text is read into the Config.
type setting struct {
	flag  string   // flag name, without dashes
	key   string   // config file key: flag with '_' for '-' unless set
	env   []string // environment variables, the first set one wins
	def   string   // default, as text
	usage string
	// boolean flags need no value: --otlp-traces means true.
	boolean bool
	// list settings are repeatable flags whose occurrences add up, comma
	// lists in a variable, and a list (or a comma list) in the file.
	list bool

	// parse reads text into the Config, checking its type and range; its
	// error says what is wrong with the value, not where it came from.
	parse func(text string) error
	// check, when set, runs once every setting is parsed, for rules that
	// involve other settings.
	check func(s *setting) error
	// value is the effective value, for config print.
	value func() any

	// Set by loadSettings.
	text  string
	src   source
	where string // "--max-conns", "TAI_MAX_CONNS", "tai.yaml:3: max_conns"
	file  string // the config file, when src is fromFile
	line  int    // in the config file, when src is fromFile
	flags []string
}

func (s *setting) fileKey() string {
	if s.key != "" {
		return s.key
	}
	return strings.ReplaceAll(s.flag, "-", "_")
}

// errorf reports a bad value of s, naming where it came from.
func (s *setting) errorf(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if s.list {
		return fmt.Errorf("%s: %s", s.where, msg)
	}
	return fmt.Errorf("%s %q: %s", s.where, s.text, msg)
}

// named names s, with its value, where it was given: how an error about a
// rule between settings points at each setting involved. "--max-conns 10",
// "TAI_MAX_CONNS=10", "max_conns 10 (tai.yaml:2)" or "--max-conns 1024
// (default)".
func (s *setting) named() string {
	switch s.src {
	case fromFlag:
		return fmt.Sprintf("--%s %s", s.flag, s.text)
	case fromEnv:
		return fmt.Sprintf("%s=%s", s.where, s.text)
	case fromFile:
		return fmt.Sprintf("%s %s (%s:%d)", s.fileKey(), s.text, s.file, s.line)
	}
	return fmt.Sprintf("--%s %s (default)", s.flag, s.text)
}

// sourceName says where the value came from, for config print.
func (s *setting) sourceName(file string) string {
	switch s.src {
	case fromFlag:
		return "flag --" + s.flag
	case fromEnv:
		return "env " + s.where
	case fromFile:
		return fmt.Sprintf("file %s:%d", file, s.line)
	}
	return "default"
}

// flagValue is a setting's flag. Its String is the setting's default, so
// that -h shows it as flag's own types do.
type flagValue struct{ s *setting }

func (v *flagValue) String() string {
	if v == nil || v.s == nil || v.s.boolean && v.s.def == "false" {
		return ""
	}
	return v.s.def
}

func (v *flagValue) Set(text string) error {
	if v.s.list {
		v.s.flags = append(v.s.flags, text)
	} else {
		v.s.flags = []string{text}
	}
	return nil
}

func (v *flagValue) IsBoolFlag() bool { return v.s.boolean }

// usageText is the help of s's flag: its usage and its variables.
func (s *setting) usageText() string {
	u := s.usage
	if s.list {
		u += " (repeatable or a comma list)"
	}
	if len(s.env) > 0 {
		u += " (env " + strings.Join(s.env, ", else ") + ")"
	}
	return u
}

// Where the config file comes from.
const (
	configFlag = "config"
	configEnv  = "TAI_CONFIG"
)

// loaded is serve's configuration with where each value came from.
type loaded struct {
	cfg      *Config
	settings []*setting
	file     *configFile // nil: no config file
	fileFrom string      // where the file was named
	gov      *governorSources
}

// loadConfig reads serve's settings from args (serve's flags), getenv and
// the config file they name, and checks them. socket is the global
// --socket flag when it was given ("" otherwise): a flag too. cmd names the
// command in errors and help; extra, when set, adds the command's own flags.
// Errors are *usageError, or flag.ErrHelp.
func loadConfig(cmd string, args []string, socket string, stderr io.Writer, getenv func(string) string,
	extra func(*flag.FlagSet)) (*loaded, error) {
	c := &Config{}
	ss := c.settings()
	fs := flag.NewFlagSet("tai-sidecar "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	byKey := make(map[string]*setting, len(ss))
	for _, s := range ss {
		byKey[s.fileKey()] = s
		fs.Var(&flagValue{s}, s.flag, s.usageText())
		if s.flag == "socket" && socket != "" {
			s.flags = []string{socket}
		}
	}
	configPath := fs.String(configFlag, "", "YAML config file; flags win over the environment, the environment over the file (env "+configEnv+")")
	if extra != nil {
		extra(fs)
	}
	if err := parseCommand(fs, cmd, args); err != nil {
		return nil, err
	}
	bad := func(err error) error { return &usageError{cmd + ": " + err.Error()} }

	l := &loaded{cfg: c, settings: ss}
	path, pathFrom := *configPath, "flag --"+configFlag
	if path == "" {
		path, pathFrom = getenv(configEnv), "env "+configEnv
	}
	if path != "" {
		l.fileFrom = pathFrom
		f, err := readConfigFile(path, byKey)
		if err != nil {
			return nil, bad(err)
		}
		l.file = f
	}
	for _, s := range ss {
		l.pick(s, getenv)
		if err := s.parse(s.text); err != nil {
			return nil, bad(s.errorf("%v", err))
		}
	}
	for _, s := range ss {
		if s.check != nil {
			if err := s.check(s); err != nil {
				return nil, bad(err)
			}
		}
	}
	gov, err := c.resolveGovernors(l.file, byKey["resolvers"])
	if err != nil {
		return nil, bad(err)
	}
	l.gov = gov
	c.Sync.Fault = getenv("TAI_FAULT") // a test hook, not a setting
	if err := c.Validate(); err != nil {
		return nil, bad(err)
	}
	return l, nil
}

// pick sets s's text from the highest layer that gives it.
func (l *loaded) pick(s *setting, getenv func(string) string) {
	if len(s.flags) > 0 {
		s.text, s.src, s.where = strings.Join(s.flags, ","), fromFlag, "--"+s.flag
		return
	}
	for _, name := range s.env {
		if v := getenv(name); v != "" {
			s.text, s.src, s.where = v, fromEnv, name
			return
		}
	}
	if l.file != nil {
		if v, ok := l.file.values[s.fileKey()]; ok {
			s.text, s.src, s.file, s.line = v.text, fromFile, l.file.path, v.line
			s.where = fmt.Sprintf("%s:%d: %s", l.file.path, v.line, s.fileKey())
			return
		}
	}
	s.text, s.src, s.where = s.def, fromDefault, "--"+s.flag+" (default)"
}
