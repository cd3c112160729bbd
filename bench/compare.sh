#!/usr/bin/env bash
# compare.sh: tai-sidecar side by side with redis-server (and a plain
# append+fdatasync loop) on the same machine, same shapes, one run.
#
#   bench/compare.sh                 # prints a markdown table of ratios
#   KEEP=DIR bench/compare.sh        # also keeps every raw result in DIR
#
# Shapes (value 256 B, keyspace $KEYS), each run against tai-sidecar and then
# its baseline, $ROUNDS times over, reporting medians:
#   get c=16            tai: get on keys written once         redis: GET, persistence off, keys loaded
#   get c=16 hot        the same after every key was overwritten $HOT times (both sides)
#   put c=16 fsync      tai: put (acked after fsync)          redis: SET, appendonly yes + appendfsync always
#   put c=1             tai: put                              append 256 B + fdatasync loop (tai-bench -fsync-baseline)
#   get c=1 p99         tai p99 against an absolute target (redis p99 shown for reference)
#   RSS                 sidecar VmRSS $RSS_SETTLE s after writing $RSS_KEYS keys of 256 B into a fresh store
#                       and going quiet
#
# Before every measurement, of tai or of a baseline, the script waits until
# tai-sidecar is quiet (it goes on compacting Badger's tables for seconds
# after a burst of puts, which would take CPU from whatever runs next).
#
# Everything runs against Unix sockets in a temporary directory, stops by
# itself and is cleaned up on exit. Needs redis-server and redis-benchmark
# (installed with apt-get when missing) and jq. Knobs (environment):
#   ROUNDS (3) N_GET (200000) N_GET1 (50000) N_PUT (50000) N_PUT1 (3000)
#   KEYS (10000) HOT (20) RSS_KEYS (1000000) RSS_SETTLE (5)
#   BENCH_DIR (TMPDIR or /var/tmp): where the temporary directory goes; it
#   should be on the disk under test, not tmpfs.
#   SIDECAR (unset): a tai-sidecar binary to measure instead of building one
#   from the tree (an earlier build, for a before/after comparison).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
N_GET=${N_GET:-200000}
N_GET1=${N_GET1:-50000}
N_PUT=${N_PUT:-50000}
N_PUT1=${N_PUT1:-3000}
KEYS=${KEYS:-10000}
HOT=${HOT:-20}
RSS_KEYS=${RSS_KEYS:-1000000}
RSS_SETTLE=${RSS_SETTLE:-5}
CONNS=16
SIZE=256

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-${TMPDIR:-/var/tmp}}
W=$(mktemp -d "$BENCH_DIR/tai-compare.XXXXXX")
PIDS=()

cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n "${KEEP:-}" ]]; then
		mkdir -p "$KEEP"
		cp "$W"/*.json "$W"/*.csv "$W"/*.log "$KEEP"/ 2>/dev/null || true
	fi
	# Sockets, stores and logs all live in $W.
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "compare: $*" >&2; }
die() { log "$*"; exit 1; }

# run prints a command, then runs it.
run() {
	log "\$ $*"
	"$@"
}

# spawn LOG CMD...: prints CMD, starts it in the background with its output
# in LOG, and records its pid in SPAWNED and PIDS.
SPAWNED=
spawn() {
	local out=$1
	shift
	log "\$ $* &"
	"$@" >>"$out" 2>&1 &
	SPAWNED=$!
	PIDS+=("$SPAWNED")
}

need_tools() {
	local missing=()
	command -v redis-server >/dev/null || missing+=(redis-server)
	command -v redis-benchmark >/dev/null || missing+=(redis-tools)
	command -v redis-cli >/dev/null || missing+=(redis-tools)
	command -v jq >/dev/null || missing+=(jq)
	if ((${#missing[@]})); then
		log "installing ${missing[*]}"
		[[ $(id -u) == 0 ]] || die "need root to install ${missing[*]}"
		apt-get update -qq >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
		# The package starts a system-wide instance; this script runs its own.
		systemctl disable --now redis-server >/dev/null 2>&1 || true
	fi
}

# wait_for CMD...: retries CMD for up to 20 s.
wait_for() {
	local deadline=$((SECONDS + 20))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.1
	done
}

# stop PID: terminates one process this script started and waits for it.
stop() {
	kill "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	local p keep=()
	for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# --- redis ------------------------------------------------------------------

# start_redis NAME ARGS...: a redis-server on $W/NAME.sock; sets SPAWNED.
start_redis() {
	local name=$1
	shift
	mkdir -p "$W/$name"
	spawn "$W/$name.log" redis-server --port 0 --unixsocket "$W/$name.sock" --unixsocketperm 700 \
		--dir "$W/$name" --save '' --daemonize no "$@"
	wait_for redis-cli -s "$W/$name.sock" ping || die "redis-server $name did not start (see $W/$name.log)"
}

# redis_load SOCK DB: SET key:000000000000 ... in DB for every key, named as
# redis-benchmark -r names them, with values of $SIZE bytes.
redis_load() {
	awk -v n="$KEYS" -v d="$SIZE" 'BEGIN {
		v = sprintf("%*s", d, ""); gsub(/ /, "x", v)
		for (i = 0; i < n; i++) printf "SET key:%012d %s\r\n", i, v
	}' | redis-cli -s "$1" -n "$2" --pipe >/dev/null
	local got
	got=$(redis-cli -s "$1" -n "$2" dbsize)
	[[ $got == "$KEYS" ]] || die "redis db $2 holds $got keys after loading $KEYS"
}

# redis_bench OUT SOCK DB TEST CONNS N: runs redis-benchmark, keeps its CSV as OUT.csv.
redis_bench() {
	local out=$1 sock=$2 db=$3 test=$4 c=$5 n=$6
	run redis-benchmark -s "$sock" --dbnum "$db" -c "$c" -n "$n" -d "$SIZE" -r "$KEYS" -t "$test" --csv >"$W/$out.csv"
}

# csv_field OUT FIELD: a column of the first result row of OUT.csv.
csv_field() {
	awk -F'","' -v want="$2" 'NR == 1 { for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); col[$i] = i } }
		NR == 2 { f = $(col[want]); gsub(/"/, "", f); print f; exit }' "$W/$1.csv"
}

# --- tai-sidecar --------------------------------------------------------------

TAI_SOCK=$W/tai.sock

# start_tai DATA_DIR: a tai-sidecar on $TAI_SOCK; sets SPAWNED.
start_tai() {
	rm -f "$TAI_SOCK"
	spawn "$W/tai-sidecar.log" "$W/tai-sidecar" serve --socket "$TAI_SOCK" --data-dir "$1" --log-level warn
	wait_for "$W/tai-bench" -socket "$TAI_SOCK" -c 1 -ops ping -n 1 -timeout 1s ||
		die "tai-sidecar did not start (see $W/tai-sidecar.log)"
}

# tai_bench OUT ARGS...: runs tai-bench -json, keeps its report as OUT.json;
# any failed request (NotFound included: every get here must hit) stops the script.
tai_bench() {
	local out=$1
	shift
	run "$W/tai-bench" -socket "$TAI_SOCK" -d "$SIZE" -json "$@" >"$W/$out.json"
	local errs
	errs=$(jf "$out" '.errors | to_entries | map("\(.key)=\(.value)") | join(" ")')
	[[ -z $errs ]] || die "tai-bench $out reported errors: $errs"
}

# jf OUT FILTER: a field of OUT.json.
jf() { jq -r "$2" "$W/$1.json"; }

# cpu_ticks PID: user+system CPU time a process has used, in clock ticks.
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# measure KEY PID REQUESTS CMD...: runs CMD and records the CPU time PID
# spent per request, in µs, under KEY.
measure() {
	local key=$1 pid=$2 n=$3 before after
	shift 3
	before=$(cpu_ticks "$pid")
	"$@"
	after=$(cpu_ticks "$pid")
	add "$key" "$(awk -v d="$((after - before))" -v t="$TICK" -v n="$n" 'BEGIN { printf "%.1f", d / t * 1e6 / n }')"
}

# quiesce PID: waits (up to 20 s) until PID used under 4% of a core over half
# a second. tai-sidecar goes on compacting Badger's tables for seconds after a
# burst of puts; that work would otherwise land in whichever shape runs next,
# for tai or for its baseline (the machine has 2 cores). Redis has none to do.
quiesce() {
	local pid=$1 start=$SECONDS before after
	while ((SECONDS - start < 20)); do
		before=$(cpu_ticks "$pid")
		sleep 0.5
		after=$(cpu_ticks "$pid")
		((after - before > TICK / 50)) || break
	done
	((SECONDS - start < 2)) || log "waited $((SECONDS - start)) s for tai-sidecar to go quiet"
}

# --- results --------------------------------------------------------------------

declare -A VALS # "shape side" -> space-separated values, one per round

add() { VALS["$1"]+="$2 "; }

median() {
	# shellcheck disable=SC2086 # word splitting wanted
	printf '%s\n' ${VALS["$1"]} | sort -g | awk '{ a[NR] = $1 }
		END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# --- run ----------------------------------------------------------------------

need_tools
cd "$ROOT"
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
DISK=$(df -T "$W" | awk 'NR == 2 { print $1 " (" $2 ")" }')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "machine: $(nproc) cores, $CPU_MODEL, $DISK, load $LOAD_START"
log "building into $W"
if [[ -n ${SIDECAR:-} ]]; then
	run cp "$SIDECAR" "$W/tai-sidecar"
else
	run go build -o "$W/tai-sidecar" ./cmd/tai-sidecar
fi
run go build -o "$W/tai-bench" ./cmd/tai-bench

# All servers run at once; each shape runs against tai and then its baseline,
# ROUNDS times, so drifting load from other work on the machine hits both.
start_tai "$W/tai-data"
TAI_PID=$SPAWNED
start_redis redis-mem --appendonly no
R_MEM=$W/redis-mem.sock
R_MEM_PID=$SPAWNED
start_redis redis-aof --appendonly yes --appendfsync always
R_AOF=$W/redis-aof.sock
R_AOF_PID=$SPAWNED

# Setup. tai: governor "fresh" written once, governor "hot" overwritten $HOT
# times per key. redis: db 0 loaded once, db 1 loaded and then SET $HOT times
# the keyspace at random.
tai_bench setup-fresh -c $CONNS -P 8 -keys "$KEYS" -governor fresh -ops get -warmup -n 1
tai_bench setup-hot -c $CONNS -P 8 -keys "$KEYS" -governor hot -ops get -hot "$HOT" -n 1
redis_load "$R_MEM" 0
redis_load "$R_MEM" 1
redis_bench setup-redis-hot "$R_MEM" 1 set $CONNS "$((KEYS * HOT))"

for r in $(seq 1 "$ROUNDS"); do
	log "round $r of $ROUNDS (load $(cut -d' ' -f1-3 /proc/loadavg))"
	quiesce "$TAI_PID"
	measure "get16 taicpu" "$TAI_PID" "$N_GET" tai_bench "get16-$r" -c $CONNS -keys "$KEYS" -governor fresh -ops get -n "$N_GET"
	quiesce "$TAI_PID"
	measure "get16 basecpu" "$R_MEM_PID" "$N_GET" redis_bench "rget16-$r" "$R_MEM" 0 get $CONNS "$N_GET"
	add "get16 tai" "$(jf "get16-$r" .ops_per_sec)"
	add "get16 base" "$(csv_field "rget16-$r" rps)"

	quiesce "$TAI_PID"
	measure "get16hot taicpu" "$TAI_PID" "$N_GET" tai_bench "get16hot-$r" -c $CONNS -keys "$KEYS" -governor hot -ops get -n "$N_GET"
	quiesce "$TAI_PID"
	measure "get16hot basecpu" "$R_MEM_PID" "$N_GET" redis_bench "rget16hot-$r" "$R_MEM" 1 get $CONNS "$N_GET"
	add "get16hot tai" "$(jf "get16hot-$r" .ops_per_sec)"
	add "get16hot base" "$(csv_field "rget16hot-$r" rps)"

	quiesce "$TAI_PID"
	measure "put16 taicpu" "$TAI_PID" "$N_PUT" tai_bench "put16-$r" -c $CONNS -keys "$KEYS" -governor put16 -ops put -n "$N_PUT"
	quiesce "$TAI_PID"
	measure "put16 basecpu" "$R_AOF_PID" "$N_PUT" redis_bench "rset16-$r" "$R_AOF" 0 set $CONNS "$N_PUT"
	add "put16 tai" "$(jf "put16-$r" .ops_per_sec)"
	add "put16 base" "$(csv_field "rset16-$r" rps)"

	quiesce "$TAI_PID"
	tai_bench "put1-$r" -c 1 -keys "$KEYS" -governor put1 -ops put -n "$N_PUT1"
	quiesce "$TAI_PID"
	run "$W/tai-bench" -fsync-baseline "$W/fsync.dat" -d "$SIZE" -n "$N_PUT1" -json >"$W/fsync-$r.json"
	rm -f "$W/fsync.dat"
	quiesce "$TAI_PID"
	redis_bench "rset1-$r" "$R_AOF" 0 set 1 "$N_PUT1"
	add "put1 tai" "$(jf "put1-$r" .ops_per_sec)"
	add "put1 base" "$(jf "fsync-$r" .ops_per_sec)"
	add "put1 redis" "$(csv_field "rset1-$r" rps)"

	quiesce "$TAI_PID"
	tai_bench "get1-$r" -c 1 -keys "$KEYS" -governor fresh -ops get -n "$N_GET1"
	quiesce "$TAI_PID"
	redis_bench "rget1-$r" "$R_MEM" 0 get 1 "$N_GET1"
	add "get1p99 tai" "$(jf "get1-$r" .per_op.get.p99_us)"
	add "get1p99 base" "$(awk -v v="$(csv_field "rget1-$r" p99_latency_ms)" 'BEGIN { print v * 1000 }')"
done
STATS_MAIN=$("$W/tai-sidecar" --socket "$TAI_SOCK" stats)
stop "$TAI_PID"

# RSS after RSS_KEYS puts into a fresh store, in a fresh process.
start_tai "$W/tai-rss"
TAI_PID=$SPAWNED
tai_bench rss -c $CONNS -P 32 -keys "$RSS_KEYS" -governor rss -ops put -seq -n "$RSS_KEYS"
status() { awk -v f="$1:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$TAI_PID/status"; }
RSS_NOW=$(status VmRSS)
# The sidecar hands its free heap back once allocation stops for a 2 s
# interval (cmd/tai-sidecar/memidle.go), which Badger's compactions can put
# off for seconds after the last put: the figure is taken once the sidecar
# is quiet and RSS_SETTLE seconds more have passed, with the one right after
# the last put beside it.
RSS_QUIET=$SECONDS
quiesce "$TAI_PID"
RSS_QUIET=$((SECONDS - RSS_QUIET))
sleep "$RSS_SETTLE"
RSS=$(status VmRSS) HWM=$(status VmHWM) RSS_ANON=$(status RssAnon) RSS_FILE=$(status RssFile)
STATS_RSS=$("$W/tai-sidecar" --socket "$TAI_SOCK" stats)
stop "$TAI_PID"
DATA_MIB=$(du -sm "$W/tai-rss" | cut -f1)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
log "done (load $LOAD_END)"

# --- report -------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
meets() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v < t; print ok ? "yes" : "**no**" }'; }
num() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
row() { printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$@"; }

# throughput_row SHAPE KEY BASELINE_NAME TARGET
throughput_row() {
	local t b x
	t=$(median "$2 tai")
	b=$(median "$2 base")
	x=$(ratio "$t" "$b")
	row "$1" "$(num "$t")" "$3" "$(num "$b")" "$x" ">= ${4}x" "$(meets "$x" ">=" "$4")"
}

echo
echo "Machine: $(nproc) cores, $CPU_MODEL; $(uname -sr); data on $DISK;" \
	"load average $LOAD_START at the start, $LOAD_END at the end; $(redis-server --version | cut -d' ' -f1-3)."
echo "Medians of $ROUNDS rounds; value size $SIZE B, keyspace $KEYS."
echo
echo "| shape | tai | baseline | baseline value | ratio tai/baseline | target | met |"
echo "|---|---:|---|---:|---:|---|---|"
throughput_row "get c=16, fresh keys (ops/s)" get16 "redis GET" 1.0
throughput_row "get c=16, after $HOT overwrites/key (ops/s)" get16hot "redis GET after SETs" 1.0
throughput_row "put c=16, fsync (ops/s)" put16 "redis SET, appendfsync always" 1.0
throughput_row "put c=1 (ops/s)" put1 "append $SIZE B + fdatasync loop" 0.8
t=$(median "put1 tai")
b=$(median "put1 redis")
row "put c=1 (ops/s), for reference" "$(num "$t")" "redis SET c=1, appendfsync always" "$(num "$b")" "$(ratio "$t" "$b")" "-" "-"
t=$(median "get1p99 tai")
b=$(median "get1p99 base")
row "get c=1 p99 (µs)" "$(num "$t")" "redis GET c=1 p99" "$(num "$b")" "$(ratio "$t" "$b")" "< 150 µs" "$(meets "$t" "<" 150)"
row "sidecar RSS after $RSS_KEYS puts (MiB)" "$RSS (peak $HWM)" "-" "-" "-" "< 150 MiB" "$(meets "$RSS" "<" 150)"
echo
echo "RSS detail (MiB): $RSS_SETTLE s after the sidecar went quiet ($RSS_QUIET s after the last put); right after it $RSS_NOW;" \
	"anonymous $RSS_ANON, file-backed (mmapped tables and logs) $RSS_FILE;" \
	"store on disk $DATA_MIB MiB ($(jq -r '"LSM \(.lsm_bytes / 1048576 | floor) MiB, value log \(.vlog_bytes / 1048576 | floor) MiB, \(.states) states"' <<<"$STATS_RSS"))."
echo "Group commit: $(jq -r '"\(.commit_writes) writes in \(.commits) commits, \(.commit_writes / .commits * 10 | floor / 10) per commit"' <<<"$STATS_MAIN") in the main store;" \
	"$(jq -r '"\(.commit_writes / .commits | floor) per commit"' <<<"$STATS_RSS") in the RSS run."
echo
echo "Server CPU per request (µs, user+system, median of rounds):"
for k in get16 get16hot put16; do
	printf '  %-9s tai %s, baseline %s\n' "$k" "$(median "$k taicpu")" "$(median "$k basecpu")"
done

echo
echo "Per round (ops/s; get c=1: p99 µs):"
for k in "get16 tai" "get16 base" "get16hot tai" "get16hot base" "put16 tai" "put16 base" \
	"put1 tai" "put1 base" "put1 redis" "get1p99 tai" "get1p99 base"; do
	printf '  %-14s %s\n' "$k" "$(for v in ${VALS[$k]}; do num "$v"; printf ' '; done)"
done
echo
echo "Latency, last round (µs: p50 / p99 / p99.9):"
for f in get16 get16hot put16 put1 get1; do
	jf "$f-$ROUNDS" '"  tai \(.ops) c=\(.conns) gov=\(.governor): " + (.per_op | to_entries | map("\(.value.p50_us | floor) / \(.value.p99_us | floor) / \(.value.p999_us | floor)") | join(", "))'
done
jf "fsync-$ROUNDS" '"  append+fdatasync: " + (.per_op | to_entries | map("\(.value.p50_us | floor) / \(.value.p99_us | floor) / \(.value.p999_us | floor)") | join(", "))'
for f in rget16 rget16hot rset16 rset1 rget1; do
	echo "  redis $f: $(awk -v a="$(csv_field "$f-$ROUNDS" p50_latency_ms)" -v b="$(csv_field "$f-$ROUNDS" p99_latency_ms)" \
		'BEGIN { printf "%.0f / %.0f (p50 / p99)", a * 1000, b * 1000 }')"
done
echo
echo "Setup: tai $(jf setup-fresh '.setup[] | "\(.name) \(.ops_per_sec | floor) puts/s"'), $(jf setup-hot '.setup[] | "\(.name) \(.ops_per_sec | floor) puts/s"');" \
	"RSS run $(jf rss '.ops_per_sec | floor') puts/s (c=$CONNS P=32, p99 $(jf rss '.per_op.put.p99_us | floor') µs)."
