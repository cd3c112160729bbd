#!/usr/bin/env bash
# Starts and stops Google's Firestore emulator for tests.
#
#   scripts/emulator.sh run CMD [ARG...]   run CMD with an emulator, stop it afterwards
#   scripts/emulator.sh start STATE_DIR    start one in the background; prints the
#                                          export line for FIRESTORE_EMULATOR_HOST
#   scripts/emulator.sh stop STATE_DIR     stop the one started with that STATE_DIR
#
# Or source it and call emulator_start / emulator_stop (scripts/test.sh does):
# emulator_start exports FIRESTORE_EMULATOR_HOST and sets EMULATOR_PID.
#
# The emulator comes from the Debian package google-cloud-cli-firestore-emulator
# (Google's Cloud SDK apt repository). It is run with java directly, on
# 127.0.0.1 and a free port, never through gcloud (stopping gcloud would leave
# java running). Its log goes to STATE_DIR/emulator.log (or a temporary file).

EMULATOR_PKG=google-cloud-cli-firestore-emulator
EMULATOR_CLASS=com.google.cloud.datastore.emulator.firestore.CloudFirestore
# How long to wait for the emulator to answer, in tenths of a second.
EMULATOR_WAIT_TENTHS="${EMULATOR_WAIT_TENTHS:-600}"

emulator_missing() {
	cat >&2 <<EOF
the Firestore emulator is missing: install Debian package $EMULATOR_PKG from Google's Cloud SDK apt repository:

    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \\
      | gpg --dearmor -o /usr/share/keyrings/cloud.google.gpg
    echo 'deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main' \\
      > /etc/apt/sources.list.d/google-cloud-sdk.list
    apt-get update && apt-get install -y $EMULATOR_PKG default-jre-headless

(it also needs java 11 or later on PATH)
EOF
	return 1
}

# emulator_jar prints the path of the emulator's jar.
emulator_jar() {
	local jar
	jar="$(dpkg -L "$EMULATOR_PKG" 2>/dev/null | grep '\.jar$' | head -n1)"
	if [ -z "$jar" ] || [ ! -f "$jar" ]; then
		emulator_missing
		return 1
	fi
	if ! command -v java >/dev/null 2>&1; then
		echo "the Firestore emulator needs java (11 or later): apt-get install -y default-jre-headless" >&2
		return 1
	fi
	printf '%s\n' "$jar"
}

# emulator_port_free PORT succeeds when nothing listens on 127.0.0.1:PORT.
emulator_port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# emulator_start [LOG_FILE]: starts the emulator on a free port, waits until it
# answers, exports FIRESTORE_EMULATOR_HOST and sets EMULATOR_PID.
emulator_start() {
	local log="${1:-}" jar port try i
	jar="$(emulator_jar)" || return 1
	if [ -z "$log" ]; then
		log="$(mktemp -t firestore-emulator.XXXXXX.log)"
	fi
	for try in 1 2 3 4 5; do
		port=$((20000 + RANDOM % 40000))
		emulator_port_free "$port" || continue
		java -Xms64m -Xmx1g -cp "$jar" "$EMULATOR_CLASS" --host=127.0.0.1 --port="$port" >"$log" 2>&1 &
		EMULATOR_PID=$!
		for ((i = 0; i < EMULATOR_WAIT_TENTHS; i++)); do
			if ! kill -0 "$EMULATOR_PID" 2>/dev/null; then
				break # exited: port taken after all, or broken; maybe try again
			fi
			if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null; then
				export FIRESTORE_EMULATOR_HOST="127.0.0.1:$port"
				export EMULATOR_PID
				return 0
			fi
			sleep 0.1
		done
		if kill -0 "$EMULATOR_PID" 2>/dev/null; then
			kill "$EMULATOR_PID" 2>/dev/null
			wait "$EMULATOR_PID" 2>/dev/null
			echo "the Firestore emulator did not answer on 127.0.0.1:$port within $((EMULATOR_WAIT_TENTHS / 10))s; log: $log" >&2
			tail -n 20 "$log" >&2
			EMULATOR_PID=
			return 1
		fi
		EMULATOR_PID=
	done
	echo "could not start the Firestore emulator; last log: $log" >&2
	tail -n 20 "$log" >&2
	return 1
}

# emulator_stop stops the emulator started by emulator_start, by its PID.
emulator_stop() {
	local pid="${1:-${EMULATOR_PID:-}}"
	[ -n "$pid" ] || return 0
	if kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	EMULATOR_PID=
}

emulator_main() {
	set -euo pipefail
	case "${1:-}" in
	run)
		shift
		[ $# -gt 0 ] || { echo "usage: $0 run CMD [ARG...]" >&2; exit 2; }
		emulator_start
		trap emulator_stop EXIT
		echo "Firestore emulator on $FIRESTORE_EMULATOR_HOST (pid $EMULATOR_PID)" >&2
		"$@"
		;;
	start)
		local dir="${2:?usage: $0 start STATE_DIR}"
		mkdir -p "$dir"
		emulator_start "$dir/emulator.log"
		echo "$EMULATOR_PID" >"$dir/emulator.pid"
		echo "$FIRESTORE_EMULATOR_HOST" >"$dir/emulator.host"
		# The background java must outlive this script.
		disown "$EMULATOR_PID" 2>/dev/null || true
		echo "export FIRESTORE_EMULATOR_HOST=$FIRESTORE_EMULATOR_HOST"
		;;
	stop)
		local dir="${2:?usage: $0 stop STATE_DIR}"
		[ -f "$dir/emulator.pid" ] || { echo "no emulator.pid in $dir" >&2; exit 1; }
		emulator_stop "$(cat "$dir/emulator.pid")"
		rm -f "$dir/emulator.pid" "$dir/emulator.host"
		;;
	*)
		echo "usage: $0 run CMD [ARG...] | start STATE_DIR | stop STATE_DIR" >&2
		exit 2
		;;
	esac
}

# Run as a command unless sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	emulator_main "$@"
fi
