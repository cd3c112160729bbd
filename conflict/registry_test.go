package conflict_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/tai-state/tai-state/conflict"
	"github.com/tai-state/tai-state/conflict/conflicttest"
)

func TestRegistry(t *testing.T) {
	reg := conflict.NewRegistry()
	if got, want := reg.Names(), []string{"causal", "lww", "merge", "version"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Names = %v, want %v", got, want)
	}
	custom := func(conflict.Resolver) conflict.Resolver {
		return conflict.ResolverFunc(func(context.Context, conflict.Conflict) (conflict.Decision, error) {
			return conflict.Decision{Winner: conflict.Remote}, nil
		})
	}
	if err := reg.Register("remote-always", custom); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		f    conflict.Factory
		want error
	}{
		{"lww", custom, conflict.ErrDuplicate},
		{"remote-always", custom, conflict.ErrDuplicate},
		{"", custom, conflict.ErrInvalidName},
		{"Upper", custom, conflict.ErrInvalidName},
		{"1st", custom, conflict.ErrInvalidName},
		{"a:b", custom, conflict.ErrInvalidName},
		{strings.Repeat("a", 65), custom, conflict.ErrInvalidName},
	} {
		if err := reg.Register(tt.name, tt.f); !errors.Is(err, tt.want) {
			t.Errorf("Register(%q) = %v, want %v", tt.name, err, tt.want)
		}
	}
	if err := reg.Register("nil-factory", nil); err == nil {
		t.Error("Register(nil factory) succeeded")
	}
	if _, err := reg.New("nope", nil); !errors.Is(err, conflict.ErrUnknownResolver) {
		t.Errorf("New(nope) = %v", err)
	}
	r, err := reg.New("remote-always", nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.Resolve(ctx, conflict.Conflict{})
	if err != nil || d.Resolver != "remote-always" {
		t.Errorf("a custom resolver's decision is not named after it: %+v, %v", d, err)
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		in   string
		want conflict.Config
		err  bool
	}{
		{in: "", want: conflict.Config{}},
		{in: " *=causal:version , orders=merge, carts = version:merge ", want: conflict.Config{
			Default:   conflict.Choice{Resolver: "causal", Fallback: "version"},
			Governors: map[string]conflict.Choice{"orders": {Resolver: "merge"}, "carts": {Resolver: "version", Fallback: "merge"}},
		}},
		{in: "a=b=lww", want: conflict.Config{Governors: map[string]conflict.Choice{"a=b": {Resolver: "lww"}}}},
		{in: "orders", err: true},
		{in: "orders=", err: true},
		{in: "orders=merge:", err: true},
		{in: "orders=Merge", err: true},
		{in: "=lww", err: true},
		{in: "a/b=lww", err: true},
		{in: "__x__=lww", err: true},
		{in: "a=lww,a=merge", err: true},
		{in: "*=lww,*=merge", err: true},
	}
	for _, tt := range tests {
		got, err := conflict.ParseConfig(tt.in)
		if tt.err {
			if !errors.Is(err, conflict.ErrInvalidConfig) {
				t.Errorf("ParseConfig(%q) = %v, want ErrInvalidConfig", tt.in, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseConfig(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		// String round-trips (with defaults filled in).
		back, err := conflict.ParseConfig(got.String())
		if err != nil || back.String() != got.String() {
			t.Errorf("ParseConfig(%q.String()) = %+v, %v", got.String(), back, err)
		}
	}
	c, _ := conflict.ParseConfig("*=causal,orders=merge:version")
	if got := c.For("orders"); got != (conflict.Choice{Resolver: "merge", Fallback: "version"}) {
		t.Errorf("For(orders) = %+v", got)
	}
	if got := c.For("other"); got != (conflict.Choice{Resolver: "causal", Fallback: "lww"}) {
		t.Errorf("For(other) = %+v", got)
	}
	if got := (conflict.Config{}).For("x"); got != (conflict.Choice{Resolver: "lww", Fallback: "lww"}) {
		t.Errorf("zero Config: %+v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	reg := conflict.NewRegistry()
	for _, tt := range []struct {
		name string
		cfg  conflict.Config
		want error
	}{
		{"zero", conflict.Config{}, nil},
		{"unknown default", conflict.Config{Default: conflict.Choice{Resolver: "nope"}}, conflict.ErrUnknownResolver},
		{"unknown fallback", conflict.Config{Governors: map[string]conflict.Choice{"g": {Resolver: "merge", Fallback: "nope"}}},
			conflict.ErrUnknownResolver},
		{"bad governor", conflict.Config{Governors: map[string]conflict.Choice{"": {}}}, conflict.ErrInvalidName},
		{"governor with a slash", conflict.Config{Governors: map[string]conflict.Choice{"a/b": {}}}, conflict.ErrInvalidName},
	} {
		err := tt.cfg.Validate(reg)
		if tt.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, tt.want) || !errors.Is(err, conflict.ErrInvalidConfig) {
			t.Errorf("%s: %v, want %v and ErrInvalidConfig", tt.name, err, tt.want)
		}
		if _, err := reg.Build(tt.cfg); err == nil {
			t.Errorf("%s: Build accepted it", tt.name)
		}
	}
}

func TestSet(t *testing.T) {
	reg := conflict.NewRegistry()
	failing := func(err error, panics bool, d conflict.Decision) conflict.Factory {
		return func(conflict.Resolver) conflict.Resolver {
			return conflict.ResolverFunc(func(context.Context, conflict.Conflict) (conflict.Decision, error) {
				if panics {
					panic("bad resolver")
				}
				return d, err
			})
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(reg.Register("errs", failing(errors.New("no app connected"), false, conflict.Decision{})))
	must(reg.Register("panics", failing(nil, true, conflict.Decision{})))
	must(reg.Register("invalid", failing(nil, false, conflict.Decision{Winner: conflict.Merged})))
	cfg, err := conflict.ParseConfig("*=causal,v=version,e=errs:version,p=panics,i=invalid,ee=errs:errs")
	must(err)
	set, err := reg.Build(cfg)
	must(err)
	if set.Config().String() != cfg.String() {
		t.Errorf("Config() = %v", set.Config())
	}

	// Version tie, concurrent vectors: remote wins by lww (later hlc).
	c := conflict.Conflict{
		Local:  side("a", 4, h0, conflict.Vector{"a": 1}, []byte{1}),
		Remote: side("b", 4, h0+1, conflict.Vector{"b": 1}, []byte{2}),
	}
	for _, tt := range []struct {
		governor, resolver, reasonHas string
	}{
		{"other", "causal>lww", "are concurrent"},
		{"v", "version>lww", "both sides are at version 4"},
		{"e", "errs!>version>lww", "errs failed (no app connected)"},
		{"p", "panics!>lww", "panics failed (panic: bad resolver)"},
		{"i", "invalid!>lww", "merged decision without a value"},
		{"ee", "errs!>lww", "fallback failed (no app connected)"},
	} {
		c.Key = conflict.Key{Governor: tt.governor, State: "s"}
		d, err := set.Resolve(ctx, c)
		if err != nil || d.Winner != conflict.Remote || d.Resolver != tt.resolver || !strings.Contains(d.Reason, tt.reasonHas) {
			t.Errorf("governor %s: %v by %q (%s), %v; want remote by %q, reason with %q", tt.governor, d.Winner, d.Resolver,
				d.Reason, err, tt.resolver, tt.reasonHas)
		}
	}

	// Built sets are deterministic and safe for concurrent use.
	seed := conflicttest.Seed(t)
	var wg sync.WaitGroup
	for _, g := range []string{"other", "v", "e", "p"} {
		r := set.For(g)
		wg.Go(func() { conflicttest.CheckDeterminism(t, r, seed, 2000) })
	}
	wg.Wait()
}

func TestDecisionValidate(t *testing.T) {
	for _, tt := range []struct {
		d  conflict.Decision
		ok bool
	}{
		{conflict.Decision{Winner: conflict.Local}, true},
		{conflict.Decision{Winner: conflict.Remote}, true},
		{conflict.Decision{Winner: conflict.Merged, Value: []byte{0x80}}, true},
		{conflict.Decision{Winner: conflict.Merged}, false},
		{conflict.Decision{}, false},
		{conflict.Decision{Winner: 9}, false},
	} {
		err := tt.d.Validate()
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, conflict.ErrInvalidDecision)) {
			t.Errorf("Validate(%+v) = %v", tt.d, err)
		}
	}
}
