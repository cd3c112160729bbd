package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// Linearizability of strong reads and strong writes across sidecars: several
// clients of three real sidecars on one Firestore root read, compare-and-set,
// put and delete a few contended states, every operation is recorded with its
// call and return time, and porcupine checks the history against a
// sequential versioned register, state by state.
//
// An operation whose outcome is unknown (a strong write that timed out, a
// broken connection) may have taken effect or not: it is recorded with its
// return time at infinity and an output the model accepts whatever the state,
// so the checker may place it anywhere after its call, including after every
// other operation (which stands for "never happened").
//
// The operation mix comes from a seed, logged; TAI_LIN_SEED=N replays the
// mix of a run (the interleaving is the machine's).

// regState is the model of one state: a versioned register. version is the
// last version written, a delete's tombstone included: a state put again
// after a delete continues from it.
type regState struct {
	live    bool // exists and is not deleted
	value   string
	version uint64
}

// actual is the version preconditions are checked against (if_version,
// if_absent) and VersionConflict reports: 0 when the state does not exist
// or is deleted.
func (s regState) actual() uint64 {
	if s.live {
		return s.version
	}
	return 0
}

type regKind uint8

const (
	regGet    regKind = iota // strong get
	regPut                   // strong put
	regDelete                // strong delete
)

// regInput is one operation on one state.
type regInput struct {
	kind      regKind
	key       string
	value     string // put: unique to the operation
	cond      bool   // if_version is set
	ifVersion uint64
}

type regOutcome uint8

const (
	outOK       regOutcome = iota
	outConflict            // VersionConflict: actual, expected
	outNotFound            // NotFound
	outNoEffect            // failed for certain without effect: a failed read, a strong write refused before writing
	outUnknown             // may or may not have taken effect; recorded with Return at infinity
)

// regOutput is what an operation returned.
type regOutput struct {
	outcome  regOutcome
	value    string // get: the value read
	version  uint64 // outOK: the record's version; outConflict: the reported actual version
	expected uint64 // outConflict: the reported expected version
}

// regStep is the sequential specification of a state under strong reads and
// strong writes (docs/protocol.md, Consistency, put and delete).
func regStep(state, input, output any) (bool, any) {
	s, in, out := state.(regState), input.(regInput), output.(regOutput)
	switch {
	case out.outcome == outNoEffect:
		return true, s
	case in.kind == regGet:
		switch out.outcome {
		case outOK:
			return s.live && s.value == out.value && s.version == out.version, s
		case outNotFound:
			return !s.live, s
		}
		return false, s
	case out.outcome == outConflict:
		return out.version == s.actual() && mayConflict(s, in, out), s
	}
	unknown := out.outcome == outUnknown
	switch {
	case in.cond && in.ifVersion != s.actual():
		return unknown, s // checked first: a failed precondition is a conflict
	case in.kind == regDelete && !s.live:
		return unknown || out.outcome == outNotFound, s
	}
	next := regState{live: in.kind == regPut, value: in.value, version: s.version + 1}
	return unknown || out.outcome == outOK && out.version == next.version, next
}

// mayConflict reports whether a strong write may fail with VersionConflict
// in state s: its precondition fails, or the state changed since the
// sidecar read it (a strong write is a compare-and-set on the version the
// sidecar read, and loses to any change made since). That version is
// out.expected for a write without precondition, if_version for a write
// with one; a write with if_version 0 read the state absent, at a version
// the reply does not tell, so any tombstone may be newer than what it read.
func mayConflict(s regState, in regInput, out regOutput) bool {
	if !in.cond {
		return s.version != out.expected
	}
	return in.ifVersion != s.actual() || in.ifVersion == 0 && !s.live && s.version > 0
}

// regModel checks each state on its own.
var regModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := make(map[string][]porcupine.Operation)
		var keys []string
		for _, op := range history {
			k := op.Input.(regInput).key
			if byKey[k] == nil {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		parts := make([][]porcupine.Operation, len(keys))
		for i, k := range keys {
			parts[i] = byKey[k]
		}
		return parts
	},
	Init: func() any { return regState{} },
	Step: regStep,
	DescribeOperation: func(input, output any) string {
		return describeOp(input.(regInput), output.(regOutput))
	},
	DescribeState: func(state any) string {
		s := state.(regState)
		if !s.live {
			return fmt.Sprintf("absent (v%d)", s.version)
		}
		return fmt.Sprintf("%q v%d", s.value, s.version)
	},
	DescribeOperationMetadata: func(info any) string {
		if info == nil {
			return ""
		}
		return info.(string)
	},
}

func describeOp(in regInput, out regOutput) string {
	var b strings.Builder
	switch in.kind {
	case regGet:
		fmt.Fprintf(&b, "get(%s)", in.key)
	case regPut:
		fmt.Fprintf(&b, "put(%s, %q", in.key, in.value)
	case regDelete:
		fmt.Fprintf(&b, "delete(%s", in.key)
	}
	if in.kind != regGet {
		if in.cond {
			fmt.Fprintf(&b, ", if_version %d", in.ifVersion)
		}
		b.WriteString(")")
	}
	switch out.outcome {
	case outOK:
		if in.kind == regGet {
			fmt.Fprintf(&b, " -> %q v%d", out.value, out.version)
		} else {
			fmt.Fprintf(&b, " -> v%d", out.version)
		}
	case outConflict:
		fmt.Fprintf(&b, " -> VersionConflict(expected %d, actual %d)", out.expected, out.version)
	case outNotFound:
		b.WriteString(" -> NotFound")
	case outNoEffect:
		b.WriteString(" -> failed, no effect")
	case outUnknown:
		b.WriteString(" -> unknown")
	}
	return b.String()
}

// linHistory records operations; each client's operations form a stream
// (porcupine's ClientId), and a client starts a new stream after an
// operation whose return is unknown, since that one never ends.
type linHistory struct {
	start   time.Time
	streams atomic.Int64
	mu      sync.Mutex
	ops     []porcupine.Operation
}

func (h *linHistory) now() int64 { return int64(time.Since(h.start)) }

func (h *linHistory) newStream() int { return int(h.streams.Add(1) - 1) }

func (h *linHistory) add(op porcupine.Operation) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// Workload shape: 3 sidecars x 3 clients x linOpsPerClient operations on
// linKeys. Small enough that porcupine answers in well under a second.
const (
	linGov           = "lin"
	linClientsPerCar = 3
	linOpsPerClient  = 30
	linWriteTimeout  = 15 * time.Second // the strong writes' timeout_ms
	linOpTimeout     = 25 * time.Second // the client's own bound on any call
	linCheckTimeout  = 30 * time.Second
)

var linKeys = []string{"k0", "k1"}

// linClient runs one client's operations and records them.
type linClient struct {
	t     *testing.T
	c     *client.Client
	name  string // node/client, the operations' metadata
	rng   *mrand.Rand
	h     *linHistory
	known map[string]uint64 // the version this client last saw of each key (0: absent)
}

func (lc *linClient) run(ctx context.Context, n int) {
	stream := lc.h.newStream()
	for i := range n {
		if lc.rng.IntN(100) < 10 {
			lc.readAll(ctx, stream)
			continue
		}
		in := regInput{key: linKeys[lc.rng.IntN(len(linKeys))]}
		switch p := lc.rng.IntN(100); {
		case p < 40:
			in.kind = regGet
		case p < 75: // compare-and-set on what this client last saw
			in.kind, in.cond, in.ifVersion = regPut, true, lc.known[in.key]
		case p < 88:
			in.kind = regPut
		default:
			in.kind, in.cond, in.ifVersion = regDelete, p%2 == 0, lc.known[in.key]
		}
		if in.kind == regPut {
			in.value = lc.name + "#" + strconv.Itoa(i)
		}
		stream = lc.do(ctx, stream, in)
	}
}

// do runs in, records it on stream and returns the stream to go on with.
func (lc *linClient) do(ctx context.Context, stream int, in regInput) int {
	call := lc.h.now()
	out := lc.call(ctx, in)
	return lc.record(stream, in, out, call, lc.h.now())
}

// readAll reads every key with one strong batch_get and records a get of
// each, over the batch's interval (the model checks each key on its own).
func (lc *linClient) readAll(ctx context.Context, stream int) {
	keys := make([]wire.Key, len(linKeys))
	for i, k := range linKeys {
		keys[i] = wire.Key{Governor: linGov, State: k}
	}
	cctx, cancel := context.WithTimeout(ctx, linOpTimeout)
	call := lc.h.now()
	recs, err := lc.c.BatchGet(cctx, keys, client.Strong())
	ret := lc.h.now()
	cancel()
	for i, k := range linKeys {
		in := regInput{kind: regGet, key: k}
		var out regOutput
		switch {
		case err != nil:
			out = lc.failed(in, err)
		case recs[i] == nil:
			out = regOutput{outcome: outNotFound}
		default:
			out = lc.readOutput(in, recs[i])
		}
		lc.record(stream, in, out, call, ret)
	}
}

// record records in with its output and interval on stream (a read never
// has an unknown outcome, so readAll's gets share one stream) and returns
// the stream to go on with.
func (lc *linClient) record(stream int, in regInput, out regOutput, call, ret int64) int {
	if out.outcome == outUnknown {
		ret = math.MaxInt64
	}
	lc.h.add(porcupine.Operation{ClientId: stream, Input: in, Call: call, Output: out, Return: ret, Metadata: lc.name})
	switch out.outcome {
	case outOK:
		lc.known[in.key] = out.version
		if in.kind == regDelete {
			lc.known[in.key] = 0
		}
	case outNotFound:
		lc.known[in.key] = 0
	case outConflict:
		lc.known[in.key] = out.version
	case outUnknown:
		return lc.h.newStream()
	}
	return stream
}

func (lc *linClient) call(ctx context.Context, in regInput) regOutput {
	ctx, cancel := context.WithTimeout(ctx, linOpTimeout)
	defer cancel()
	opts := []client.WriteOption{client.StrongWrite(linWriteTimeout)}
	if in.cond {
		opts = append(opts, client.IfVersion(in.ifVersion))
	}
	var (
		rec *client.Record
		err error
	)
	switch in.kind {
	case regGet:
		rec, err = lc.c.Get(ctx, linGov, in.key, client.Strong())
	case regPut:
		rec, err = lc.c.Put(ctx, linGov, in.key, in.value, opts...)
	case regDelete:
		rec, err = lc.c.Delete(ctx, linGov, in.key, opts...)
	}
	if err != nil {
		return lc.failed(in, err)
	}
	out := lc.readOutput(in, rec)
	if in.kind != regGet && rec.Deleted != (in.kind == regDelete) {
		lc.t.Errorf("%s: %s: reply record deleted=%v", lc.name, describeOp(in, out), rec.Deleted)
	}
	return out
}

// readOutput is the output of in that returned rec: its version, and for a
// get its value.
func (lc *linClient) readOutput(in regInput, rec *client.Record) regOutput {
	out := regOutput{outcome: outOK, version: rec.Version}
	if in.kind == regGet {
		if err := rec.Decode(&out.value); err != nil {
			lc.t.Errorf("%s: %s: %v", lc.name, describeOp(in, out), err)
		}
	}
	return out
}

// failed classifies the error of in: definite outcomes the model must
// explain, failures without effect, and unknown outcomes.
func (lc *linClient) failed(in regInput, err error) regOutput {
	var (
		ce *client.ConnError
		e  *wire.Error
	)
	indefinite := regOutput{outcome: outUnknown}
	if in.kind == regGet {
		indefinite = regOutput{outcome: outNoEffect} // a read changes nothing
	}
	switch {
	case errors.As(err, &ce), !errors.As(err, &e):
		return indefinite // the connection broke, or the client's own deadline
	case e.Code == wire.CodeVersionConflict && in.kind != regGet:
		if e.Actual == nil || e.Expected == nil {
			lc.t.Errorf("%s: %v: VersionConflict without expected and actual", lc.name, err)
			return indefinite
		}
		return regOutput{outcome: outConflict, version: *e.Actual, expected: *e.Expected}
	case e.Code == wire.CodeNotFound && in.kind != regPut:
		return regOutput{outcome: outNotFound}
	case e.Code == wire.CodeUnavailable && e.Retryable:
		// A strong read or write that could not ask the shared store:
		// nothing was written.
		return regOutput{outcome: outNoEffect}
	case e.Code == wire.CodeUnavailable, e.Code == wire.CodeTimeout:
		return indefinite
	}
	lc.t.Errorf("%s: %s: unexpected error %v", lc.name, describeOp(in, regOutput{outcome: outUnknown}), err)
	return indefinite
}

// linSeed is TAI_LIN_SEED, or a fresh seed.
func linSeed(t *testing.T) uint64 {
	if s := os.Getenv("TAI_LIN_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TAI_LIN_SEED=%q: %v", s, err)
		}
		return seed
	}
	return mrand.Uint64()
}

// TestStrongLinearizable: strong gets, strong batch_gets of both states,
// compare-and-set puts, unconditional puts and deletes from nine clients of
// three sidecars (two watch the governor live, one does not) on two states
// form a linearizable history.
func TestStrongLinearizable(t *testing.T) {
	fs := newShared(t)
	cars := []*sidecar{
		startSidecar(t, fs.args("node-a", linGov)...),
		startSidecar(t, fs.args("node-b", linGov)...),
		startSidecar(t, fs.args("node-c")...),
	}
	seed := linSeed(t)
	t.Logf("seed %d (TAI_LIN_SEED=%d replays the operation mix)", seed, seed)

	h := &linHistory{start: time.Now()}
	var clients []*linClient
	for i, car := range cars {
		for j := range linClientsPerCar {
			clients = append(clients, &linClient{
				t:     t,
				c:     car.Client(), // a client of its own: its own connections
				name:  fmt.Sprintf("node-%c/c%d", 'a'+i, j),
				rng:   mrand.New(mrand.NewPCG(seed, uint64(len(clients)))),
				h:     h,
				known: make(map[string]uint64),
			})
		}
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for _, lc := range clients {
		wg.Go(func() { lc.run(ctx, linOpsPerClient) })
	}
	wg.Wait()
	// Then every sidecar reads every state: they must agree with the rest.
	for i := range cars {
		lc := clients[i*linClientsPerCar]
		stream := h.newStream()
		for _, k := range linKeys {
			stream = lc.do(ctx, stream, regInput{kind: regGet, key: k})
		}
	}
	t.Logf("%d operations in %v: %s", len(h.ops), time.Since(h.start).Round(time.Millisecond), summarize(h.ops))
	requireContention(t, h.ops)

	for _, k := range linKeys {
		ops := opsOf(h.ops, k)
		start := time.Now()
		res, info := porcupine.CheckOperationsVerbose(regModel, ops, linCheckTimeout)
		t.Logf("%s: %d operations, %s in %v", k, len(ops), res, time.Since(start).Round(time.Millisecond))
		if res != porcupine.Ok {
			dir := saveHistory(t, k, ops, info)
			t.Errorf("%s: the history is %s (Unknown: not decided within %v, far more than such a history needs); seed %d; visualisation and history in %s",
				k, res, linCheckTimeout, seed, dir)
			for _, op := range firstIllegal(ops) {
				t.Errorf("%s: the first operation the model cannot explain with what returned before it: %s", k, describeTimed(op))
			}
		}
	}
}

// opsOf returns the operations on key.
func opsOf(ops []porcupine.Operation, key string) []porcupine.Operation {
	var out []porcupine.Operation
	for _, op := range ops {
		if op.Input.(regInput).key == key {
			out = append(out, op)
		}
	}
	return out
}

// summarize counts outcomes per kind of operation.
func summarize(ops []porcupine.Operation) string {
	names := [...]string{"get", "put", "delete"}
	outs := [...]string{"ok", "conflict", "notfound", "noeffect", "unknown"}
	var n [3][5]int
	for _, op := range ops {
		n[op.Input.(regInput).kind][op.Output.(regOutput).outcome]++
	}
	var parts []string
	for k, name := range names {
		var s []string
		for o, out := range outs {
			if n[k][o] > 0 {
				s = append(s, fmt.Sprintf("%s %d", out, n[k][o]))
			}
		}
		parts = append(parts, name+": "+strings.Join(s, ", "))
	}
	return strings.Join(parts, "; ")
}

// requireContention fails the test when the history is too thin to say
// anything: the clients must have read values, written, and run into each
// other.
func requireContention(t *testing.T, ops []porcupine.Operation) {
	t.Helper()
	var reads, writes, conflicts, unknown int
	for _, op := range ops {
		in, out := op.Input.(regInput), op.Output.(regOutput)
		switch {
		case out.outcome == outUnknown:
			unknown++
		case in.kind == regGet && out.outcome == outOK:
			reads++
		case in.kind != regGet && out.outcome == outOK:
			writes++
		case out.outcome == outConflict:
			conflicts++
		}
	}
	if reads < 20 || writes < 20 || conflicts < 5 || unknown > len(ops)/10 {
		t.Fatalf("a thin history: %d values read, %d writes, %d conflicts, %d unknown outcomes of %d operations",
			reads, writes, conflicts, unknown, len(ops))
	}
}

// firstIllegal returns the operations that end the shortest illegal prefix
// of ops: those returning at the earliest time T such that the operations
// called by T are not linearizable, when those still running at T count as
// unknown. They are where to start reading an illegal history.
func firstIllegal(ops []porcupine.Operation) []porcupine.Operation {
	var returns []int64
	for _, op := range ops {
		if op.Return != math.MaxInt64 {
			returns = append(returns, op.Return)
		}
	}
	slices.Sort(returns)
	illegal := func(T int64) bool {
		var prefix []porcupine.Operation
		for _, op := range ops {
			if op.Call > T {
				continue
			}
			if op.Return > T {
				out := regOutput{outcome: outUnknown}
				if op.Input.(regInput).kind == regGet {
					out.outcome = outNoEffect
				}
				op.Output, op.Return = out, math.MaxInt64
			}
			prefix = append(prefix, op)
		}
		return porcupine.CheckOperationsTimeout(regModel, prefix, linCheckTimeout) == porcupine.Illegal
	}
	i, _ := slices.BinarySearchFunc(returns, true, func(T int64, _ bool) int {
		if illegal(T) {
			return 1
		}
		return -1
	})
	var out []porcupine.Operation
	for _, op := range ops {
		if i < len(returns) && op.Return == returns[i] {
			out = append(out, op)
		}
	}
	return out
}

// describeTimed describes op with its interval in milliseconds since the
// start of the run, and who ran it.
func describeTimed(op porcupine.Operation) string {
	ms := func(ns int64) string {
		if ns == math.MaxInt64 {
			return "     inf"
		}
		return fmt.Sprintf("%8.2f", float64(ns)/1e6)
	}
	return fmt.Sprintf("[%s, %s] ms  %-12s %s", ms(op.Call), ms(op.Return), op.Metadata, describeOp(op.Input.(regInput), op.Output.(regOutput)))
}

// saveHistory writes porcupine's visualisation of the history of key and
// the history as text (by call time) to a directory that outlives the test,
// and returns it.
func saveHistory(t *testing.T, key string, ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tai-linearizability-")
	if err != nil {
		t.Fatal(err)
	}
	if err := porcupine.VisualizePath(regModel, info, filepath.Join(dir, key+".html")); err != nil {
		t.Errorf("visualise: %v", err)
	}
	sorted := slices.SortedFunc(slices.Values(ops), func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	var b strings.Builder
	for _, op := range sorted {
		b.WriteString(describeTimed(op) + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, key+".txt"), []byte(b.String()), 0o644); err != nil {
		t.Errorf("write history: %v", err)
	}
	return dir
}

// TestRegModel: the model is not vacuous. A legal concurrent history
// (with lost writes, an unknown outcome and a put after a delete) is Ok;
// stale reads, failed writes that show up, impossible conflicts, versions
// restarting after a delete and an unknown write that un-happens are
// Illegal.
func TestRegModel(t *testing.T) {
	const inf = math.MaxInt64
	op := func(client int, call, ret int64, in regInput, out regOutput) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
	}
	get := regInput{kind: regGet, key: "k"}
	put := func(v string) regInput { return regInput{kind: regPut, key: "k", value: v} }
	cas := func(v string, ifv uint64) regInput {
		return regInput{kind: regPut, key: "k", value: v, cond: true, ifVersion: ifv}
	}
	del := func(cond bool, ifv uint64) regInput {
		return regInput{kind: regDelete, key: "k", cond: cond, ifVersion: ifv}
	}
	ok := func(version uint64) regOutput { return regOutput{outcome: outOK, version: version} }
	read := func(v string, version uint64) regOutput { return regOutput{outcome: outOK, value: v, version: version} }
	conflict := func(expected, actual uint64) regOutput {
		return regOutput{outcome: outConflict, expected: expected, version: actual}
	}
	notFound := regOutput{outcome: outNotFound}
	unknown := regOutput{outcome: outUnknown}
	noEffect := regOutput{outcome: outNoEffect}

	// Written v1 "x", then a completed CAS to v2 "y".
	base := []porcupine.Operation{
		op(0, 0, 10, put("x"), ok(1)),
		op(1, 11, 20, cas("y", 1), ok(2)),
	}
	cases := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"legal concurrent history", []porcupine.Operation{
			op(0, 0, 10, put("x"), ok(1)),
			op(1, 5, 15, get, notFound), // concurrent with the put: before it
			op(2, 6, 14, get, read("x", 1)),
			op(1, 16, 30, cas("y", 1), ok(2)),
			op(2, 17, 29, cas("z", 1), conflict(1, 2)), // after the other CAS
			op(3, 18, 28, put("w"), conflict(1, 2)),    // lost to it too
			op(0, 25, inf, put("u"), unknown),          // never observed: may not have happened
			op(2, 31, 40, get, read("y", 2)),
			op(1, 41, 50, del(true, 2), ok(3)),
			op(3, 42, 55, del(false, 0), conflict(2, 0)), // read v2, lost to the delete
			op(2, 51, 60, del(false, 0), notFound),
			op(1, 61, 70, cas("v", 0), ok(4)), // a put after a delete continues the versions
			op(2, 71, 80, get, read("v", 4)),
			op(3, 71, 80, put("fail"), noEffect),
		}, porcupine.Ok},
		{"unknown write read later", []porcupine.Operation{
			op(0, 0, inf, put("x"), unknown),
			op(1, 20, 30, get, read("x", 1)),
		}, porcupine.Ok},
		{"if_version 0 lost to a re-create and delete", append(slices.Clone(base),
			op(0, 21, 30, del(false, 0), ok(3)),
			op(1, 31, 60, cas("a", 0), conflict(0, 0)), // read absent at v3, pushed against v5
			op(2, 32, 40, cas("b", 0), ok(4)),
			op(2, 41, 50, del(true, 4), ok(5))), porcupine.Ok},
		{"if_version 0 conflicts on a state that never existed", []porcupine.Operation{
			op(1, 0, 10, cas("a", 0), conflict(0, 0))}, porcupine.Illegal},
		{"stale read after a completed CAS", append(slices.Clone(base),
			op(2, 21, 30, get, read("x", 1))), porcupine.Illegal},
		{"read of a write that failed", append(slices.Clone(base),
			op(2, 21, 30, cas("z", 1), conflict(1, 2)),
			op(3, 31, 40, get, read("z", 3))), porcupine.Illegal},
		{"read of a write that had no effect", []porcupine.Operation{
			op(0, 0, 10, put("x"), noEffect),
			op(1, 20, 30, get, read("x", 1)),
		}, porcupine.Illegal},
		{"two CAS on one version both succeed", append(slices.Clone(base),
			op(2, 11, 20, cas("z", 1), ok(2))), porcupine.Illegal},
		{"unconditional write conflicts with the version it read", append(slices.Clone(base),
			op(2, 21, 30, put("z"), conflict(2, 2))), porcupine.Illegal},
		{"conditional write conflicts though its precondition held", append(slices.Clone(base),
			op(2, 21, 30, cas("z", 2), conflict(2, 2))), porcupine.Illegal},
		{"conflict with the wrong actual version", append(slices.Clone(base),
			op(2, 21, 30, cas("z", 1), conflict(1, 1))), porcupine.Illegal},
		{"versions restart after a delete", append(slices.Clone(base),
			op(0, 21, 30, del(false, 0), ok(3)),
			op(0, 31, 40, put("z"), ok(1))), porcupine.Illegal},
		{"an unknown write un-happens", []porcupine.Operation{
			op(0, 0, inf, put("x"), unknown),
			op(1, 20, 30, get, read("x", 1)),
			op(2, 31, 40, get, notFound),
		}, porcupine.Illegal},
		{"one state of two is illegal", append(append(slices.Clone(base),
			op(2, 21, 30, get, read("y", 2))),
			op(3, 0, 10, regInput{kind: regPut, key: "other", value: "a"}, ok(1)),
			op(3, 11, 20, regInput{kind: regGet, key: "other"}, notFound)), porcupine.Illegal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := porcupine.CheckOperationsTimeout(regModel, tc.ops, 10*time.Second); got != tc.want {
				t.Errorf("%s, want %s", got, tc.want)
			}
		})
	}
	// firstIllegal points at the stale read, not at what came later.
	stale := op(2, 21, 30, get, read("x", 1))
	ops := append(slices.Clone(base), stale, op(0, 31, 40, put("z"), ok(3)), op(1, 41, 50, get, read("z", 3)))
	if got := firstIllegal(ops); len(got) != 1 || got[0] != stale {
		t.Errorf("firstIllegal: %v, want the stale read", got)
	}
}
