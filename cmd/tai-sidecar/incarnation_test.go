package main

import (
	"bytes"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/localcache"
)

// TestNewIncarnation: new-incarnation gives a stopped data dir's store a
// new origin under the same node id, which the store keeps; it refuses a
// data dir a store is open on, and one that holds no store.
func TestNewIncarnation(t *testing.T) {
	dir := t.TempDir()
	id, err := loadNodeID(dir, "n1") // a data dir as serve leaves it
	if err != nil {
		t.Fatal(err)
	}
	open := func() *localcache.Store {
		t.Helper()
		s, err := localcache.Open(localcache.Options{Dir: filepath.Join(dir, "badger"), NodeID: id})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	newIncarnation := func(dir string) (map[string]string, error) {
		var out bytes.Buffer
		err := run(t.Context(), []string{"new-incarnation", "--data-dir", dir}, &out, io.Discard, envMap(nil))
		var got map[string]string
		if err == nil {
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatalf("output %q: %v", out.String(), err)
			}
		}
		return got, err
	}

	s := open()
	first := s.Origin()
	if _, err := newIncarnation(dir); err == nil || !strings.Contains(err.Error(), "must be stopped first") {
		t.Fatalf("new-incarnation on an open store: %v", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, err := newIncarnation(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got["node_id"] != "n1" || got["was"] != first || got["origin"] == first || !strings.HasPrefix(got["origin"], "n1~") {
		t.Fatalf("new-incarnation printed %v; the origin was %s", got, first)
	}
	s = open()
	if s.Origin() != got["origin"] {
		t.Fatalf("the store reopened writes as %s, want %s", s.Origin(), got["origin"])
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	if _, err := newIncarnation(t.TempDir()); err == nil || !strings.Contains(err.Error(), "holds no store") {
		t.Fatalf("new-incarnation on an empty dir: %v", err)
	}
	if err := run(t.Context(), []string{"new-incarnation", "extra"}, io.Discard, io.Discard, envMap(nil)); exitCode(err) != 2 {
		t.Fatalf("an extra argument: %v, want a usage error", err)
	}
}
