package txn_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the Firestore SDK out of txn and of the socket
// server that serves locks through it: the Firestore implementation lives
// in txn/firestorelocks, which only the daemon's wiring imports.
func TestDependencies(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	forbidden := []string{
		"cloud.google.com/go",
		"google.golang.org/grpc",
		"google.golang.org/api",
		"github.com/tai-state/tai-state/syncer/firestore",
		"github.com/tai-state/tai-state/txn/firestorelocks",
	}
	for _, pkg := range []string{"github.com/tai-state/tai-state/txn", "github.com/tai-state/tai-state/sockapi"} {
		out, err := exec.Command(goBin, "list", "-deps",
			"-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) == 0 || deps[len(deps)-1] != pkg {
			t.Fatalf("go list -deps %s listed %v: the check is not looking at %s", pkg, deps, pkg)
		}
		for _, p := range deps {
			for _, f := range forbidden {
				if p == f || strings.HasPrefix(p, f+"/") {
					t.Errorf("%s depends on %s, which it must never import", pkg, p)
				}
			}
		}
	}
}
