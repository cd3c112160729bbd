package sockapi

import (
	"context"
	"fmt"
	"testing"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// TestPipelinedOrderPerState pipelines, on one connection and without
// waiting for replies, a chain of writes to each of several states with reads
// between them. Every write must apply in arrival order (each carries the
// if_version its predecessor produces) and every read must see the write sent
// just before it, while writes to different states still share commits.
func TestPipelinedOrderPerState(t *testing.T) {
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close(context.Background()) })
	ts := startServer(t, store, Options{})

	const states, rounds = 8, 40
	c := ts.hello()
	codec := wire.NewCodec()
	var out []byte
	id := uint64(100)
	type expect struct {
		op      string
		state   string
		version uint64
	}
	want := map[uint64]expect{}
	for r := 1; r <= rounds; r++ {
		for s := 0; s < states; s++ {
			name := fmt.Sprintf("s%d", s)
			value, _ := wire.Marshal(r)
			prev := uint64(r - 1)
			id++
			out, _ = codec.AppendFrame(out, &wire.Request{ID: id, Op: wire.OpPut, Governor: "g", State: name, Value: value, IfVersion: &prev})
			want[id] = expect{"put", name, uint64(r)}
			id++
			out, _ = codec.AppendFrame(out, &wire.Request{ID: id, Op: wire.OpGet, Governor: "g", State: name})
			want[id] = expect{"get", name, uint64(r)}
		}
		id++
		out, _ = codec.AppendFrame(out, &wire.Request{ID: id, Op: wire.OpList, Governor: "g"})
		want[id] = expect{"list", "", uint64(r)}
	}
	// Written from another goroutine: the replies must be read meanwhile.
	go c.nc.Write(out)

	for range want {
		resp := c.recv()
		w, ok := want[resp.ID]
		if !ok {
			t.Fatalf("reply to unknown id %d", resp.ID)
		}
		delete(want, resp.ID)
		if resp.Error != nil {
			t.Fatalf("%s %s (id %d): %v", w.op, w.state, resp.ID, resp.Error)
		}
		switch w.op {
		case "put", "get":
			if resp.Record == nil || resp.Record.Version != w.version {
				t.Fatalf("%s %s (id %d): record %+v, want version %d", w.op, w.state, resp.ID, resp.Record, w.version)
			}
		case "list":
			if len(resp.Records) != states {
				t.Fatalf("list (id %d): %d records, want %d", resp.ID, len(resp.Records), states)
			}
			for _, r := range resp.Records {
				if r.Version < w.version {
					t.Fatalf("list (id %d) after round %d: %s at version %d", resp.ID, w.version, r.State, r.Version)
				}
			}
		}
	}
	if st := store.Stats(); st.Commits >= st.CommitWrites {
		t.Logf("commits %d for %d writes: no grouping happened this run", st.Commits, st.CommitWrites)
	}
}
