package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/sockapi/wire"
	"github.com/tai-state/tai-state/syncer"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJSONToMsgpack(t *testing.T) {
	tests := []struct {
		name, in string
		want     string // hex; empty when an error is expected
		err      string
	}{
		{name: "small int", in: "1", want: "01"},
		{name: "negative int", in: "-1", want: "ff"},
		{name: "int16", in: "300", want: "d1 01 2c"},
		{name: "int64 min", in: "-9223372036854775808", want: "d3 8000000000000000"},
		{name: "uint64 max", in: "18446744073709551615", want: "cf ffffffffffffffff"},
		{name: "integer beyond uint64 is a float", in: "100000000000000000000", want: "cb 4415af1d78b58c40"},
		{name: "float", in: "1.5", want: "cb 3ff8000000000000"},
		{name: "exponent is a float", in: "1e2", want: "cb 4059000000000000"},
		{name: "integral float stays a float", in: "2.0", want: "cb 4000000000000000"},
		{name: "string", in: `"hi"`, want: "a2 68 69"},
		{name: "unicode string", in: `"\u00e9"`, want: "a2 c3 a9"},
		{name: "bools", in: "[true,false]", want: "92 c3 c2"},
		{name: "array with null", in: `[1,"a",null]`, want: "93 01 a1 61 c0"},
		{name: "object keeps key order", in: `{"b":1,"a":[]}`, want: "82 a1 62 01 a1 61 90"},
		{name: "nested", in: `{"x":{"y":[{}]}}`, want: "81 a1 78 81 a1 79 91 80"},
		{name: "whitespace", in: " { \"a\" : 1 } \n", want: "81 a1 61 01"},
		{name: "null", in: "null", err: "null is not a storable value"},
		{name: "empty", in: "", err: "empty document"},
		{name: "two values", in: "1 2", err: "more than one value"},
		{name: "unquoted string", in: "hello", err: "invalid JSON"},
		{name: "duplicate key", in: `{"a":1,"a":2}`, err: `duplicate key "a"`},
		{name: "huge number", in: "1e400", err: "out of range"},
		{name: "truncated", in: `{"a":`, err: "invalid JSON"},
		{name: "deepest allowed", in: strings.Repeat("[", maxValueNesting) + strings.Repeat("]", maxValueNesting),
			want: strings.Repeat("91", maxValueNesting-1) + "90"},
		{name: "too deep", in: strings.Repeat("[", maxValueNesting+1) + strings.Repeat("]", maxValueNesting+1), err: "nests more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := jsonToMsgpack([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := unhex(t, tt.want); !bytes.Equal(got, want) {
				t.Fatalf("got % x, want % x", got, want)
			}
		})
	}
}

func TestMsgpackToJSON(t *testing.T) {
	tests := []struct {
		name, in string // hex
		want     string
		err      string
	}{
		{name: "fixints", in: "93 00 7f e0", want: "[0,127,-32]"},
		{name: "int8", in: "d0 9c", want: "-100"},
		{name: "int16 positive", in: "d1 01 f4", want: "500"},
		{name: "int64 min", in: "d3 8000000000000000", want: "-9223372036854775808"},
		{name: "uint64 max", in: "cf ffffffffffffffff", want: "18446744073709551615"},
		{name: "uint8", in: "cc ff", want: "255"},
		{name: "float32", in: "ca 3fc00000", want: "1.5"},
		{name: "float64 integral", in: "cb 4000000000000000", want: "2.0"},
		{name: "float64 large", in: "cb 4415af1d78b58c40", want: "1e+20"},
		{name: "NaN", in: "cb 7ff8000000000001", want: `"NaN"`},
		{name: "infinities", in: "92 cb 7ff0000000000000 cb fff0000000000000", want: `["+Inf","-Inf"]`},
		{name: "nil and bools", in: "93 c0 c3 c2", want: "[null,true,false]"},
		{name: "str8", in: "d9 03 616263", want: `"abc"`},
		{name: "no HTML escaping", in: "a3 3c 26 3e", want: `"<&>"`},
		{name: "escapes", in: "a2 22 0a", want: `"\"\n"`},
		{name: "invalid utf-8", in: "a1 ff", want: `"\ufffd"`},
		{name: "bin is base64", in: "c4 03 010203", want: `"AQID"`},
		{name: "bin16", in: "c5 0001 ff", want: `"/w=="`},
		{name: "map keeps order", in: "82 a1 62 01 a1 61 02", want: `{"b":1,"a":2}`},
		{name: "int key", in: "81 01 a1 61", want: `{"1":"a"}`},
		{name: "other keys", in: "84 c0 01 c3 02 92 01 02 03 c4 01 ff 04", want: `{"null":1,"true":2,"[1,2]":3,"/w==":4}`},
		{name: "map16 and array16", in: "de 0001 a1 61 dc 0002 01 02", want: `{"a":[1,2]}`},
		{name: "timestamp32", in: "d6 ff 00000001", want: `"1970-01-01T00:00:01Z"`},
		{name: "timestamp64", in: "d7 ff 00000004 00000001", want: `"1970-01-01T00:00:01.000000001Z"`},
		{name: "timestamp96", in: "c7 0c ff 00000000 ffffffffffffffff", want: `"1969-12-31T23:59:59Z"`},
		{name: "other ext", in: "d4 05 aa", want: `{"ext":5,"data":"qg=="}`},
		{name: "ext8", in: "c7 02 fe 0102", want: `{"ext":-2,"data":"AQI="}`},
		{name: "truncated str", in: "a3 61", err: "truncated"},
		{name: "truncated map", in: "82 a1 61 01", err: "truncated"},
		{name: "lying length", in: "db ffffffff 61", err: "truncated"},
		{name: "trailing bytes", in: "01 02", err: "after the document"},
		{name: "reserved byte", in: "c1", err: "invalid type byte"},
		{name: "too deep", in: strings.Repeat("91", wire.MaxDepth+1) + "01", err: "nested deeper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := msgpackToJSON(unhex(t, tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
			if !json.Valid(got) {
				t.Fatalf("%s is not valid JSON", got)
			}
		})
	}
}

// TestJSONRoundTrip: JSON -> msgpack -> JSON gives the input back, compacted.
func TestJSONRoundTrip(t *testing.T) {
	for _, in := range []string{
		`{"status":"paid","total":42,"items":[{"sku":"a-1","qty":2,"price":9.99}],"note":null,"gift":false}`,
		`[1,-1,300,-70000,4294967296,18446744073709551615,0.5,2.0,1e+21,"",[],{}]`,
		`"just a string"`,
		`{"z":1,"a":2,"m":{"é":"ü","<tag>":"&"}}`,
	} {
		mp, err := jsonToMsgpack([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		out, err := msgpackToJSON(mp)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if string(out) != in {
			t.Errorf("round trip of %s gave %s", in, out)
		}
	}
}

func TestParseArgs(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		pos       []string
		ifVersion string
		absent    bool
		actor     string
		err       string
	}{
		{name: "flags after", args: []string{"g", "s", "1", "--if-version", "3", "--actor", "me"}, pos: []string{"g", "s", "1"}, ifVersion: "3", actor: "me"},
		{name: "flags before", args: []string{"-if-version=4", "--if-absent", "g", "s", "1"}, pos: []string{"g", "s", "1"}, ifVersion: "4", absent: true},
		{name: "flags between", args: []string{"g", "--actor=a b", "s", "--if-absent", "1"}, pos: []string{"g", "s", "1"}, actor: "a b", absent: true},
		{name: "negative number value", args: []string{"g", "s", "-5", "--actor", "x"}, pos: []string{"g", "s", "-5"}, actor: "x"},
		{name: "negative float value", args: []string{"g", "s", "-1.5e3"}, pos: []string{"g", "s", "-1.5e3"}},
		{name: "flag value that looks like a flag", args: []string{"g", "s", "1", "--actor", "--if-absent"}, pos: []string{"g", "s", "1"}, actor: "--if-absent"},
		{name: "double dash", args: []string{"g", "--", "--if-absent", "-x"}, pos: []string{"g", "--if-absent", "-x"}},
		{name: "single dash is positional", args: []string{"-"}, pos: []string{"-"}},
		{name: "bool flag with value", args: []string{"--if-absent=true", "g"}, pos: []string{"g"}, absent: true},
		{name: "unknown flag", args: []string{"g", "--nope"}, err: "flag provided but not defined: -nope"},
		{name: "bad version", args: []string{"g", "--if-version", "x"}, err: "not a version number"},
		{name: "negative version", args: []string{"g", "--if-version", "-1"}, err: "not a version number"},
		{name: "missing value", args: []string{"g", "--actor"}, err: "flag needs an argument: -actor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			writeFlags(fs, true)
			pos, err := parseArgs(fs, tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(pos) != fmt.Sprint(tt.pos) {
				t.Fatalf("positionals %q, want %q", pos, tt.pos)
			}
			if got := fs.Lookup("if-version").Value.String(); got != tt.ifVersion {
				t.Fatalf("if-version %q, want %q", got, tt.ifVersion)
			}
			if got := fs.Lookup("if-absent").Value.String(); got != fmt.Sprint(tt.absent) {
				t.Fatalf("if-absent %s, want %v", got, tt.absent)
			}
			if got := fs.Lookup("actor").Value.String(); got != tt.actor {
				t.Fatalf("actor %q, want %q", got, tt.actor)
			}
		})
	}
}

func TestDescribeError(t *testing.T) {
	u := func(v uint64) *uint64 { return &v }
	conflict := func(exp, act uint64) error {
		e := wire.Errorf(wire.CodeVersionConflict, "version conflict")
		e.Governor, e.State, e.Expected, e.Actual = "g", "s", u(exp), u(act)
		return e
	}
	notFound := wire.Errorf(wire.CodeNotFound, "no such state")
	notFound.Governor, notFound.State = "g", "s"
	dialErr := &client.ConnError{Op: "dial", Socket: "./tai.sock", Err: &net.OpError{
		Op: "dial", Net: "unix", Err: &net.AddrError{Err: "connect: no such file or directory", Addr: "./tai.sock"}}}
	tests := []struct {
		name string
		err  error
		want string
		is   error
	}{
		{"conflict", conflict(3, 5), "version conflict on g/s: expected version 3, actual 5", client.ErrVersionConflict},
		{"if-absent conflict", conflict(0, 5), "version conflict on g/s: expected no state, actual 5", client.ErrVersionConflict},
		{"conflict on missing state", conflict(2, 0), "version conflict on g/s: expected version 2, found none", client.ErrVersionConflict},
		{"not found", notFound, "not found: g/s", client.ErrNotFound},
		{"no sidecar", dialErr, "no sidecar at ./tai.sock: address ./tai.sock: connect: no such file or directory", client.ErrUnavailable},
		{"lost connection", &client.ConnError{Op: "read", Socket: "./tai.sock", Err: io.EOF, Sent: true},
			"lost the connection to the sidecar at ./tai.sock (read): EOF", io.EOF},
		{"other sidecar error", wire.Errorf(wire.CodeTooLarge, "value is 2000000 bytes,\nlimit 1000000"),
			"TooLarge: value is 2000000 bytes, limit 1000000", client.ErrTooLarge},
		{"plain error", errors.New("boom"), "boom", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := describeError(tt.err, "./tai.sock")
			if err.Error() != tt.want {
				t.Fatalf("got %q, want %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("%v does not match %v", err, tt.is)
			}
		})
	}
}

// testSidecar runs the real socket server over an in-memory store and
// returns its socket path.
func testSidecar(t *testing.T) string {
	t.Helper()
	path, _ := testSidecarWith(t, sockapi.Options{}, nil)
	return path
}

// testSidecarWith serves an in-memory store with opts, and with now as its
// clock when not nil.
func testSidecarWith(t *testing.T, opts sockapi.Options, now func() time.Time) (string, *localcache.Store) {
	t.Helper()
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "node-cli", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tai.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := sockapi.NewServer(store, opts)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := store.Close(ctx); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return path, store
}

// cli runs one command and returns its output.
func cli(t *testing.T, socket string, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := runCLI(context.Background(), socket, args, &stdout, &stderr)
	if err != nil && strings.Contains(err.Error(), "\n") {
		t.Errorf("error message spans lines: %q", err)
	}
	return stdout.String(), err
}

// cliRecord runs a command that prints one record.
func cliRecord(t *testing.T, socket string, args ...string) map[string]any {
	t.Helper()
	out, err := cli(t, socket, args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("%v printed %q, want one line", args, out)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v printed %q: %v", args, out, err)
	}
	return m
}

func TestCLIEndToEnd(t *testing.T) {
	sock := testSidecar(t)

	put := cliRecord(t, sock, "put", "shop", "cart", `{"items":3,"note":"gift <3"}`, "--actor", "web", "--reason", "add item")
	if put["version"] != 1.0 || put["governor"] != "shop" || put["state"] != "cart" || put["pending"] != true {
		t.Fatalf("put printed %v", put)
	}
	if _, ok := put["value"]; ok {
		t.Fatalf("put printed a value: %v", put)
	}
	change := put["change"].(map[string]any)
	if change["actor"] != "web" || change["reason"] != "add item" {
		t.Fatalf("change = %v", change)
	}
	updated, err := time.Parse(time.RFC3339Nano, put["updated_at"].(string))
	if err != nil || time.Since(updated) > time.Minute || !strings.HasSuffix(put["updated_at"].(string), "Z") {
		t.Fatalf("updated_at %v (%v)", put["updated_at"], err)
	}

	// get prints the value as it was put, key order and all.
	out, err := cli(t, sock, "get", "shop", "cart")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"value":{"items":3,"note":"gift <3"}`) {
		t.Fatalf("get printed %s", out)
	}
	var got recordJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || !got.FromCache || !got.Pending || got.Change.Actor != "web" || got.UpdatedAt != put["updated_at"] {
		t.Fatalf("get = %+v", got)
	}

	// The stored document is msgpack: a Go client reads typed values.
	c := client.New(sock)
	defer c.Close()
	ctx := context.Background()
	rec, err := c.Get(ctx, "shop", "cart")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Items int64  `codec:"items"`
		Note  string `codec:"note"`
	}
	if err := rec.Decode(&doc); err != nil || doc.Items != 3 || doc.Note != "gift <3" {
		t.Fatalf("decoded %+v, %v", doc, err)
	}

	// Preconditions.
	_, err = cli(t, sock, "put", "shop", "cart", "1", "--if-version", "5")
	if err == nil || err.Error() != "version conflict on shop/cart: expected version 5, actual 1" || !errors.Is(err, client.ErrVersionConflict) {
		t.Fatalf("conflict: %v", err)
	}
	_, err = cli(t, sock, "put", "--if-absent", "shop", "cart", "1")
	if err == nil || err.Error() != "version conflict on shop/cart: expected no state, actual 1" {
		t.Fatalf("if-absent conflict: %v", err)
	}
	if m := cliRecord(t, sock, "put", "shop", "cart", "-5", "--if-version", "1"); m["version"] != 2.0 {
		t.Fatalf("put -5 printed %v", m)
	}
	if m := cliRecord(t, sock, "get", "shop", "cart"); m["value"] != -5.0 {
		t.Fatalf("value after put -5: %v", m["value"])
	}

	// delete prints the tombstone.
	del := cliRecord(t, sock, "delete", "shop", "cart", "--if-version", "2")
	if del["version"] != 3.0 || del["deleted"] != true {
		t.Fatalf("delete printed %v", del)
	}
	if _, ok := del["value"]; ok {
		t.Fatalf("delete printed a value: %v", del)
	}
	if _, err := cli(t, sock, "get", "shop", "cart"); err == nil || err.Error() != "not found: shop/cart" || !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
	if _, err := cli(t, sock, "delete", "shop", "cart"); err == nil || err.Error() != "not found: shop/cart" {
		t.Fatalf("delete deleted: %v", err)
	}

	// Values the CLI cannot write are still shown: bin, non-string keys.
	raw, _ := wire.Marshal(map[any]any{1: []byte{1, 2, 3}})
	if _, err := c.PutRaw(ctx, "shop", "raw", raw); err != nil {
		t.Fatal(err)
	}
	if m := cliRecord(t, sock, "get", "shop", "raw"); fmt.Sprint(m["value"]) != "map[1:AQID]" {
		t.Fatalf("raw value printed as %v", m["value"])
	}

	// stats and ping.
	out, err = cli(t, sock, "stats")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("stats printed %q: %v", out, err)
	}
	if st["node_id"] != "node-cli" || st["states"] != 1.0 || st["requests"].(map[string]any)["put"] == nil {
		t.Fatalf("stats = %v", st)
	}
	ping := cliRecord(t, sock, "ping")
	if ping["ok"] != true || ping["node_id"] != "node-cli" || ping["protocol"] != 1.0 {
		t.Fatalf("ping printed %v", ping)
	}
}

func TestCLIList(t *testing.T) {
	sock := testSidecar(t)
	c := client.New(sock)
	defer c.Close()
	ctx := context.Background()
	// More states than one page holds, so that list follows cursors.
	const n = wire.MaxListLimit + 150
	for start := 0; start < n; start += wire.MaxBatch {
		var items []wire.Item
		for i := start; i < min(start+wire.MaxBatch, n); i++ {
			v, _ := wire.Marshal(i)
			items = append(items, wire.Item{Governor: "g", State: fmt.Sprintf("k%05d", i), Value: v})
		}
		if _, err := c.BatchPut(ctx, items); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Put(ctx, "g", "other", "x"); err != nil {
		t.Fatal(err)
	}

	lines := func(args ...string) []recordJSON {
		t.Helper()
		out, err := cli(t, sock, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		var recs []recordJSON
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var r recordJSON
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("line %q: %v", sc.Text(), err)
			}
			recs = append(recs, r)
		}
		return recs
	}
	all := lines("list", "g", "--prefix", "k")
	if len(all) != n {
		t.Fatalf("listed %d states, want %d", len(all), n)
	}
	for i, r := range all {
		if r.State != fmt.Sprintf("k%05d", i) || string(r.Value) != fmt.Sprint(i) || r.Version != 1 {
			t.Fatalf("line %d = %+v", i, r)
		}
	}
	if got := lines("list", "--limit", "3", "g"); len(got) != 3 || got[0].State != "k00000" || got[2].State != "k00002" {
		t.Fatalf("--limit 3 gave %+v", got)
	}
	if got := lines("list", "g", "--prefix", "oth"); len(got) != 1 || string(got[0].Value) != `"x"` {
		t.Fatalf("--prefix oth gave %+v", got)
	}
	if got := lines("list", "empty"); len(got) != 0 {
		t.Fatalf("empty governor listed %+v", got)
	}
}

func TestCLIErrors(t *testing.T) {
	sock := testSidecar(t)
	missing := filepath.Join(t.TempDir(), "absent.sock")
	tests := []struct {
		name  string
		sock  string
		args  []string
		usage bool
		want  string // substring of the error
		is    error
	}{
		{name: "no command", args: nil, usage: true, want: "no command given"},
		{name: "unknown command", args: []string{"frobnicate"}, usage: true, want: `unknown command "frobnicate"`},
		{name: "too few args", args: []string{"get", "g"}, usage: true, want: "usage: tai-sidecar get GOV STATE (got 1 arguments, want 2)"},
		{name: "too many args", args: []string{"stats", "x"}, usage: true, want: "usage: tai-sidecar stats (got 1 arguments, want 0)"},
		{name: "unknown flag", args: []string{"get", "g", "s", "--if-version", "1"}, usage: true, want: "flag provided but not defined"},
		{name: "bad JSON", args: []string{"put", "g", "s", "hello"}, usage: true, want: `put: VALUE: invalid JSON: invalid character 'h' looking for beginning of value (VALUE is JSON: quote text, as in '"text"')`},
		{name: "bad JSON object", args: []string{"put", "g", "s", "{a:1}"}, usage: true, want: "put: VALUE: invalid JSON"},
		{name: "negative limit", args: []string{"list", "g", "--limit", "-1"}, usage: true, want: "--limit must not be negative"},
		{name: "help", args: []string{"put", "-h"}, is: flag.ErrHelp},
		{name: "bad name", args: []string{"get", "g", "a/b"}, want: "InvalidArgument g/a/b", is: client.ErrInvalidArgument},
		{name: "no sidecar", sock: missing, args: []string{"ping"}, want: "no sidecar at " + missing + ": connect: no such file or directory", is: syscall.ENOENT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sock
			if tt.sock != "" {
				s = tt.sock
			}
			_, err := cli(t, s, tt.args...)
			if err == nil {
				t.Fatal("no error")
			}
			var ue *usageError
			if errors.As(err, &ue) != tt.usage {
				t.Fatalf("%v: usage error %v, want %v", err, !tt.usage, tt.usage)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %q, want it to contain %q", err, tt.want)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("err = %v, want errors.Is %v", err, tt.is)
			}
		})
	}
}

// TestStatusWithoutSidecar: status words a missing sidecar as every client
// command does.
func TestStatusWithoutSidecar(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"--socket", missing, "status"}, &stdout, &stderr, func(string) string { return "" })
	want := "no sidecar at " + missing + ": connect: no such file or directory"
	if err == nil || err.Error() != want || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

// TestCLIThroughRun goes through main's entry point, global flag included.
func TestCLIThroughRun(t *testing.T) {
	sock := testSidecar(t)
	var stdout, stderr bytes.Buffer
	getenv := func(string) string { return "" }
	if err := run(context.Background(), []string{"--socket", sock, "put", "g", "s", `[1,2]`}, &stdout, &stderr, getenv); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"--socket", sock, "get", "g", "s"}, &stdout, &stderr, getenv); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), `"value":[1,2]`) {
		t.Fatalf("get printed %q", stdout.String())
	}
}

// TestFlagMistakes: a mistyped or incomplete flag, to serve, config print,
// status, a client command or the global flags, is a usage error (exit
// status 2, which the systemd unit does not restart on) reported in one
// line, without a page of usage; -h still prints the usage.
func TestFlagMistakes(t *testing.T) {
	getenv := func(string) string { return "" }
	for _, args := range [][]string{
		{"serve", "--bogus"},
		{"serve", "--max-conns"},
		{"config", "print", "--bogus"},
		{"status", "--bogus"},
		{"--version"},
		{"put", "g", "s", "1", "--if-version", "abc"},
		{"list", "g", "--bogus"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), args, &stdout, &stderr, getenv)
		if err == nil || exitCode(err) != 2 || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v (exit %d), want a one-line usage error", args, err, exitCode(err))
		}
		if err != nil && !strings.Contains(err.Error(), "-h)") && !strings.Contains(err.Error(), "help)") {
			t.Errorf("%q: %v does not say where the usage is", args, err)
		}
		if stdout.Len()+stderr.Len() != 0 {
			t.Errorf("%q printed %q and %q; the error alone is printed, by main", args, stdout.String(), stderr.String())
		}
	}
	for _, args := range [][]string{{"serve", "-h"}, {"put", "-h"}, {"status", "-h"}} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), args, &stdout, &stderr, getenv)
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr.String(), "-") {
			t.Errorf("%q: %v, printed %q; want the usage and flag.ErrHelp", args, err, stderr.String())
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCLIWatch: watch prints each change as one JSON line, local changes
// marked remote false, until its context ends (an interrupt), and then
// exits cleanly.
func TestCLIWatch(t *testing.T) {
	sock := testSidecar(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out lockedBuffer
	done := make(chan error, 1)
	go func() { done <- runCLI(ctx, sock, []string{"watch", "shop", "--prefix", "cart"}, &out, io.Discard) }()
	// The watch starts asynchronously: write until a change shows up.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), `"cart"`) {
		if time.Now().After(deadline) {
			t.Fatalf("watch printed nothing: %q", out.String())
		}
		if _, err := cli(t, sock, "put", "shop", "cart", `{"n":1}`); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := cli(t, sock, "put", "shop", "other", `1`); err != nil { // not under the prefix
		t.Fatal(err)
	}
	if _, err := cli(t, sock, "delete", "shop", "cart"); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), `"deleted":true`) {
		if time.Now().After(deadline) {
			t.Fatalf("watch did not print the delete: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("watch after interrupt: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var prev float64
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		if i == 0 {
			prev = m["version"].(float64) - 1 // puts before the watch started are not shown
		}
		if m["state"] != "cart" || m["remote"] != false || m["version"].(float64) != prev+1 {
			t.Fatalf("line %d: %v", i, m)
		}
		prev = m["version"].(float64)
		if i < len(lines)-1 && m["value"].(map[string]any)["n"] != 1.0 {
			t.Fatalf("line %d value: %v", i, m["value"])
		}
	}
}

// TestCLIPendingFailed: pending and failed print JSON with the protocol's
// field names; without a shared store the sync levels are refused.
func TestCLIPendingFailed(t *testing.T) {
	sock := testSidecar(t)
	if _, err := cli(t, sock, "put", "g", "s", `1`); err != nil {
		t.Fatal(err)
	}
	p := cliRecord(t, sock, "pending")
	if p["depth"] != 1.0 || p["shared_store"] != false || p["oldest_seq"] == nil {
		t.Fatalf("pending: %v", p)
	}
	out, err := cli(t, sock, "failed", "--limit", "5")
	if err != nil || out != "" {
		t.Fatalf("failed: %q, %v", out, err)
	}
	for _, args := range [][]string{
		{"get", "g", "s", "--consistency", "strong"},
		{"get", "g", "s", "--consistency", "bounded", "--max-staleness", "1s"},
		{"put", "g", "s", "2", "--sync"},
	} {
		_, err := cli(t, sock, args...)
		if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "no") {
			t.Fatalf("%v: %v", args, err)
		}
	}
	var ue *usageError
	if _, err := cli(t, sock, "get", "g", "s", "--consistency", "bounded"); !errors.As(err, &ue) {
		t.Fatalf("bounded without --max-staleness: %v", err)
	}
	for _, args := range [][]string{
		{"put", "g", "s", "2", "--sync", "--strong"},
		{"delete", "g", "s", "--sync", "--strong"},
	} {
		if _, err := cli(t, sock, args...); !errors.As(err, &ue) || !strings.Contains(err.Error(), "--sync and --strong") {
			t.Fatalf("%v: %v", args, err)
		}
	}
	// --max-staleness alone asks for a bounded read; with another level it
	// is a mistake rather than a setting silently ignored.
	if _, err := cli(t, sock, "get", "g", "s", "--max-staleness", "1s"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("--max-staleness alone: %v", err)
	}
	for _, level := range []string{"local", "strong"} {
		if _, err := cli(t, sock, "get", "g", "s", "--consistency", level, "--max-staleness", "1s"); !errors.As(err, &ue) {
			t.Fatalf("--consistency %s with --max-staleness: %v", level, err)
		}
	}
	if r := cliRecord(t, sock, "get", "g", "s", "--consistency", "local"); r["version"] != 1.0 {
		t.Fatalf("local get: %v", r)
	}
}

// noRemote is a shared store that is never reached: enough for flush.
type noRemote struct{}

func (noRemote) Fetch(context.Context, localcache.Key) error { return sockapi.ErrRemoteUnavailable }
func (noRemote) FreshAt(string) (time.Time, bool)            { return time.Time{}, false }
func (noRemote) WriteStrong(context.Context, []localcache.Write) ([]localcache.Record, error) {
	return nil, sockapi.ErrRemoteUnavailable
}
func (noRemote) ReadStrong(context.Context, []localcache.Key) ([]*localcache.Record, int, error) {
	return nil, 0, sockapi.ErrRemoteUnavailable
}

func TestCLIFlush(t *testing.T) {
	// Local only.
	sock := testSidecar(t)
	_, err := cli(t, sock, "flush")
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "shared store") {
		t.Fatalf("local-only flush: %v", err)
	}
	var ue *usageError
	if _, err := cli(t, sock, "flush", "--timeout", "-1s"); !errors.As(err, &ue) {
		t.Fatalf("negative timeout: %v", err)
	}

	sock, store := testSidecarWith(t, sockapi.Options{Sync: noRemote{}}, nil)
	if r := cliRecord(t, sock, "flush"); r["flushed_seq"] != 0.0 {
		t.Fatalf("empty flush: %v", r)
	}
	if _, err := cli(t, sock, "put", "g", "s", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, sock, "flush", "--timeout", "20ms"); !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("flush timeout: %v", err)
	}
	seq := store.LastSeq()
	if err := store.Ack(context.Background(), []syncer.Ack{{Key: syncer.Key{Governor: "g", State: "s"}, Seqs: []uint64{seq}, Outcome: syncer.OutcomePushed}}); err != nil {
		t.Fatal(err)
	}
	if r := cliRecord(t, sock, "flush", "--timeout", "5s"); r["flushed_seq"] != float64(seq) {
		t.Fatalf("flush: %v (want %d)", r, seq)
	}
}

// stepClock moves one second after every reading.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(time.Second)
	return t
}

// historySidecar serves a store with a small history of g/a (put 1,
// put {"k":[true,null]}, delete, put "x") and g/b (put bin, which has no
// plain JSON form).
func historySidecar(t *testing.T) (string, *localcache.Store) {
	t.Helper()
	clk := &stepClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	sock, store := testSidecarWith(t, sockapi.Options{}, clk.Now)
	for _, args := range [][]string{
		{"put", "g", "a", "1", "--actor", "ann", "--reason", "first"},
		{"put", "g", "a", `{"k":[true,null]}`},
		{"delete", "g", "a"},
		{"put", "g", "a", `"x"`},
	} {
		if _, err := cli(t, sock, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	c := &client.Client{Socket: sock}
	defer c.Close()
	if _, err := c.PutRaw(context.Background(), "g", "b", []byte{0xc4, 0x02, 0x01, 0x02}); err != nil {
		t.Fatal(err)
	}
	return sock, store
}

func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var ms []map[string]any
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		ms = append(ms, m)
	}
	return ms
}

// TestCLIHistoryExport: history export prints what Store.Export writes,
// byte for byte.
func TestCLIHistoryExport(t *testing.T) {
	sock, store := historySidecar(t)
	out, err := cli(t, sock, "history", "export", "g")
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	n, err := store.Export(context.Background(), localcache.EventQuery{Governor: "g"}, &want)
	if err != nil || n != 5 {
		t.Fatalf("store export: %d, %v", n, err)
	}
	if out != want.String() {
		t.Fatalf("history export differs from Store.Export:\ncli:   %s\nstore: %s", out, want.String())
	}
	var ue *usageError
	if _, err := cli(t, sock, "history", "import", "g"); !errors.As(err, &ue) {
		t.Fatalf("history import: %v", err)
	}
	if _, err := cli(t, sock, "history", "export"); !errors.As(err, &ue) {
		t.Fatalf("history export without GOV: %v", err)
	}
}

func TestCLIEvents(t *testing.T) {
	sock, _ := historySidecar(t)
	out, err := cli(t, sock, "events", "g")
	if err != nil {
		t.Fatal(err)
	}
	evs := jsonLines(t, out)
	if len(evs) != 5 || evs[0]["actor"] != "ann" || evs[0]["value"] != 1.0 || evs[2]["action"] != "delete" ||
		evs[4]["state"] != "b" || evs[4]["value"] != nil || evs[4]["value_b64"] != "xAIBAg==" {
		t.Fatalf("events: %s", out)
	}
	// One state, filters, a limit.
	out, err = cli(t, sock, "events", "g", "a", "--action", "put", "--limit", "2")
	if evs := jsonLines(t, out); err != nil || len(evs) != 2 || evs[1]["version"] != 2.0 {
		t.Fatalf("events of a, puts, limit 2: %s %v", out, err)
	}
	out, err = cli(t, sock, "events", "g", "a", "--from", "2030-01-02T03:04:06Z", "--to", "2030-01-02T03:04:08Z")
	if evs := jsonLines(t, out); err != nil || len(evs) != 2 || evs[0]["version"] != 2.0 || evs[1]["version"] != 3.0 {
		t.Fatalf("events in a time range: %s %v", out, err)
	}
	var ue *usageError
	for _, args := range [][]string{
		{"events"},
		{"events", "g", "a", "b"},
		{"events", "g", "--from", "yesterday"},
		{"events", "g", "--limit", "-1"},
	} {
		if _, err := cli(t, sock, args...); !errors.As(err, &ue) {
			t.Errorf("%v: %v", args, err)
		}
	}
	if _, err := cli(t, sock, "events", "g", "--from", "2030-01-02T00:00:00Z", "--to", "2030-01-01T00:00:00Z"); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("reversed range: %v", err)
	}
}

func TestCLIStateAt(t *testing.T) {
	sock, _ := historySidecar(t)
	r := cliRecord(t, sock, "state-at", "g", "a", "--version", "2")
	if r["version"] != 2.0 || r["exact"] != true || r["value"] == nil || r["state"] != "a" {
		t.Fatalf("state-at --version 2: %v", r)
	}
	if v, _ := json.Marshal(r["value"]); string(v) != `{"k":[true,null]}` {
		t.Fatalf("value: %s", v)
	}
	r = cliRecord(t, sock, "state-at", "g", "a", "--at", "2030-01-02T03:04:05.5Z")
	if r["version"] != 1.0 || r["change"].(map[string]any)["actor"] != "ann" {
		t.Fatalf("state-at --at: %v", r)
	}
	if _, err := cli(t, sock, "state-at", "g", "a", "--version", "3"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("state-at a delete: %v", err)
	}
	if _, err := cli(t, sock, "state-at", "g", "a", "--at", "2000-01-01T00:00:00Z"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("state-at before it existed: %v", err)
	}
	var ue *usageError
	for _, args := range [][]string{
		{"state-at", "g", "a"},
		{"state-at", "g", "a", "--version", "1", "--at", "2030-01-02T03:04:05Z"},
		{"state-at", "g", "--version", "1"},
		{"state-at", "g", "a", "--at", "noon"},
	} {
		if _, err := cli(t, sock, args...); !errors.As(err, &ue) {
			t.Errorf("%v: %v", args, err)
		}
	}
	if _, err := cli(t, sock, "state-at", "g", "a", "--version", "0"); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("version 0: %v", err)
	}
}

func TestCLIValidate(t *testing.T) {
	sock, _ := historySidecar(t)
	r := cliRecord(t, sock, "validate", "g")
	if r["ok"] != true || r["states"] != 2.0 || r["events"] != 5.0 || r["violation_count"] != 0.0 {
		t.Fatalf("validate: %v", r)
	}
	if r := cliRecord(t, sock, "validate", "g", "b"); r["ok"] != true || r["states"] != 1.0 {
		t.Fatalf("validate one state: %v", r)
	}
	if _, err := cli(t, sock, "validate", "g", "a/b"); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("bad state: %v", err)
	}
}

// brokenLog is a real store whose event log check finds a violation.
type brokenLog struct{ *localcache.Store }

func (brokenLog) Validate(ctx context.Context, governor, state string) (localcache.ValidationReport, error) {
	k := localcache.Key{Governor: governor, State: "s"}
	return localcache.ValidationReport{States: 1, Events: 2, ViolationCount: 1,
		Violations: []localcache.Violation{{Key: k, Version: 2, Rule: localcache.RuleStep, Message: "version 2 follows 0"}}}, nil
}

// TestCLIValidateViolations: violations are printed and make the exit
// status 1.
func TestCLIValidateViolations(t *testing.T) {
	store, err := localcache.Open(localcache.Options{InMemory: true, NodeID: "node-cli"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close(context.Background()) })
	path := filepath.Join(t.TempDir(), "tai.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := sockapi.NewServer(brokenLog{store}, sockapi.Options{})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"--socket", path, "validate", "g"}, &stdout, &stderr, func(string) string { return "" })
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "1 violations") {
		t.Fatalf("validate with a violation: %v", err)
	}
	var rep map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("printed %q: %v", stdout.String(), err)
	}
	vs, _ := rep["violations"].([]any)
	if rep["ok"] != false || rep["violation_count"] != 1.0 || len(vs) != 1 || vs[0].(map[string]any)["rule"] != "step" {
		t.Fatalf("report: %s", stdout.String())
	}
}

// TestUsageListsEveryCommand: the help text names every client command.
func TestUsageListsEveryCommand(t *testing.T) {
	for name := range cliCommands() {
		if !strings.Contains(usage, "\n  "+name+" ") {
			t.Errorf("the usage text does not list the command %q", name)
		}
	}
}
