#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need, then vet, unit and
# end-to-end tests with the race detector, and a short run of every fuzz target.
# The tests run against a Firestore emulator that this script starts and stops
# (scripts/emulator.sh; it needs the Debian package
# google-cloud-cli-firestore-emulator).
#
#   scripts/test.sh            everything
#   FUZZTIME=30s scripts/test.sh   longer fuzz runs (default 10s per target)
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZTIME="${FUZZTIME:-10s}"

need_apt=()
/usr/bin/python3 -c 'import msgpack' 2>/dev/null || need_apt+=(python3-msgpack)
if ((${#need_apt[@]})); then
	echo "==> installing ${need_apt[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		echo "scripts/test.sh: need ${need_apt[*]} (Debian packages); run as root or install them first" >&2
		exit 1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The toolchain go.mod names: a patch release with the standard library's
# security fixes. A go installed with GOTOOLCHAIN=local would build with
# itself; the named one comes from the Go module proxy, once.
GOTOOLCHAIN="$(sed -n 's/^toolchain //p' go.mod)"
export GOTOOLCHAIN
echo "==> $(go version)"

# shellcheck source=scripts/emulator.sh
source scripts/emulator.sh
echo "==> starting the Firestore emulator"
emulator_start
trap emulator_stop EXIT
echo "    FIRESTORE_EMULATOR_HOST=$FIRESTORE_EMULATOR_HOST"

echo "==> go vet"
go vet ./...

echo "==> staticcheck"
# Pinned; built from the Go module proxy into the Go bin directory once.
STATICCHECK_VERSION=v0.8.2
staticcheck="$(go env GOPATH)/bin/staticcheck"
if ! "$staticcheck" -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
	go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
fi
"$staticcheck" ./...

echo "==> govulncheck"
# Offline: the vulnerability database is built from the golang.org/x/vulndb
# module (the Go module proxy serves it) into the Go build cache, once per
# pinned version, and govulncheck reads it from there.
GOVULNCHECK_VERSION=v1.9.0
VULNDB_VERSION=v0.0.0-20261105234957-e22db6528018
gobin="$(go env GOPATH)/bin"
if ! "$gobin/govulncheck" -version 2>/dev/null | grep -q "${GOVULNCHECK_VERSION}"; then
	go install "golang.org/x/vuln/cmd/govulncheck@${GOVULNCHECK_VERSION}"
fi
vulndb="$(go env GOCACHE)/tai-vulndb-${VULNDB_VERSION}"
if [ ! -d "$vulndb/index" ]; then
	go install "golang.org/x/vulndb/cmd/indexdb@${VULNDB_VERSION}"
	rm -rf "$vulndb.tmp"
	"$gobin/indexdb" -vulns "$(go env GOMODCACHE)/golang.org/x/vulndb@${VULNDB_VERSION}/data/osv" -out "$vulndb.tmp"
	mv "$vulndb.tmp" "$vulndb"
fi
"$gobin/govulncheck" -db "file://$vulndb" ./...

echo "==> go test -race"
go test -race -count=1 -timeout 20m ./...

echo "==> packaging (systemd unit, container image, Kubernetes manifests, .deb)"
# A module of its own: its libraries stay out of the main module.
(cd packaging && go vet ./... && go test -count=1 ./...)

echo "==> fuzz (${FUZZTIME} per target)"
# Every Fuzz* function in the module, run one at a time as go test requires.
for file in $(grep -rl --include='*_test.go' '^func Fuzz' .); do
	pkg="./$(dirname "${file#./}")"
	for fn in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | cut -d' ' -f2); do
		echo "--> $pkg $fn"
		log="$(mktemp)"
		if ! go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$FUZZTIME" "$pkg" 2>&1 | tee "$log"; then
			# Go's fuzzing engine can end a run with "context deadline
			# exceeded" when its time is up while a worker is busy on a
			# loaded machine: no input failed. Run such a target once more;
			# a real failure (a failing input is written) fails at once.
			if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"; then
				echo "--> $pkg $fn: the fuzz engine timed out without a failing input; once more"
				go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$FUZZTIME" "$pkg"
			else
				rm -f "$log"
				exit 1
			fi
		fi
		rm -f "$log"
	done
done
echo "==> all tests passed"
