// Package packaging holds the ways tai-sidecar is shipped: a systemd unit
// (systemd/), a container image (container/), Kubernetes manifests
// (kubernetes/) and a .deb (deb/, built by cmd/mkdeb). It is a module of its
// own, so the main module does not depend on packaging libraries.
//
// The package itself only embeds the files that the .deb installs. Its tests
// check every artefact against a freshly built tai-sidecar.
package packaging

import _ "embed"

//go:embed systemd/tai-sidecar.service
var systemdUnit []byte

//go:embed systemd/tai-sidecar.default
var envFile []byte

// SystemdUnit returns the contents of tai-sidecar.service.
func SystemdUnit() []byte { return clone(systemdUnit) }

// EnvFile returns the contents of /etc/default/tai-sidecar, the service's
// documented TAI_* settings.
func EnvFile() []byte { return clone(envFile) }

func clone(b []byte) []byte { return append([]byte(nil), b...) }
