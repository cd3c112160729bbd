package localcache

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tai-state/tai-state/syncer"
	"github.com/tai-state/tai-state/syncer/firestore"
	"github.com/tai-state/tai-state/syncer/firestore/firestoretest"
	"github.com/tai-state/tai-state/syncer/memremote"
)

// TestUndecodableKeptAcrossRestart: a state held locally whose shared-store
// document is then overwritten with one that does not decode: the pull
// leaves that out, and it is still known after the store is closed and
// opened again, although the cursor is past it: counted, and named by
// Undecodable, so a read does not take the stale local copy for fresh with
// its governor. Once repaired and pulled, it is forgotten for good.
func TestUndecodableKeptAcrossRestart(t *testing.T) {
	type backend struct {
		name string
		open func(t *testing.T) (r syncer.Remote, plant, remove func(k syncer.Key))
	}
	for _, be := range []backend{
		{"memremote", func(t *testing.T) (syncer.Remote, func(syncer.Key), func(syncer.Key)) {
			m := memremote.New()
			return m, func(k syncer.Key) { m.PutUndecodable(k, errors.New("version: a string (planted)")) }, m.Forget
		}},
		{"firestore", func(t *testing.T) (syncer.Remote, func(syncer.Key), func(syncer.Key)) {
			client, root := firestoretest.Client(t)
			return firestore.New(client, firestore.Config{Root: root}),
				func(k syncer.Key) { firestoretest.PutUndecodable(t, client, root, k) },
				func(k syncer.Key) {
					if _, err := client.Doc(root + "/governors/" + k.Governor + "/states/" + k.State).Delete(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
		}},
	} {
		t.Run(be.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r, plant, remove := be.open(t)
			writer := openMem(t, func(o *Options) { o.NodeID = "writer" })
			push := func() {
				t.Helper()
				p := syncer.New(writer, r, syncer.Options{})
				for writer.Depth() > 0 {
					if _, err := p.SyncOnce(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			bad := key("g", "bad")
			mustPut(t, writer, key("g", "k1"), "k1")
			mustPut(t, writer, bad, "v1")
			push()

			dir := t.TempDir()
			s := openDisk(t, dir)
			pull := func() *syncer.Puller {
				t.Helper()
				p := syncer.NewPuller(s, r, syncer.PullOptions{Governors: []string{"g"}})
				if _, err := p.PullOnce(ctx); err != nil {
					t.Fatal(err)
				}
				return p
			}
			p := pull()
			plant(syncer.Key(bad))
			if _, err := p.PullOnce(ctx); err != nil {
				t.Fatal(err)
			}
			found := p.Undecodable(syncer.Key(bad))
			if found == nil {
				t.Fatal("the document is not reported")
			}

			closeStore(t, s)
			s = openDisk(t, dir)
			kept, err := s.KeptUndecodable(ctx)
			if err != nil || len(kept) != 1 {
				t.Fatalf("kept after a restart: %v, %v; want the document", kept, err)
			}
			p = pull()
			d := p.Undecodable(syncer.Key(bad))
			if d == nil || d.Doc != found.Doc || !d.Time.Equal(found.Time) || d.Err.Error() != found.Err.Error() {
				t.Fatalf("Undecodable after a restart = %+v, want %+v", d, found)
			}
			if st := p.Stats(); st.UndecodableStates != 1 || st.Undecodable != 0 {
				t.Fatalf("stats after a restart %+v: want 1 state, none left out again", st)
			}
			if _, ok := p.FreshAt("g"); !ok {
				t.Fatal("the governor is not pulled")
			}
			if rec, err := s.Get(ctx, bad); err != nil || string(rec.Value) != "v1" {
				t.Fatalf("local copy: %q, %v; want the last version that decoded", rec.Value, err)
			}

			// Repaired: forgotten, across a restart too.
			remove(syncer.Key(bad))
			mustPut(t, writer, bad, "repaired")
			push()
			if _, err := p.PullOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if d := p.Undecodable(syncer.Key(bad)); d != nil {
				t.Fatalf("Undecodable after the repair: %v", d)
			}
			if rec, err := s.Get(ctx, bad); err != nil || string(rec.Value) != "repaired" {
				t.Fatalf("local copy after the repair: %q, %v", rec.Value, err)
			}
			closeStore(t, s)
			s = openDisk(t, dir)
			defer closeStore(t, s)
			if st := pull().Stats(); st.UndecodableStates != 0 {
				t.Fatalf("stats after the repair and a restart %+v", st)
			}
		})
	}
}

// TestUndecodableDroppedAcrossRestart: the documents met past
// MaxUndecodable are counted, and the count is still there after the store
// is closed and opened again; it adds up, and does not go down when the set
// is below the cap again.
func TestUndecodableDroppedAcrossRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := memremote.New()
	writer := openMem(t, func(o *Options) { o.NodeID = "writer" })
	mustPut(t, writer, key("g", "k1"), "k1")
	drain(t, writer, r)
	for _, s := range []string{"bad1", "bad2", "bad3"} {
		r.PutUndecodable(syncer.Key(key("g", s)), errors.New("version: a string (planted)"))
	}

	dir := t.TempDir()
	s := openDisk(t, dir)
	pull := func(limit int) syncer.PullStats {
		t.Helper()
		p := syncer.NewPuller(s, r, syncer.PullOptions{Governors: []string{"g"}, MaxUndecodable: limit})
		if _, err := p.PullOnce(ctx); err != nil {
			t.Fatal(err)
		}
		return p.Stats()
	}
	if st := pull(1); st.UndecodableStates != 1 || st.UndecodableDropped != 2 {
		t.Fatalf("stats past the cap %+v, want 1 state and 2 dropped", st)
	}
	closeStore(t, s)
	s = openDisk(t, dir)
	defer func() { closeStore(t, s) }()
	if n, err := s.DroppedUndecodable(ctx); err != nil || n != 2 {
		t.Fatalf("dropped after a restart: %d, %v; want 2", n, err)
	}
	if st := pull(0); st.UndecodableStates != 1 || st.UndecodableDropped != 2 {
		t.Fatalf("stats after a restart, below the cap %+v, want 1 state and 2 dropped", st)
	}
	if err := s.AddDroppedUndecodable(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if n, err := s.DroppedUndecodable(ctx); err != nil || n != 5 {
		t.Fatalf("dropped after adding 3: %d, %v; want 5", n, err)
	}
}

// TestUndecodableCodec: a kept document comes back as kept, its time to the
// nanosecond or zero, its error's message cut to maxUndecodableErr bytes.
func TestUndecodableCodec(t *testing.T) {
	k := key("g", "s")
	for _, d := range []*syncer.UndecodableError{
		{Key: syncer.Key(k), Doc: "root/governors/g/states/s", Time: time.Unix(1_900_000_000, 123), Err: errors.New("version: a string")},
		{Key: syncer.Key(k), Doc: "", Err: errors.New("")},
		{Key: syncer.Key(k), Doc: "d", Err: errors.New(strings.Repeat("x", 2*maxUndecodableErr))},
	} {
		got, err := decodeUndecodable(k, encodeUndecodable(d))
		if err != nil {
			t.Fatal(err)
		}
		msg := d.Err.Error()[:min(len(d.Err.Error()), maxUndecodableErr)]
		if got.Key != d.Key || got.Doc != d.Doc || !got.Time.Equal(d.Time) || got.Time.IsZero() != d.Time.IsZero() || got.Err.Error() != msg {
			t.Errorf("round trip of %+v = %+v", d, got)
		}
	}
	if _, err := decodeUndecodable(k, []byte{9}); !errors.Is(err, errCorrupt) {
		t.Errorf("an unknown format: %v, want errCorrupt", err)
	}
}
