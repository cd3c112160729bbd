"""A small client for tai-sidecar's wire protocol (docs/protocol.md).

It needs only the standard library and msgpack (Debian: python3-msgpack).

    from tai_client import TaiClient, NotFound, VersionConflict

    with TaiClient("/run/tai/tai.sock") as tai:
        rec = tai.put("shop", "cart-42", {"items": 3}, actor="web", reason="add item")
        rec = tai.get("shop", "cart-42")          # rec.value == {"items": 3}
        tai.put("shop", "cart-42", {"items": 4}, if_version=rec.version)

        with tai.pipeline() as p:                  # many requests in flight
            calls = [p.get("shop", f"cart-{i}") for i in range(100)]
        values = [c.result().value for c in calls]

A TaiClient owns one connection and is not safe for use by several threads at
once; open one client per thread.
"""

import collections
import dataclasses
import itertools
import select
import socket
import struct
import time

import msgpack

__all__ = [
    "TaiClient",
    "Pipeline",
    "Call",
    "Record",
    "TaiError",
    "NotFound",
    "VersionConflict",
    "InvalidArgument",
    "TooLarge",
    "UnknownOp",
    "ProtocolError",
    "Unavailable",
    "put_item",
    "delete_item",
    "serve_conflicts",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 4 << 20
_HEADER = struct.Struct(">I")
_READ_SIZE = 1 << 16


# ---------------------------------------------------------------------------
# Errors


class TaiError(Exception):
    """An error reply from the sidecar.

    code is the protocol's error code ("NotFound", "VersionConflict", ...),
    retryable says whether sending the same request again may succeed, and
    details holds the other fields of the error object (governor, state,
    expected, actual, field, limit) when the sidecar set them.
    """

    def __init__(self, code, message="", retryable=False, details=None):
        self.code = code
        self.message = message
        self.retryable = bool(retryable)
        self.details = dict(details or {})
        super().__init__(f"{code}: {message}" if message else code)

    @property
    def governor(self):
        return self.details.get("governor")

    @property
    def state(self):
        return self.details.get("state")


class NotFound(TaiError):
    """The state does not exist (or was deleted)."""


class VersionConflict(TaiError):
    """A precondition failed. expected is the version the request required,
    actual the version found; 0 means "does not exist"."""

    @property
    def expected(self):
        return self.details.get("expected")

    @property
    def actual(self):
        return self.details.get("actual")


class InvalidArgument(TaiError):
    """The request is malformed: a bad name, a missing or wrongly typed field.
    details["field"] names the field when known."""


class TooLarge(TaiError):
    """A value, name, batch or frame is over its limit (details["limit"])."""


class UnknownOp(TaiError):
    """The sidecar does not know the requested op."""


class ProtocolError(TaiError):
    """The connection broke the protocol (bad hello, lost framing); the
    sidecar closes the connection after sending it."""


class Unavailable(TaiError):
    """The sidecar cannot serve the request right now; retry later."""


_ERRORS = {
    cls.__name__: cls
    for cls in (NotFound, VersionConflict, InvalidArgument, TooLarge, UnknownOp, Unavailable)
}
_ERRORS["ProtocolError"] = ProtocolError


def _error_from_wire(err):
    details = {k: v for k, v in err.items() if k not in ("code", "message", "retryable")}
    code = err.get("code", "Internal")
    cls = _ERRORS.get(code, TaiError)
    return cls(code, err.get("message", ""), err.get("retryable", False), details)


# ---------------------------------------------------------------------------
# Records


@dataclasses.dataclass
class Record:
    """A state as the sidecar returns it. Write replies carry no value."""

    governor: str
    state: str
    version: int
    value: object = None
    deleted: bool = False
    updated_at: int = 0  # Unix nanoseconds
    change: dict = dataclasses.field(default_factory=dict)  # actor, reason, time
    origin: str = ""
    from_cache: bool = False
    pending: bool = False
    synced_at: int = 0  # Unix ns when the shared store committed it; 0 unknown
    age_ms: int | None = None  # reads: how far behind the shared store it may be; None unknown
    stale: bool = False  # a bounded/strong read whose freshness was not confirmed

    @classmethod
    def from_wire(cls, m):
        if m is None:
            return None
        return cls(
            governor=m["governor"],
            state=m["state"],
            version=m["version"],
            value=m.get("value"),
            deleted=m.get("deleted", False),
            updated_at=m.get("updated_at", 0),
            change=m.get("change") or {},
            origin=m.get("origin", ""),
            from_cache=m.get("from_cache", False),
            pending=m.get("pending", False),
            synced_at=m.get("synced_at", 0),
            age_ms=m.get("age_ms"),
            stale=m.get("stale", False),
        )


def put_item(governor, state, value, if_version=None, if_absent=False):
    """One put in a batch_put."""
    item = {"governor": governor, "state": state, "value": value}
    if if_version is not None:
        item["if_version"] = if_version
    if if_absent:
        item["if_absent"] = True
    return item


def delete_item(governor, state, if_version=None):
    """One delete in a batch_put."""
    item = {"governor": governor, "state": state, "delete": True}
    if if_version is not None:
        item["if_version"] = if_version
    return item


def txn_put(governor, state, value, if_version=None, if_absent=False):
    """One put in a txn."""
    op = {"op": "put", "governor": governor, "state": state, "value": value}
    if if_version is not None:
        op["if_version"] = if_version
    if if_absent:
        op["if_absent"] = True
    return op


def txn_delete(governor, state, if_version=None):
    """One delete in a txn."""
    op = {"op": "delete", "governor": governor, "state": state}
    if if_version is not None:
        op["if_version"] = if_version
    return op


def txn_check(governor, state, if_version=None, exists=None):
    """One check in a txn: exactly one of if_version (0: must not exist) and
    exists (True: must exist; False: must not)."""
    op = {"op": "check", "governor": governor, "state": state}
    if if_version is not None:
        op["if_version"] = if_version
    if exists is not None:
        op["exists"] = exists
    return op


@dataclasses.dataclass
class TxnResult:
    """A txn's reply: the records written (puts and deletes, in order, without
    values), its id in the transaction log, and how many attempts it took."""

    records: list
    id: str
    attempts: int


def _txn_result(reply):
    t = reply.get("txn") or {}
    return TxnResult(records=_records(reply), id=t.get("id", ""), attempts=t.get("attempts", 0))


def _meta(fields, actor, reason):
    if actor:
        fields["actor"] = actor
    if reason:
        fields["reason"] = reason
    return fields


def _record(reply):
    return Record.from_wire(reply.get("record"))


def _records(reply):
    return [Record.from_wire(r) for r in reply.get("records") or []]


def _page(reply):
    return _records(reply), reply.get("cursor", "")


def _nothing(reply):
    return None


# Request builders shared by TaiClient and Pipeline: each returns
# (op, fields, convert) where convert turns a successful reply into a result.


def _read_level(fields, consistency, max_staleness_ms):
    if consistency:
        fields["consistency"] = consistency
    if max_staleness_ms:
        fields["max_staleness_ms"] = max_staleness_ms
    return fields


def _write_level(fields, consistency, timeout_ms):
    if consistency:
        fields["consistency"] = consistency
    if timeout_ms:
        fields["timeout_ms"] = timeout_ms
    return fields


def _get(governor, state, consistency=None, max_staleness_ms=None):
    fields = {"governor": governor, "state": state}
    return "get", _read_level(fields, consistency, max_staleness_ms), _record


def _put(governor, state, value, if_version=None, if_absent=False, actor=None, reason=None,
         consistency=None, timeout_ms=None):
    fields = {"governor": governor, "state": state, "value": value}
    if if_version is not None:
        fields["if_version"] = if_version
    if if_absent:
        fields["if_absent"] = True
    fields = _write_level(fields, consistency, timeout_ms)
    return "put", _meta(fields, actor, reason), _record


def _delete(governor, state, if_version=None, actor=None, reason=None, consistency=None, timeout_ms=None):
    fields = {"governor": governor, "state": state}
    if if_version is not None:
        fields["if_version"] = if_version
    fields = _write_level(fields, consistency, timeout_ms)
    return "delete", _meta(fields, actor, reason), _record


def _batch_get(keys, consistency=None, max_staleness_ms=None):
    fields = {"keys": [{"governor": g, "state": s} for g, s in keys]}
    return "batch_get", _read_level(fields, consistency, max_staleness_ms), _records


def _batch_put(items, actor=None, reason=None, consistency=None, timeout_ms=None):
    fields = _write_level({"items": list(items)}, consistency, timeout_ms)
    return "batch_put", _meta(fields, actor, reason), _records


def _txn(ops, actor=None, reason=None, consistency=None, timeout_ms=None):
    fields = _write_level({"ops": list(ops)}, consistency, timeout_ms)
    return "txn", _meta(fields, actor, reason), _txn_result


def _txlog(outcome=None, governor=None, limit=None, cursor=""):
    fields = {}
    if outcome:
        fields["outcome"] = outcome
    if governor:
        fields["governor"] = governor
    if limit:
        fields["limit"] = limit
    if cursor:
        fields["cursor"] = cursor
    return "txlog", fields, lambda reply: (reply.get("txlog") or [], reply.get("cursor", ""))


def _list(governor, prefix="", limit=None, cursor="", consistency=None):
    fields = {"governor": governor}
    if prefix:
        fields["prefix"] = prefix
    if limit:
        fields["limit"] = limit
    if cursor:
        fields["cursor"] = cursor
    if consistency:
        fields["consistency"] = consistency
    return "list", fields, _page


def _stats():
    return "stats", {}, lambda reply: reply.get("stats") or {}


def _pending():
    return "pending", {}, lambda reply: reply.get("pending") or {}


def _failed(after=0, limit=None):
    fields = {}
    if after:
        fields["after"] = after
    if limit:
        fields["limit"] = limit
    return "failed", fields, lambda reply: (reply.get("failed") or [], reply.get("next", 0))


def _ping():
    return "ping", {}, _nothing


# ---------------------------------------------------------------------------
# Client


class TaiClient:
    """One connection to a sidecar. Connecting sends hello; the reply's
    limits are in self.server (version, server, node_id, max_frame,
    max_value, max_batch)."""

    def __init__(self, socket_path, client_name="tai-python/0.1", timeout=30.0):
        self.timeout = timeout
        self._path = socket_path
        self._client_name = client_name
        self._ids = itertools.count(1)
        # Server-push frames are dropped unless keep_pushes is true; then
        # next_push() returns them in order.
        self.keep_pushes = False
        self._connect()

    def _connect(self):
        """Dials the sidecar and sends hello."""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._rbuf = bytearray()
        self._replies = {}  # id -> reply, received but not yet collected
        self._inflight = 0  # requests sent whose reply has not arrived
        self._max_frame = DEFAULT_MAX_FRAME
        self._broken = None  # the error that ended the connection
        self._pushes = collections.deque()
        self._last_used = time.monotonic()
        try:
            self._sock.settimeout(self.timeout)
            self._sock.connect(self._path)
            self.server = self._call(
                "hello",
                {"versions": [PROTOCOL_VERSION], "client": self._client_name},
                lambda reply: reply["hello"],
            )
        except BaseException:
            self._sock.close()
            raise
        self._max_frame = self.server.get("max_frame", DEFAULT_MAX_FRAME)
        self._idle_timeout = self.server.get("idle_timeout_ms", 0) / 1000.0

    def _redial_if_idle(self):
        """The sidecar closes a connection idle for idle_timeout_ms, and a
        request sent just then gets no reply: whether it was applied is
        unknown. So a connection idle for half that long, with nothing in
        flight, is replaced before a request is sent on it. A connection
        that receives pushes (a watch, a resolver) is kept: the sidecar does
        not close it as idle."""
        if (
            self._idle_timeout <= 0
            or self._inflight
            or self._replies
            or self.keep_pushes
            or self._broken is not None
            or time.monotonic() - self._last_used < self._idle_timeout / 2
        ):
            return
        self._sock.close()
        self._connect()

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- operations ----------------------------------------------------------

    def get(self, governor, state, consistency=None, max_staleness_ms=None):
        """The state's Record; raises NotFound. consistency: "local"
        (default), "bounded" (with max_staleness_ms) or "strong"."""
        return self._call(*_get(governor, state, consistency, max_staleness_ms))

    def put(self, governor, state, value, if_version=None, if_absent=False, actor=None, reason=None,
            consistency=None, timeout_ms=None):
        """Stores value (any msgpack-able object) and returns the new Record
        (without value). if_version=N requires the current version to be N
        (0: must not exist); if_absent requires that the state does not exist.
        A failed precondition raises VersionConflict. consistency="sync"
        answers once the shared store has the change (timeout_ms bounds it)."""
        return self._call(*_put(governor, state, value, if_version, if_absent, actor, reason,
                                consistency, timeout_ms))

    def delete(self, governor, state, if_version=None, actor=None, reason=None, consistency=None,
               timeout_ms=None):
        """Deletes the state and returns its tombstone Record; raises NotFound."""
        return self._call(*_delete(governor, state, if_version, actor, reason, consistency, timeout_ms))

    def batch_get(self, keys, consistency=None, max_staleness_ms=None):
        """Records for (governor, state) pairs, in order; None for a missing state."""
        return self._call(*_batch_get(keys, consistency, max_staleness_ms))

    def batch_put(self, items, actor=None, reason=None, consistency=None, timeout_ms=None):
        """Applies put_item/delete_item items atomically: all or none.
        Returns one Record per item, in order."""
        return self._call(*_batch_put(items, actor, reason, consistency, timeout_ms))

    def txn(self, ops, actor=None, reason=None, consistency=None, timeout_ms=None):
        """Runs ops (txn_put, txn_delete, txn_check) all or nothing and
        returns a TxnResult. A failed check or precondition raises
        VersionConflict naming the state; nothing is written then.
        consistency: "async" (default), "sync" or "strong"."""
        return self._call(*_txn(ops, actor, reason, consistency, timeout_ms))

    def txlog(self, outcome=None, governor=None, limit=None, cursor=""):
        """One page of the transaction log: (entries, cursor), entries as
        dicts (id, time, ops, attempts, outcome, code, error, ...); outcome
        "committed", "failed" or "gave_way" filters."""
        return self._call(*_txlog(outcome, governor, limit, cursor))

    def list(self, governor, prefix="", limit=None, cursor="", consistency=None):
        """One page of live states in name order: (records, cursor). Pass
        cursor back for the next page; it is "" when the listing is complete."""
        return self._call(*_list(governor, prefix, limit, cursor, consistency))

    def list_all(self, governor, prefix="", page_size=None):
        """Every live state under governor (and prefix), paging as needed."""
        cursor = ""
        while True:
            records, cursor = self.list(governor, prefix, page_size, cursor)
            yield from records
            if not cursor:
                return

    def stats(self):
        """The sidecar's statistics as a dict."""
        return self._call(*_stats())

    def pending(self):
        """The journal (changes not yet in the shared store) as a dict."""
        return self._call(*_pending())

    def failed(self, after=0, limit=None):
        """One page of the failed list: (entries, next); pass next as after
        for the next page (0: this page is the last)."""
        return self._call(*_failed(after, limit))

    def ping(self):
        self._call(*_ping())

    def pipeline(self):
        """A context in which requests are sent at once and their replies
        collected when it exits. See Pipeline."""
        return Pipeline(self)

    # -- raw requests --------------------------------------------------------

    def send(self, op, fields=None):
        """Sends a request without waiting and returns its id: either
        send("get", {"governor": g, "state": s}) or send({"op": "get", ...}).
        The client sets "id". Collect the reply with recv(id) or
        recv_all(ids)."""
        if isinstance(op, dict):
            op, fields = op["op"], op
        if op != "hello":
            self._redial_if_idle()
        rid = next(self._ids)
        req = dict(fields or {})
        req["id"] = rid
        req["op"] = op
        body = msgpack.packb(req, use_bin_type=True)
        if len(body) > self._max_frame:
            raise TooLarge(
                "TooLarge",
                f"request is {len(body)} bytes, the sidecar accepts at most {self._max_frame}",
                False,
                {"limit": self._max_frame},
            )
        self._write(_HEADER.pack(len(body)) + body)
        self._inflight += 1
        self._last_used = time.monotonic()
        return rid

    def recv(self, rid):
        """The reply to request rid as a dict; raises its error as TaiError."""
        reply = self._wait(rid)
        if "error" in reply:
            raise _error_from_wire(reply["error"])
        return reply

    def next_push(self, timeout=None):
        """The next server-push frame as a dict, or None when none arrives
        within timeout seconds (None: the client's timeout). Push frames are
        kept only while keep_pushes is true: set it before the request that
        makes the sidecar push (watch, resolver_register)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._pushes:
            self._check()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([self._sock], [], [], left)
            if readable:
                self._read(block=False)
        return self._pushes.popleft()

    def recv_all(self, ids):
        """Replies to several requests, in the order of ids. An error reply
        is returned as a TaiError instance rather than raised."""
        out = []
        for rid in ids:
            reply = self._wait(rid)
            out.append(_error_from_wire(reply["error"]) if "error" in reply else reply)
        return out

    # -- internals -----------------------------------------------------------

    def _call(self, op, fields, convert):
        return convert(self.recv(self.send(op, fields)))

    def _check(self):
        if self._broken is not None:
            raise self._broken

    def _write(self, data):
        """Writes data while reading replies, so that a long pipeline cannot
        deadlock with a sidecar blocked on writing its replies to us."""
        self._check()
        view = memoryview(data)
        while view:
            readable, writable, _ = select.select([self._sock], [self._sock], [], self.timeout)
            if not readable and not writable:
                raise TimeoutError("timed out writing to the sidecar")
            if readable:
                self._read(block=False)
            if writable:
                try:
                    n = self._sock.send(view, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self._broken = ConnectionError(f"writing to the sidecar: {e}")
                    raise self._broken from e
                view = view[n:]

    def _wait(self, rid):
        while rid not in self._replies:
            self._check()
            self._read(block=True)
        return self._replies.pop(rid)

    def _read(self, block):
        """Reads what the socket has and files every complete reply by id."""
        try:
            chunk = self._sock.recv(_READ_SIZE, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except socket.timeout:
            raise TimeoutError("timed out waiting for the sidecar") from None
        if not chunk:
            self._broken = ConnectionError("the sidecar closed the connection")
            raise self._broken
        self._rbuf += chunk
        while len(self._rbuf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self._rbuf)
            if n == 0 or n > self._max_frame:
                self._broken = ProtocolError("ProtocolError", f"reply frame of {n} bytes")
                raise self._broken
            if len(self._rbuf) < _HEADER.size + n:
                break
            body = bytes(self._rbuf[_HEADER.size : _HEADER.size + n])
            del self._rbuf[: _HEADER.size + n]
            reply = msgpack.unpackb(body, raw=False, strict_map_key=False)
            if reply.get("push"):
                # A server-push frame (a watch's change, a conflict to
                # decide): kept for next_push() if asked, else dropped.
                if self.keep_pushes:
                    self._pushes.append(reply)
                continue
            rid = reply.get("id", 0)
            if rid == 0:
                # An error about the connection itself: the sidecar closes it.
                err = reply.get("error") or {"code": "ProtocolError", "message": "reply without id"}
                self._broken = _error_from_wire(err)
                raise self._broken
            self._replies[rid] = reply
            self._inflight -= 1
            self._last_used = time.monotonic()


# ---------------------------------------------------------------------------
# Deciding conflicts


def serve_conflicts(tai, governor, decide, deadline_ms=None, on_registered=None, on_refused=None):
    """Registers tai's connection as the app that decides the conflicts of
    governor (the sidecar must run with --resolvers 'GOVERNOR=app[:fallback]')
    and answers each conflict with decide(conflict) until the connection
    ends (then it raises ConnectionError). Use a TaiClient of its own.

    conflict is the push frame's "conflict" map: id, governor, state,
    deadline_ms, local and remote (value, version, deleted, updated_at,
    origin, op_id, clock) and base (value, version, deleted; absent when the
    sidecar does not know it); values are decoded. decide returns
    (choice, value, reason): choice "local", "remote", "value" (value
    replaces both sides) or "fallback" (the sidecar's fallback resolver
    decides); reason may be None. An exception in decide declines the
    conflict with its text as the reason. deadline_ms asks for that long to
    answer (10 to 10000; None: the sidecar's 2000). on_registered(reply) is
    called once registered; on_refused(conflict, error) with each answer the
    sidecar refuses (e.g. too late: the fallback decided)."""
    tai.keep_pushes = True
    fields = {"governor": governor}
    if deadline_ms:
        fields["deadline_ms"] = deadline_ms
    reply = tai.recv(tai.send("resolver_register", fields))
    if on_registered:
        on_registered(reply)
    while True:
        push = tai.next_push(timeout=3600)
        if push is None or push.get("id") != reply["id"] or "conflict" not in push:
            continue
        conflict = push["conflict"]
        try:
            choice, value, reason = decide(conflict)
        except Exception as e:  # noqa: BLE001 - any failure of decide declines
            choice, value, reason = "fallback", None, f"{type(e).__name__}: {e}"[:1024]
        answer = {"conflict_id": conflict["id"], "choice": choice}
        if value is not None:
            answer["value"] = value
        if reason:
            answer["reason"] = reason
        try:
            tai.recv(tai.send("resolve", answer))
        except TaiError as e:
            if on_refused:
                on_refused(conflict, e)


# ---------------------------------------------------------------------------
# Pipelining


class Call:
    """The future result of a request sent in a Pipeline."""

    def __init__(self, rid, convert):
        self.id = rid
        self._convert = convert
        self._done = False
        self._value = None
        self._error = None

    def _resolve(self, reply):
        self._done = True
        if isinstance(reply, TaiError):
            self._error = reply
        else:
            self._value = self._convert(reply)

    def result(self):
        """The call's result; raises its TaiError if it failed."""
        if not self._done:
            raise RuntimeError("result() called before the pipeline finished")
        if self._error is not None:
            raise self._error
        return self._value

    def error(self):
        """The call's TaiError, or None."""
        return self._error


class Pipeline:
    """Sends each request as it is made and collects every reply when the
    with-block ends (or on finish()). Methods mirror TaiClient's and return
    Call objects."""

    def __init__(self, client):
        self._client = client
        self.calls = []

    def _add(self, op, fields, convert):
        call = Call(self._client.send(op, fields), convert)
        self.calls.append(call)
        return call

    def get(self, governor, state, consistency=None):
        return self._add(*_get(governor, state, consistency))

    def put(self, governor, state, value, if_version=None, if_absent=False, actor=None, reason=None):
        return self._add(*_put(governor, state, value, if_version, if_absent, actor, reason))

    def delete(self, governor, state, if_version=None, actor=None, reason=None):
        return self._add(*_delete(governor, state, if_version, actor, reason))

    def batch_get(self, keys, consistency=None):
        return self._add(*_batch_get(keys, consistency))

    def batch_put(self, items, actor=None, reason=None):
        return self._add(*_batch_put(items, actor, reason))

    def list(self, governor, prefix="", limit=None, cursor="", consistency=None):
        return self._add(*_list(governor, prefix, limit, cursor, consistency))

    def stats(self):
        return self._add(*_stats())

    def ping(self):
        return self._add(*_ping())

    def finish(self):
        """Waits for every outstanding reply."""
        pending = [c for c in self.calls if not c._done]
        for call, reply in zip(pending, self._client.recv_all([c.id for c in pending])):
            call._resolve(reply)
        return self.calls

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
