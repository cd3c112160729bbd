package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tai-state/tai-state/conflict"
)

// TestAppResolverConfig: "app" is a resolver name --resolvers and the
// config file accept, as resolver or fallback; the hub accepts apps for
// exactly the governors that use it, and the built set asks them.
func TestAppResolverConfig(t *testing.T) {
	l := load(t, []string{"--resolvers", "orders=app:lww,*=merge:app"}, nil)
	hub := newAppHub(l.cfg.Sync.Resolvers)
	set, err := l.cfg.Sync.resolverSet(hub)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"orders", "other"} {
		s, err := hub.Attach(g, 0)
		if err != nil {
			t.Fatalf("attach %s: %v", g, err)
		}
		s.Close()
	}
	d, err := set.Resolve(context.Background(), conflict.Conflict{Key: conflict.Key{Governor: "orders", State: "s"},
		Local: conflict.Side{Version: 2, Origin: "b", Clock: conflict.Clock{HLC: 2}}, Remote: conflict.Side{Version: 2, Origin: "a", Clock: conflict.Clock{HLC: 1}}})
	if err != nil || d.Resolver != "app>lww" || !strings.Contains(d.Reason, "no app registered") {
		t.Fatalf("decision %+v, %v", d, err)
	}

	l = load(t, []string{"--resolvers", "orders=lww"}, nil)
	if _, err := newAppHub(l.cfg.Sync.Resolvers).Attach("orders", 0); !errors.Is(err, conflict.ErrNotDelegated) {
		t.Fatalf("attach to a governor without app: %v", err)
	}

	file := writeConfig(t, "per_governor:\n  orders: {resolver: \"app:version\"}\n")
	l = load(t, []string{"--config", file}, nil)
	if ch := l.cfg.Sync.Resolvers.For("orders"); ch.Resolver != conflict.NameApp || ch.Fallback != conflict.NameVersion {
		t.Fatalf("config file: orders resolver %v", ch)
	}
}
