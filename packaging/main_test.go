package packaging

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tai-state/tai-state/packaging/internal/testbin"
)

// sidecar is a tai-sidecar built once for all tests with the release flags
// (testbin.ReleaseFlags), and serveFlags the flags its serve command lists.
var (
	sidecar    string
	serveFlags map[string]string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "packaging-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if sidecar, err = testbin.Build(filepath.Join(dir, "tai-sidecar"), testbin.ReleaseFlags("")...); err != nil {
			fmt.Fprintln(os.Stderr, "build tai-sidecar:", err)
			return 1
		}
		if serveFlags, err = testbin.ServeFlags(sidecar); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// checkServeArgs checks that every flag in args (after "serve") is one that
// `tai-sidecar serve -h` lists and that each takes a value, and returns the
// values by flag name.
func checkServeArgs(t *testing.T, args []string) map[string]string {
	t.Helper()
	vals := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, ok := cutDashes(a)
		if !ok {
			t.Errorf("serve argument %q is not a flag", a)
			continue
		}
		if _, known := serveFlags[name]; !known {
			t.Errorf("serve flag --%s: not in `tai-sidecar serve -h`", name)
		}
		if i+1 >= len(args) {
			t.Errorf("serve flag --%s has no value", name)
			break
		}
		i++
		vals[name] = args[i]
	}
	return vals
}

func cutDashes(s string) (string, bool) {
	switch {
	case len(s) > 2 && s[:2] == "--":
		return s[2:], true
	case len(s) > 1 && s[0] == '-':
		return s[1:], true
	}
	return "", false
}
