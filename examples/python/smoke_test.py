#!/usr/bin/python3
"""Exercises a running tai-sidecar through tai_client.

    /usr/bin/python3 smoke_test.py /path/to/tai.sock

Every check uses its own governor (named after this run), so the script can run
again and again against the same sidecar. It prints one line per check and a
summary, and exits 1 if any check failed.
"""

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tai_client import (  # noqa: E402
    InvalidArgument,
    NotFound,
    TaiClient,
    TaiError,
    TooLarge,
    UnknownOp,
    VersionConflict,
    delete_item,
    put_item,
    txn_check,
    txn_delete,
    txn_put,
)

RUN = f"{os.getpid()}-{time.time_ns()}"


def gov(name):
    return f"smoke-{RUN}-{name}"


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def expect_error(cls, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except cls as e:
        return e
    except TaiError as e:
        raise Failure(f"got {type(e).__name__} {e}, want {cls.__name__}") from None
    raise Failure(f"no error, want {cls.__name__}")


# ---------------------------------------------------------------------------
# Checks. Each takes a connected client.


def check_hello(c):
    s = c.server
    check(s["version"] == 1, f"hello version {s['version']}")
    check(s["max_frame"] > 0 and s["max_value"] > 0 and s["max_batch"] > 0, f"hello limits {s}")
    check(s.get("node_id"), "hello has no node_id")


def check_ping(c):
    c.ping()


def check_put_get(c):
    g = gov("putget")
    value = {"items": [1, 2, 3], "note": "gift", "total": 42.5, "paid": False, "extra": None}
    rec = c.put(g, "cart", value, actor="smoke", reason="first write")
    check(rec.version == 1, f"first put version {rec.version}, want 1")
    check(rec.governor == g and rec.state == "cart", f"put record names {rec.governor}/{rec.state}")
    check(rec.change.get("actor") == "smoke", f"put change {rec.change}")
    got = c.get(g, "cart")
    check(got.value == value, f"get value {got.value!r}, want {value!r}")
    check(got.version == 1, f"get version {got.version}")
    check(got.change.get("reason") == "first write", f"get change {got.change}")
    check(got.updated_at > 0, f"updated_at {got.updated_at}")
    check(not got.deleted, "live record marked deleted")
    rec = c.put(g, "cart", {"items": []})
    check(rec.version == 2, f"second put version {rec.version}, want 2")
    check(c.get(g, "cart").value == {"items": []}, "second value not returned")


def check_consistency_local(c):
    g = gov("local")
    c.put(g, "s", 1)
    rec = c.get(g, "s", consistency="local")
    check(rec.value == 1, f"local read {rec.value!r}")
    check(rec.from_cache, "local read not from_cache")


def check_version_conflict(c):
    g = gov("conflict")
    c.put(g, "s", "a")
    c.put(g, "s", "b")  # version 2
    e = expect_error(VersionConflict, c.put, g, "s", "c", if_version=1)
    check(e.expected == 1 and e.actual == 2, f"expected/actual {e.expected}/{e.actual}, want 1/2")
    check(not e.retryable, "VersionConflict marked retryable")
    check(e.governor == g and e.state == "s", f"error names {e.governor}/{e.state}")
    check(c.get(g, "s").value == "b", "failed put changed the value")
    rec = c.put(g, "s", "c", if_version=2)
    check(rec.version == 3, f"put if_version=2 gave version {rec.version}")
    e = expect_error(VersionConflict, c.put, g, "new", 1, if_version=5)
    check(e.expected == 5 and e.actual == 0, f"missing state: expected/actual {e.expected}/{e.actual}, want 5/0")


def check_if_absent(c):
    g = gov("absent")
    rec = c.put(g, "s", "first", if_absent=True)
    check(rec.version == 1, f"if_absent create version {rec.version}")
    e = expect_error(VersionConflict, c.put, g, "s", "second", if_absent=True)
    check(e.actual == 1, f"if_absent conflict actual {e.actual}, want 1")
    check(c.get(g, "s").value == "first", "if_absent overwrote an existing state")
    rec = c.put(g, "t", "x", if_version=0)
    check(rec.version == 1, f"if_version=0 create version {rec.version}")


def check_delete(c):
    g = gov("delete")
    c.put(g, "s", 1)
    c.put(g, "s", 2)
    e = expect_error(VersionConflict, c.delete, g, "s", if_version=1)
    check(e.expected == 1 and e.actual == 2, f"delete conflict {e.expected}/{e.actual}")
    tomb = c.delete(g, "s", if_version=2, actor="smoke", reason="cleanup")
    check(tomb.deleted, "delete reply is not a tombstone")
    check(tomb.version == 3, f"tombstone version {tomb.version}, want 3")
    e = expect_error(NotFound, c.get, g, "s")
    check(e.governor == g and e.state == "s", f"NotFound names {e.governor}/{e.state}")
    expect_error(NotFound, c.delete, g, "s")
    rec = c.put(g, "s", "again", if_absent=True)
    check(rec.version == 4, f"re-create after delete version {rec.version}, want 4 (versions never go back)")


def check_pipeline(c):
    g = gov("pipeline")
    n = 200
    # 200 puts in flight at once, then their replies, matched by id.
    put_ids = [c.send("put", {"governor": g, "state": f"s{i:03d}", "value": {"i": i}}) for i in range(n)]
    for i, reply in enumerate(c.recv_all(put_ids)):
        check(not isinstance(reply, TaiError), f"put {i}: {reply}")
        check(reply["id"] == put_ids[i], f"put reply id {reply['id']}, want {put_ids[i]}")
        check(reply["record"]["version"] == 1, f"put {i}: version {reply['record']['version']}")

    # 200 gets of those states, in flight together with 200 puts of other
    # states: reads and writes finish in any order, and each reply must
    # still find its request. (A read is not ordered after a write whose
    # reply has not arrived, hence the separate states.)
    ids = []
    for i in range(n):
        ids.append(("get", i, c.send("get", {"governor": g, "state": f"s{i:03d}"})))
        ids.append(("put", i, c.send("put", {"governor": g, "state": f"t{i:03d}", "value": [i]})))
    check(len({rid for _, _, rid in ids} | set(put_ids)) == 3 * n, "request ids are not unique")
    for (op, i, rid), reply in zip(ids, c.recv_all([rid for _, _, rid in ids])):
        check(not isinstance(reply, TaiError), f"{op} {i}: {reply}")
        check(reply["id"] == rid, f"{op} {i}: reply id {reply['id']}, want {rid}")
        rec = reply["record"]
        if op == "get":
            check(rec["state"] == f"s{i:03d}" and rec["value"] == {"i": i}, f"get {i}: {rec}")
        else:
            check(rec["state"] == f"t{i:03d}" and rec["version"] == 1, f"put {i}: {rec}")

    # The same through the pipeline() context, errors included.
    with c.pipeline() as p:
        gets = [p.get(g, f"s{i:03d}") for i in range(n)]
        missing = p.get(g, "nope")
    for i, call in enumerate(gets):
        check(call.result().value == {"i": i}, f"pipeline get {i}")
    check(isinstance(missing.error(), NotFound), f"pipelined missing get: {missing.error()!r}")


def check_batch(c):
    g = gov("batch")
    c.put(g, "old", "to delete")
    recs = c.batch_put(
        [put_item(g, "a", 1, if_absent=True), put_item(g, "b", b"\x00\x01"), delete_item(g, "old")],
        actor="smoke",
        reason="batch",
    )
    check(len(recs) == 3, f"batch_put returned {len(recs)} records")
    check([r.version for r in recs] == [1, 1, 2], f"batch_put versions {[r.version for r in recs]}")
    check(recs[2].deleted, "batch delete not a tombstone")
    got = c.batch_get([(g, "a"), (g, "missing"), (g, "b"), (g, "old")])
    check(len(got) == 4, f"batch_get returned {len(got)} entries")
    check(got[0] is not None and got[0].value == 1, f"batch_get a: {got[0]}")
    check(got[1] is None, f"batch_get missing: {got[1]}")
    check(got[2] is not None and got[2].value == b"\x00\x01", f"batch_get b: {got[2]}")
    check(got[3] is None, f"batch_get deleted: {got[3]}")

    # All or nothing: one failing precondition leaves every item untouched.
    e = expect_error(
        VersionConflict,
        c.batch_put,
        [put_item(g, "a", 2, if_version=1), put_item(g, "c", 3), put_item(g, "b", 9, if_version=7)],
    )
    check(e.state == "b" and e.expected == 7 and e.actual == 1, f"batch conflict {e} {e.details}")
    got = c.batch_get([(g, "a"), (g, "c")])
    check(got[0].version == 1 and got[0].value == 1, "failed batch changed a")
    check(got[1] is None, "failed batch created c")


def check_txn(c):
    g = gov("txn")
    c.put(g, "alice", 100)
    c.put(g, "bob", 20)
    c.put(g, "closed", True)
    res = c.txn([txn_put(g, "alice", 70, if_version=1), txn_put(g, "bob", 50, if_version=1),
                 txn_delete(g, "closed"), txn_check(g, "audit", exists=False)],
                actor="teller", reason="transfer 30")
    check([r.version for r in res.records] == [2, 2, 2], f"txn versions {[r.version for r in res.records]}")
    check(res.id and res.attempts == 1, f"txn id {res.id!r}, attempts {res.attempts}")
    check(c.get(g, "bob").value == 50 and c.get(g, "alice").change.get("actor") == "teller", "txn not applied")
    # A failed precondition: nothing is written, and the error names the state.
    e = expect_error(VersionConflict, c.txn, [txn_put(g, "alice", 0, if_version=2), txn_put(g, "bob", 0, if_version=1)])
    check(e.state == "bob" and e.expected == 1 and e.actual == 2, f"conflict on {e.state}: {e.expected}/{e.actual}")
    check(c.get(g, "alice").value == 70, "a failed txn wrote alice")
    e = expect_error(VersionConflict, c.txn, [txn_put(g, "x", 1), txn_check(g, "alice", exists=False)])
    expect_error(NotFound, c.get, g, "x")
    # The transaction log has both outcomes.
    entries, _ = c.txlog(governor=g)
    outcomes = sorted(en["outcome"] for en in entries)
    check(outcomes == ["committed", "failed", "failed"], f"txlog outcomes {outcomes}")
    committed, _ = c.txlog(outcome="committed", governor=g)
    check(len(committed) == 1 and committed[0]["id"] == res.id and committed[0]["actor"] == "teller",
          f"committed entries {committed}")


def check_list(c):
    g = gov("list")
    names = [f"item-{i:02d}" for i in range(23)]
    c.batch_put([put_item(g, n, i) for i, n in enumerate(names)])
    c.put(g, "other", 0)
    c.delete(g, "item-05")
    want = [n for n in names if n != "item-05"]

    seen, cursor, pages = [], "", 0
    while True:
        recs, cursor = c.list(g, prefix="item-", limit=5, cursor=cursor)
        pages += 1
        check(len(recs) <= 5, f"page of {len(recs)} records with limit 5")
        seen += [r.state for r in recs]
        if not cursor:
            break
        check(pages < 20, "list does not end")
    check(seen == want, f"listed {seen}, want {want}")
    check(pages >= 5, f"{len(want)} states in {pages} pages of 5")
    recs, cursor = c.list(g)
    check(len(recs) == 23 and cursor == "", f"unpaged list: {len(recs)} records, cursor {cursor!r}")
    values = {r.state: r.value for r in c.list_all(g, prefix="item-", page_size=4)}
    check(values.get("item-22") == 22 and len(values) == 22, "list_all values")


def check_unicode(c):
    g = gov("ünïcødé-名前")
    states = ["état", "状態-🚀", "emoji 😀 and spaces", "a" * 400 + "é"]
    for i, s in enumerate(states):
        c.put(g, s, {"ключ": s, "i": i})
    for i, s in enumerate(states):
        rec = c.get(g, s)
        check(rec.state == s and rec.governor == g, f"unicode names {rec.governor!r}/{rec.state!r}")
        check(rec.value == {"ключ": s, "i": i}, f"unicode value {rec.value!r}")
    listed = [r.state for r in c.list_all(g)]
    check(sorted(listed, key=lambda s: s.encode()) == listed, f"list order not bytewise: {listed}")
    check(set(listed) == set(states), f"listed {listed}")


def check_binary(c):
    g = gov("binary")
    blob = bytes(range(256)) * 4
    c.put(g, "blob", blob)
    rec = c.get(g, "blob")
    check(isinstance(rec.value, bytes), f"binary value came back as {type(rec.value).__name__}")
    check(rec.value == blob, "binary value changed")
    doc = {"raw": b"\xff\x00", "text": "\xff\x00", "nested": [b"", {"k": b"v"}], 7: "int key"}
    c.put(g, "doc", doc)
    got = c.get(g, "doc").value
    check(got == doc, f"mixed document {got!r}, want {doc!r}")
    check(isinstance(got["text"], str) and isinstance(got["raw"], bytes), "str and bin not kept apart")


def check_invalid(c):
    g = gov("invalid")
    for bad in ["", "a/b", ".", "..", "__x__", "x" * 1501]:
        e = expect_error(InvalidArgument, c.put, g, bad, 1)
        check(not e.retryable, "InvalidArgument marked retryable")
    expect_error(InvalidArgument, c.put, "__bad__", "s", 1)
    e = expect_error(InvalidArgument, _put_without_value, c, g)
    check(e.details.get("field") == "value", f"missing value: field {e.details.get('field')!r}")
    e = expect_error(UnknownOp, lambda: c.recv(c.send("frobnicate", {})))
    check(e.code == "UnknownOp", e.code)
    c.ping()  # the connection survives bad requests


def _put_without_value(c, g):
    c.recv(c.send("put", {"governor": g, "state": "s"}))


def check_too_large(c):
    g = gov("large")
    limit = c.server["max_value"]
    e = expect_error(TooLarge, c.put, g, "big", b"x" * (limit + 1))
    check(not e.retryable, "TooLarge marked retryable")
    expect_error(NotFound, c.get, g, "big")
    rec = c.put(g, "fits", b"x" * (limit - 16))
    check(rec.version == 1, "a value just under the limit was refused")
    e = expect_error(TooLarge, c.batch_get, [(g, f"s{i}") for i in range(c.server["max_batch"] + 1)])
    check(e.details.get("limit") == c.server["max_batch"], f"batch limit {e.details}")
    c.ping()


def check_stats(c):
    s = c.stats()
    check(s.get("node_id") == c.server["node_id"], f"stats node_id {s.get('node_id')}")
    check(s.get("states", 0) > 0, f"stats states {s.get('states')}")
    check(sum((s.get("requests") or {}).values()) > 0, f"stats requests {s.get('requests')}")


CHECKS = [
    check_hello,
    check_ping,
    check_put_get,
    check_consistency_local,
    check_version_conflict,
    check_if_absent,
    check_delete,
    check_pipeline,
    check_batch,
    check_txn,
    check_list,
    check_unicode,
    check_binary,
    check_invalid,
    check_too_large,
    check_stats,
]


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} SOCKET", file=sys.stderr)
        return 2
    passed = failed = 0
    for fn in CHECKS:
        name = fn.__name__.removeprefix("check_")
        try:
            with TaiClient(argv[1], client_name="tai-python-smoke") as c:
                fn(c)
        except Exception as e:  # report every failure, then go on
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            if not isinstance(e, Failure):
                traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
