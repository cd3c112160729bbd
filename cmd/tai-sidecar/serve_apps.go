package main

import (
	"fmt"

	"github.com/tai-state/tai-state/conflict"
)

// The app resolver ("app" in --resolvers): apps connected to the socket
// decide the conflicts of the governors they register for (sockapi's
// resolver_register). One hub serves the push loop's resolvers and the
// socket server.

// resolverRegistry returns the built-in resolvers and the app resolver,
// which asks the apps of hub.
func resolverRegistry(hub *conflict.AppHub) (*conflict.Registry, error) {
	r := conflict.NewRegistry()
	if err := r.Register(conflict.NameApp, hub.Factory); err != nil {
		return nil, fmt.Errorf("register the app resolver: %w", err)
	}
	return r, nil
}

// knownResolvers is the registry that configurations are checked against:
// the built-in resolvers and "app".
func knownResolvers() (*conflict.Registry, error) {
	return resolverRegistry(conflict.NewAppHub(conflict.AppOptions{}))
}

// newAppHub returns the hub of the apps that decide conflicts under cfg: a
// governor accepts an app when cfg names "app" as its resolver or its
// fallback.
func newAppHub(cfg conflict.Config) *conflict.AppHub {
	return conflict.NewAppHub(conflict.AppOptions{Delegated: func(governor string) bool {
		ch := cfg.For(governor)
		return ch.Resolver == conflict.NameApp || ch.Fallback == conflict.NameApp
	}})
}

// appHub is the hub of the loops' app resolver; nil without a shared store.
func (l *syncLoops) appHub() *conflict.AppHub {
	if l == nil {
		return nil
	}
	return l.apps
}
