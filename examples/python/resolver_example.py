#!/usr/bin/python3
"""An app that decides the conflicts of one governor for tai-sidecar.

    /usr/bin/python3 resolver_example.py /path/to/tai.sock GOVERNOR [DEADLINE_MS]

The sidecar must delegate the governor's conflicts to an app, e.g.
`tai-sidecar serve --resolvers 'counters=app:lww' ...`. The documents are
counters, {"n": <int>}: when two sidecars add to one counter concurrently,
this app keeps both increments (base + local increment + remote increment).
Anything else (a deletion, an unknown base, another document) it declines,
and the sidecar's fallback resolver (lww above) decides.

It prints "registered <deadline_ms>" once the sidecar has registered it, then
one line per conflict, and runs until the sidecar closes the connection or
the process is stopped.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tai_client import TaiClient, TaiError, serve_conflicts  # noqa: E402


def counter(side):
    """The n of a side or base, or None when it is not a counter."""
    if side.get("deleted") or side.get("version", 0) == 0:
        return 0  # absent: a counter at 0
    value = side.get("value")
    if isinstance(value, dict) and isinstance(value.get("n"), int) and not isinstance(value.get("n"), bool):
        return value["n"]
    return None


def decide(conflict):
    base = conflict.get("base")
    local, remote = conflict["local"], conflict["remote"]
    if base is None:
        return "fallback", None, "the base is unknown: cannot tell the increments"
    if local.get("deleted") or remote.get("deleted"):
        return "fallback", None, "a counter was deleted"
    b, l, r = counter(base), counter(local), counter(remote)
    if None in (b, l, r):
        return "fallback", None, "not a counter"
    return "value", {"n": b + (l - b) + (r - b)}, "summed by python"


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    socket_path, governor = sys.argv[1], sys.argv[2]
    deadline_ms = int(sys.argv[3]) if len(sys.argv) == 4 else None

    def registered(reply):
        print(f"registered {reply['resolver']['deadline_ms']}", flush=True)

    def answered(conflict):
        choice, value, reason = decide(conflict)
        print(f"conflict {conflict['id']} on {conflict['governor']}/{conflict['state']}: {choice} {value} ({reason})",
              flush=True)
        return choice, value, reason

    def refused(conflict, error):
        print(f"answer to conflict {conflict['id']} refused: {error}", flush=True)

    try:
        with TaiClient(socket_path, client_name="resolver-example/0.1") as tai:
            serve_conflicts(tai, governor, answered, deadline_ms, registered, refused)
    except TaiError as e:  # e.g. the sidecar does not delegate this governor's conflicts
        print(f"resolver_register: {e}", file=sys.stderr)
        return 1
    except ConnectionError as e:
        print(f"connection ended: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # no sidecar at socket_path
        print(f"cannot reach the sidecar at {socket_path}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
