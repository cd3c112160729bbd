#!/usr/bin/python3
"""Example app for the Kubernetes manifests: a visit counter kept in tai-sidecar.

Every interval it reads the counter state example/visits-HOSTNAME, adds one
with an optimistic-concurrency write (if_version), and prints the new value.
It talks to the sidecar only through the Unix socket named by TAI_SOCKET,
using examples/python/tai_client.py.

    TAI_SOCKET=/run/tai/tai.sock app.py [--iterations N] [--interval SECONDS]

--iterations 0 (the default) runs until SIGTERM.
"""

import argparse
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tai_client import NotFound, TaiClient, VersionConflict  # noqa: E402

GOVERNOR = "example"


def bump(tai, state):
    """Adds one to the counter and returns the new value, retrying on conflict."""
    while True:
        try:
            rec = tai.get(GOVERNOR, state)
            count, version = rec.value, rec.version
        except NotFound:
            count, version = 0, None
        try:
            if version is None:
                tai.put(GOVERNOR, state, count + 1, if_absent=True, actor="example-app", reason="visit")
            else:
                tai.put(GOVERNOR, state, count + 1, if_version=version, actor="example-app", reason="visit")
            return count + 1
        except VersionConflict:
            continue  # someone else wrote in between: read again


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=0, help="stop after N visits (0: run until SIGTERM)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between visits")
    args = p.parse_args(argv)
    if args.iterations < 0 or args.interval < 0:
        p.error("--iterations and --interval must not be negative")

    path = os.environ.get("TAI_SOCKET", "/run/tai/tai.sock")
    state = "visits-" + socket.gethostname()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

    with TaiClient(path, client_name="tai-example-app/0.1") as tai:
        print(f"connected to {tai.server.get('server')} (node {tai.server.get('node_id')}) at {path}", flush=True)
        n = 0
        while not stop and (args.iterations == 0 or n < args.iterations):
            if n:
                time.sleep(args.interval)
            count = bump(tai, state)
            n += 1
            print(f"{GOVERNOR}/{state} = {count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
