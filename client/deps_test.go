package client

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the client thin: apart from the standard library it
// may only depend on the wire package and its msgpack codec, never on the
// server side (Badger, gRPC, Firestore, localcache, the sockapi server).
func TestDependencies(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	out, err := exec.Command(goBin, "list", "-deps",
		"-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	allowed := []string{
		"github.com/tai-state/tai-state/client",
		"github.com/tai-state/tai-state/sockapi/wire",
		"github.com/hashicorp/go-msgpack/v2/",
	}
	forbidden := []string{
		"github.com/dgraph-io/badger",
		"google.golang.org/grpc",
		"cloud.google.com/go/firestore",
		"github.com/tai-state/tai-state/localcache",
		"github.com/tai-state/tai-state/sockapi",
	}
	var deps []string
	for _, p := range strings.Fields(string(out)) {
		deps = append(deps, p)
		ok := false
		for _, a := range allowed {
			if p == a || strings.HasSuffix(a, "/") && strings.HasPrefix(p, a) {
				ok = true
			}
		}
		if ok {
			continue
		}
		for _, f := range forbidden {
			if p == f || strings.HasPrefix(p, f+"/") {
				t.Errorf("client depends on %s, which it must never import", p)
				ok = true
			}
		}
		if !ok {
			t.Errorf("client depends on %s, which is not in the allowed list", p)
		}
	}
	if len(deps) < 2 {
		t.Fatalf("go list found only %v: the check is not looking at the client", deps)
	}
}
