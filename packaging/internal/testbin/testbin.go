// Package testbin builds tai-sidecar from the main module for the packaging
// tests, and reads the flags its serve command accepts.
package testbin

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// MainModule is the module path of the tai-sidecar sources.
const MainModule = "github.com/tai-state/tai-state"

// ReleaseFlags are the go build flags of a release binary, as the container
// image builds it: no local paths, no symbol tables, and the version (if
// not empty) stamped in. Build adds CGO_ENABLED=0.
func ReleaseFlags(version string) []string {
	ld := "-s -w"
	if version != "" {
		ld += " -X main.version=" + version
	}
	return []string{"-trimpath", "-ldflags", ld}
}

// MainModuleDir returns the directory of the main module: the nearest
// directory at or above the working directory whose go.mod declares
// MainModule.
func MainModuleDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(b) == MainModule {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working directory", MainModule)
		}
		dir = parent
	}
}

func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Build compiles ./cmd/tai-sidecar of the main module into out with
// CGO_ENABLED=0 and the given go build flags, and returns out.
func Build(out string, flags ...string) (string, error) {
	dir, err := MainModuleDir()
	if err != nil {
		return "", err
	}
	args := append([]string{"build", "-o", out}, flags...)
	args = append(args, "./cmd/tai-sidecar")
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return out, nil
}

var flagLine = regexp.MustCompile(`^\s+-([a-z][a-z0-9-]*)`)

// ServeFlags runs `bin serve -h` and returns the names of the flags it
// lists, without dashes, mapped to their help text.
func ServeFlags(bin string) (map[string]string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, "serve", "-h")
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 2) { // -h exits 2, as flag does
		return nil, fmt.Errorf("%s serve -h: %w\n%s", bin, err, out.Bytes())
	}
	flags := map[string]string{}
	var last string
	for _, line := range strings.Split(out.String(), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			last = m[1]
			flags[last] = ""
			continue
		}
		if last != "" && strings.TrimSpace(line) != "" {
			flags[last] += strings.TrimSpace(line) + " "
		}
	}
	if len(flags) == 0 {
		return nil, fmt.Errorf("%s serve -h listed no flags:\n%s", bin, out.Bytes())
	}
	return flags, nil
}

var envName = regexp.MustCompile(`\benv (TAI_[A-Z0-9_]+)`)

// EnvVars returns the TAI_* variables named in the serve flags' help, mapped
// to their flag.
func EnvVars(flags map[string]string) map[string]string {
	env := map[string]string{}
	for name, help := range flags {
		for _, m := range envName.FindAllStringSubmatch(help, -1) {
			env[m[1]] = name
		}
	}
	return env
}
