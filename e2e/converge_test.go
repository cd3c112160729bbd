package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

// Many rounds of three sidecars writing the same few keys at once under
// every built-in resolver, each sidecar cut from Firestore and reconnected
// at random meanwhile. After each round every sidecar and Firestore hold
// the same record of every key, the conflict ledgers agree, and every value
// is the one its resolver defines.
//
// TAI_CONVERGE_ROUNDS sets the number of rounds (default 2) and
// TAI_CONVERGE_SEED the seed the rounds' writes and cuts derive from.

// convResolvers are the governor kinds of a round, by resolver.
var convResolvers = []struct{ prefix, spec string }{
	{"l", "lww"}, {"v", "version"}, {"c", "causal"}, {"m", "merge"},
}

const (
	convKeys    = 3  // states per governor
	convClients = 2  // clients per sidecar
	convOps     = 24 // writes per client per round
)

// convRound is what one round wrote.
type convRound struct {
	n    int
	seed uint64
	// fields: for each merge state, each writer's field and its last
	// acknowledged value (merge writers each own a field).
	mu     sync.Mutex
	fields map[string]map[string]int
}

func (r *convRound) gov(prefix string) string { return prefix + strconv.Itoa(r.n) }

func convEnvUint(t *testing.T, name string, def uint64) uint64 {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, s, err)
	}
	return n
}

func TestConvergeResolvers(t *testing.T) {
	rounds := int(convEnvUint(t, "TAI_CONVERGE_ROUNDS", 2))
	seed := convEnvUint(t, "TAI_CONVERGE_SEED", mrand.Uint64())
	t.Logf("seed %d, %d rounds (TAI_CONVERGE_SEED=%d replays the writes and cuts)", seed, rounds, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with TAI_CONVERGE_SEED=%d", seed)
		}
	})

	fs := newShared(t)
	var govs, specs []string
	for n := range rounds {
		for _, r := range convResolvers {
			g := r.prefix + strconv.Itoa(n)
			govs = append(govs, g)
			specs = append(specs, g+"="+r.spec)
		}
	}
	names := []string{"node-a", "node-b", "node-c"}
	var cars []*sidecar
	var proxies []*proxy
	for _, name := range names {
		px := newProxy(t, os.Getenv("FIRESTORE_EMULATOR_HOST"))
		args := append(fs.args(name, govs...), "--resolvers", strings.Join(specs, ","))
		cars = append(cars, startSidecarEnv(t, []string{"FIRESTORE_EMULATOR_HOST=" + px.Addr()}, args...))
		proxies = append(proxies, px)
	}
	for n := range rounds {
		r := &convRound{n: n, seed: seed + uint64(n), fields: make(map[string]map[string]int)}
		runConvRound(t, fs, cars, proxies, r)
		if t.Failed() {
			t.Fatalf("round %d (seed %d) failed", n, seed)
		}
	}
	checkConvClocks(t, fs, cars, names, govs)
}

// runConvRound writes at random from every client while cutting sidecars
// from Firestore at random, then checks convergence and the ledgers.
func runConvRound(t *testing.T, fs *shared, cars []*sidecar, proxies []*proxy, r *convRound) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	var chaos sync.WaitGroup
	chaos.Add(1)
	go func() {
		defer chaos.Done()
		rng := mrand.New(mrand.NewPCG(r.seed, 99))
		// Most rounds stall links (connections stay open); every third
		// (the second first) cuts them, which also leaves Firestore
		// transactions open until they expire (about 30 s on the emulator).
		cuts := r.n%3 == 1
		off, on := (*proxy).Pause, (*proxy).Resume
		if cuts {
			off, on = (*proxy).Cut, (*proxy).Restore
		}
		cut := make([]bool, len(proxies))
		defer func() {
			for i, px := range proxies {
				if cut[i] {
					on(px)
				}
			}
		}()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(50+rng.IntN(250)) * time.Millisecond):
			}
			i := rng.IntN(len(proxies))
			if cut[i] {
				on(proxies[i])
			} else {
				off(proxies[i])
			}
			cut[i] = !cut[i]
		}
	}()
	var writers sync.WaitGroup
	for i, car := range cars {
		for w := range convClients {
			c := car.Client()
			writer := fmt.Sprintf("n%dc%d", i, w)
			writers.Add(1)
			go func() {
				defer writers.Done()
				rng := mrand.New(mrand.NewPCG(r.seed, uint64(10*i+w)))
				for j := range convOps {
					time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
					kind := convResolvers[rng.IntN(len(convResolvers))].prefix
					gov, state := r.gov(kind), "k"+strconv.Itoa(rng.IntN(convKeys))
					var err error
					switch {
					case kind == "m":
						err = r.mergeWrite(ctx, c, gov, state, writer, j, rng.IntN(4) == 0)
					case rng.IntN(8) == 0:
						_, err = c.Delete(ctx, gov, state)
						if errors.Is(err, client.ErrNotFound) {
							err = nil
						}
					default:
						_, err = c.Put(ctx, gov, state, fmt.Sprintf("%s-%d", writer, j))
					}
					if err != nil {
						t.Errorf("round %d: %s: %s/%s: %v", r.n, writer, gov, state, err)
						return
					}
				}
			}()
		}
	}
	writers.Wait()
	close(stop)
	chaos.Wait()
	start := time.Now()
	checkConverged(t, fs, cars, r)
	settled := time.Since(start)
	n := checkLedgers(t, fs, cars, r)
	t.Logf("round %d: converged %v after the writes, %d conflicts", r.n, settled.Round(time.Millisecond), n)
}

// mergeWrite sets writer's own field of a merge state to j (and, when
// shared, the field every writer sets), with a compare-and-set on the
// version read so that no write of this sidecar is overwritten unseen.
func (r *convRound) mergeWrite(ctx context.Context, c *client.Client, gov, state, writer string, j int, shared bool) error {
	for {
		doc := map[string]any{}
		opt := client.IfAbsent()
		rec, err := c.Get(ctx, gov, state)
		switch {
		case err == nil:
			if err := rec.Decode(&doc); err != nil {
				return err
			}
			opt = client.IfVersion(rec.Version)
		case !errors.Is(err, client.ErrNotFound):
			return err
		}
		doc[writer] = j
		if shared {
			doc["shared"] = fmt.Sprintf("%s-%d", writer, j)
		}
		_, err = c.Put(ctx, gov, state, doc, opt)
		if errors.Is(err, client.ErrVersionConflict) {
			continue // another client of this sidecar (or a pull) came first
		}
		if err != nil {
			return err
		}
		r.mu.Lock()
		k := gov + "/" + state
		if r.fields[k] == nil {
			r.fields[k] = make(map[string]int)
		}
		r.fields[k][writer] = j
		r.mu.Unlock()
		return nil
	}
}

// checkConverged waits until every sidecar's journal is empty and every
// sidecar holds Firestore's record of every key of the round (the same
// bytes, version and tombstone, nothing pending).
func checkConverged(t *testing.T, fs *shared, cars []*sidecar, r *convRound) {
	t.Helper()
	ctx := context.Background()
	var clients []*client.Client
	for _, car := range cars {
		clients = append(clients, car.Client())
	}
	next := time.Now().Add(5 * time.Second)
	eventually(t, 90*time.Second, func() string {
		msg := convergedMsg(ctx, fs, clients, r)
		if msg != "" && time.Now().After(next) {
			t.Logf("still waiting: %s", msg) // what a slow round waits for
			next = time.Now().Add(5 * time.Second)
		}
		return msg
	})
}

// convergedMsg is checkConverged's check: "" when converged, else what
// differs.
func convergedMsg(ctx context.Context, fs *shared, clients []*client.Client, r *convRound) string {
	for i, c := range clients {
		if d, err := journalDepth(c); err != nil || d != 0 {
			return fmt.Sprintf("round %d (seed %d): sidecar %d journal depth %d, %v", r.n, r.seed, i, d, err)
		}
	}
	for _, kind := range convResolvers {
		gov := r.gov(kind.prefix)
		for k := range convKeys {
			state := "k" + strconv.Itoa(k)
			fr, err := fs.get(gov, state)
			if errors.Is(err, syncer.ErrNotFound) {
				fr = syncer.Record{Deleted: true}
			} else if err != nil {
				return fmt.Sprintf("firestore %s/%s: %v", gov, state, err)
			}
			for i, c := range clients {
				rec, err := c.Get(ctx, gov, state)
				switch {
				case fr.Deleted && !errors.Is(err, client.ErrNotFound):
					return fmt.Sprintf("round %d (seed %d): sidecar %d holds %s/%s (%v), Firestore v%d deleted it", r.n, r.seed, i, gov, state, err, fr.Version)
				case fr.Deleted:
				case err != nil:
					return fmt.Sprintf("round %d: sidecar %d: %s/%s: %v", r.n, i, gov, state, err)
				case !bytes.Equal(rec.Value, fr.Value) || rec.Version != fr.Version || rec.Pending:
					return fmt.Sprintf("round %d (seed %d): sidecar %d holds %s/%s v%d %x by %s pending=%v, Firestore v%d %x by %s",
						r.n, r.seed, i, gov, state, rec.Version, rec.Value, rec.Origin, rec.Pending, fr.Version, fr.Value, fr.Origin)
				}
			}
		}
	}
	return ""
}

// checkLedgers checks that the sidecars' ledgers together are Firestore's
// (each entry once, on the node that decided it), that every decision
// follows its resolver's rule, and that every final value is explained:
// under lww none is older than a decision's winner, under merge every
// writer's last field write is in the final document.
// It returns how many conflicts the round had.
func checkLedgers(t *testing.T, fs *shared, cars []*sidecar, r *convRound) int {
	t.Helper()
	ctx := context.Background()
	var clients []*client.Client
	for _, car := range cars {
		clients = append(clients, car.Client())
	}
	total := 0
	for _, kind := range convResolvers {
		gov := r.gov(kind.prefix)
		recs, err := fs.remote.Conflicts(ctx, syncer.ConflictQuery{Governor: gov, Limit: 10000})
		if err != nil {
			t.Fatalf("Firestore's ledger of %s: %v", gov, err)
		}
		total += len(recs)
		shared := make(map[string]syncer.ConflictRecord, len(recs))
		for _, rec := range recs {
			shared[rec.ID] = rec
		}
		local := make(map[string]string) // id -> node that has it
		for _, c := range clients {
			st, err := c.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for e, err := range c.ConflictsAll(ctx, gov, client.ConflictsOptions{}) {
				if err != nil {
					t.Fatalf("%s's ledger of %s: %v", st.NodeID, gov, err)
				}
				if e.Node != st.Origin {
					t.Errorf("round %d (seed %d): %s's ledger holds %s decided by %s", r.n, r.seed, st.NodeID, e.ID, e.Node)
				}
				if other, dup := local[e.ID]; dup {
					t.Errorf("round %d (seed %d): conflict %s in the ledgers of %s and %s", r.n, r.seed, e.ID, other, st.NodeID)
				}
				local[e.ID] = st.NodeID
				if e.Resolver == syncer.ResolverDiverged {
					// A parked local change the shared store's record
					// replaced: this node's alone, never in Firestore.
					if e.Winner != "remote" {
						t.Errorf("round %d (seed %d): %s's diverged decision %s: winner %s", r.n, r.seed, st.NodeID, e.ID, e.Winner)
					}
					continue
				}
				if _, ok := shared[e.ID]; !ok {
					t.Errorf("round %d (seed %d): %s's conflict %s of %s/%s is not in Firestore's ledger", r.n, r.seed, st.NodeID, e.ID, gov, e.State)
				}
			}
		}
		for id, rec := range shared {
			if _, ok := local[id]; !ok {
				t.Errorf("round %d (seed %d): Firestore's conflict %s of %s (by %s, %s) is in no sidecar's ledger", r.n, r.seed, id, rec.Key, rec.Node, rec.Resolver)
			}
			if why := ruleBroken(kind.spec, rec); why != "" {
				t.Errorf("round %d (seed %d): conflict %s of %s decided by %s (%s, winner %s): %s", r.n, r.seed, id, rec.Key, rec.Node, rec.Resolver, rec.Winner, why)
			}
		}
		for k := range convKeys {
			state := "k" + strconv.Itoa(k)
			final, err := fs.get(gov, state)
			if err != nil && !errors.Is(err, syncer.ErrNotFound) {
				t.Fatal(err)
			}
			var mine []syncer.ConflictRecord
			for _, rec := range recs {
				if rec.Key.State == state {
					mine = append(mine, rec)
				}
			}
			switch kind.spec {
			case "lww":
				checkLWWFinal(t, r, final, mine)
			case "merge":
				checkMergeFinal(t, r, gov, state, final, mine)
			}
		}
	}
	return total
}

// ruleBroken says how rec's decision breaks the rule of resolver spec ("":
// it follows it).
func ruleBroken(spec string, rec syncer.ConflictRecord) string {
	l, rm := rec.Local, rec.Remote
	switch {
	case rec.Resolver == "lww" || strings.HasSuffix(rec.Resolver, ">lww") && rec.Winner != conflict.Merged:
		if want := lwwWinner(l, rm); rec.Winner != want {
			return fmt.Sprintf("last write wins picks %s (local HLC %d by %s, remote HLC %d by %s)", want, l.Clock.HLC, l.Origin, rm.Clock.HLC, rm.Origin)
		}
	}
	switch spec {
	case "lww":
		if rec.Resolver != "lww" {
			return "want resolver lww"
		}
	case "version":
		switch {
		case l.Version > rm.Version && (rec.Resolver != "version" || rec.Winner != conflict.Local),
			l.Version < rm.Version && (rec.Resolver != "version" || rec.Winner != conflict.Remote),
			l.Version == rm.Version && rec.Resolver != "version>lww":
			return fmt.Sprintf("local v%d, remote v%d", l.Version, rm.Version)
		}
	case "causal":
		cmp := l.Clock.Vector.Compare(rm.Clock.Vector)
		switch {
		case cmp == conflict.After && (rec.Resolver != "causal" || rec.Winner != conflict.Local),
			cmp == conflict.Before && (rec.Resolver != "causal" || rec.Winner != conflict.Remote),
			cmp != conflict.After && cmp != conflict.Before && rec.Resolver != "causal>lww":
			return fmt.Sprintf("local vector %s, remote %s", l.Clock.Vector, rm.Clock.Vector)
		}
	case "merge":
		if !strings.HasPrefix(rec.Resolver, "merge") {
			return "want resolver merge"
		}
	}
	return ""
}

// lwwWinner is last write wins between two sides: the later HLC, then the
// greater origin.
func lwwWinner(l, r conflict.Side) conflict.Winner {
	if l.Clock.HLC > r.Clock.HLC || l.Clock.HLC == r.Clock.HLC && l.Origin > r.Origin {
		return conflict.Local
	}
	return conflict.Remote
}

// checkLWWFinal: the final record of a lww state lost no decision and is
// not older (by HLC, then node id) than any decision's winner.
func checkLWWFinal(t *testing.T, r *convRound, final syncer.Record, decisions []syncer.ConflictRecord) {
	t.Helper()
	for _, d := range decisions {
		win, lose := d.Remote, d.Local
		if d.Winner == conflict.Local {
			win, lose = d.Local, d.Remote
		}
		if final.OpID == lose.OpID {
			t.Errorf("round %d (seed %d): %s: the final record is op %s, which lost conflict %s", r.n, r.seed, d.Key, final.OpID, d.ID)
		}
		if lwwWinner(conflict.Side{Clock: conflict.Clock{HLC: final.Clock.HLC}, Origin: final.Origin}, win) == conflict.Remote &&
			final.OpID != win.OpID {
			t.Errorf("round %d (seed %d): %s: the final record (op %s by %s, HLC %d) is older than %s's winner (op %s by %s, HLC %d)",
				r.n, r.seed, d.Key, final.OpID, final.Origin, final.Clock.HLC, d.ID, win.OpID, win.Origin, win.Clock.HLC)
		}
	}
}

// checkMergeFinal: every writer's own field holds its last acknowledged
// value in the final document of a merge state. Every change here is made
// on a version whose event is in the local or the shared event log, so a
// decision that fell back for want of a base is a failure too (the field
// it dropped is reported with the state's decisions).
func checkMergeFinal(t *testing.T, r *convRound, gov, state string, final syncer.Record, decisions []syncer.ConflictRecord) {
	t.Helper()
	r.mu.Lock()
	want := maps.Clone(r.fields[gov+"/"+state])
	r.mu.Unlock()
	if len(want) == 0 {
		return
	}
	var doc map[string]any
	if err := wire.Unmarshal(final.Value, &doc); err != nil {
		t.Errorf("round %d: %s/%s: final value %x: %v", r.n, gov, state, final.Value, err)
		return
	}
	for _, writer := range slices.Sorted(maps.Keys(want)) {
		got := fmt.Sprint(doc[writer])
		if got == strconv.Itoa(want[writer]) {
			continue
		}
		var why []string
		for _, d := range decisions {
			why = append(why, fmt.Sprintf("%s %s winner %s (%s)", d.ID, d.Resolver, d.Winner, d.Reason))
		}
		t.Errorf("round %d (seed %d): %s/%s: field %s is %s, its last write was %d; final v%d by %s (op %s) %v; decisions: %s",
			r.n, r.seed, gov, state, writer, got, want[writer], final.Version, final.Origin, final.OpID, doc, strings.Join(why, "; "))
	}
}

// checkConvClocks stops the sidecars and checks that each one's store
// holds Firestore's vector clock (and HLC) for every live state.
func checkConvClocks(t *testing.T, fs *shared, cars []*sidecar, names, govs []string) {
	t.Helper()
	ctx := context.Background()
	for i, car := range cars {
		if err := car.Signal(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Fatalf("sidecar %s exited with %v", names[i], err)
		}
		s, err := localcache.Open(localcache.Options{Dir: filepath.Join(car.DataDir, "badger"), NodeID: names[i]})
		if err != nil {
			t.Fatal(err)
		}
		for _, gov := range govs {
			for k := range convKeys {
				state := "k" + strconv.Itoa(k)
				fr, err := fs.get(gov, state)
				if errors.Is(err, syncer.ErrNotFound) {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				recs, err := s.GetMany(ctx, []localcache.Key{{Governor: gov, State: state}})
				if err != nil {
					t.Fatal(err)
				}
				l := recs[0]
				switch {
				case fr.Deleted && l != nil:
					t.Errorf("%s holds %s/%s v%d, Firestore deleted it at v%d", names[i], gov, state, l.Version, fr.Version)
				case fr.Deleted:
				case l == nil:
					t.Errorf("%s holds no %s/%s, Firestore v%d", names[i], gov, state, fr.Version)
				case l.Version != fr.Version || !maps.Equal(l.Clock.Vector, fr.Clock.Vector) || l.Clock.HLC != fr.Clock.HLC:
					t.Errorf("%s holds %s/%s v%d with clock %+v, Firestore v%d %+v", names[i], gov, state, l.Version, l.Clock, fr.Version, fr.Clock)
				}
			}
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
