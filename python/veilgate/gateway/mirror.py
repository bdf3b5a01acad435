"""The gateway's mirror of the server's prepared statements, portals and cursors.

One per policy session, read by the policy enforcer and the masking relay alike (and by anyone
who asks "which SQL does this statement / portal / cursor run").  It follows the **server**, not
the client: a name is bound to its SQL only when the server confirms it.

Namespaces, as in PostgreSQL: protocol Parse and SQL ``PREPARE`` share the prepared statements
(``b""`` is the unnamed statement); protocol Bind and SQL ``DECLARE`` share the portals.

What changes them, and the confirmation the mirror waits for:

* Parse → ParseComplete ``1``; Bind → BindComplete ``2``; Close → CloseComplete ``3``;
* a Query's statements, in order → one CommandComplete ``C`` each (``PREPARE``, ``DEALLOCATE``,
  ``DECLARE CURSOR``, ``CLOSE CURSOR``, ``DISCARD ALL``, transaction control); an Execute of a
  portal whose statement is one of those → its ``C``;
* an ErrorResponse: in the extended protocol the server skips every message up to Sync (their
  changes never happen); in a Query the statements after the error never run;
* a simple Query drops the unnamed statement and the unnamed portal when it starts;
* transaction end (ReadyForQuery ``I``, ``COMMIT`` / ``ROLLBACK``) drops portals and cursors,
  except ``WITH HOLD`` cursors of a transaction that committed; ``ROLLBACK TO`` a savepoint drops
  those declared after it; ``PREPARE`` / ``DEALLOCATE`` are not transactional.

Two views.  :meth:`statement` / :meth:`portal` are **confirmed**: the server's state at the
point of the response stream the gateway has read up to (what the masking relay needs when a
result arrives).  :meth:`projected_statement` / :meth:`portal_candidates` add what the client has
sent and the server has not answered yet, each change applied only where it can succeed (a Parse
of a name that exists fails: the old statement stays): what the server will have when it reaches
the client's next message (what the policy needs when it judges that message).

Keeping Python off the hot path: the client messages that can change the namespace (Parse,
Close, Query, FunctionCall) are always surfaced (rare, or surfaced for the policy anyway) and
are barriers (the rest of a read is framed after they are handled, with the tags they asked
for); everything else is surfaced only while it is needed: Sync and the server's replies while a
change is unconfirmed, Bind / Execute while portals are tracked or a statement that changes the
namespace when executed exists, ReadyForQuery / ErrorResponse while portals of the current
transaction exist.  A session that prepares its statements once and then only binds and
executes them surfaces nothing more than before.

Replies are matched to requests in order (the FIFO ``_ops``).  When tracking starts, the server
still owes ReadyForQuery for requests sent before (the native tracker's ``pending``, exact at a
barrier): everything before those is skipped.  A reply that cannot be matched (a client that
breaks the protocol's order, e.g. an Execute then a Query without Sync) makes the mirror
*desynchronised*; the session then ends (fail closed: the gateway cannot tell what the server
runs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final

from veilgate.gateway import sqleffects as fx
from veilgate.gateway.sqleffects import Effect, may_have_effects, statement_effects

__all__ = ["Portal", "ServerMirror", "Statement"]

_P, _B, _E, _C, _S, _Q, _F, _H = (ord(c) for c in "PBECSQFH")
_c, _f = ord("c"), ord("f")
_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE = ord("1"), ord("2"), ord("3")
_COMMAND_COMPLETE, _SUSPENDED, _EMPTY = ord("C"), ord("s"), ord("I")
_ERROR, _READY, _COPY_IN = ord("E"), ord("Z"), ord("G")

_STATEMENT_KINDS: Final = frozenset({fx.PREPARE, fx.DEALLOCATE, fx.DISCARD_ALL})
_NAMESPACE_KINDS: Final = frozenset(
    {fx.PREPARE, fx.DEALLOCATE, fx.DECLARE, fx.CLOSE, fx.DISCARD_ALL}
)
_TRANSACTION_KINDS: Final = frozenset(
    {
        fx.BEGIN,
        fx.COMMIT,
        fx.ROLLBACK,
        fx.SAVEPOINT,
        fx.RELEASE,
        fx.ROLLBACK_TO,
        fx.PREPARE_TRANSACTION,
    }
)
_OP_TAGS: Final = b"PCQF"
"""Client messages always surfaced (and barriers): each can change the namespace."""
_REPLY_TAGS: Final = b"123CsIEZG"


class Statement:
    """A prepared statement: ``text`` as the client sent it (the Parse text, or the whole
    ``PREPARE``), ``query`` the SQL it runs (for ``PREPARE``: the statement after ``AS``)."""

    __slots__ = ("effects", "name", "policy", "query", "source", "text")

    def __init__(self, name: bytes, text: str, query: str, source: str) -> None:
        self.name = name
        self.text = text
        self.query = query
        self.source = source
        """``"parse"`` or ``"prepare"``."""
        self.effects: tuple[Effect, ...] | None = _executed_effects(query)
        """What executing it does to the namespace (a Parse of ``DECLARE ...``), or None."""
        self.policy: Any = None
        """The policy enforcer's note on it (its decision and generation)."""

    def __repr__(self) -> str:
        return f"Statement({self.name!r}, {self.query!r})"


class Portal:
    """A portal: bound from a statement (``statement``) or declared in SQL (``DECLARE``).
    ``query`` is the SQL it runs; a Bind portal without a statement runs SQL the gateway does
    not know (:attr:`known` is false)."""

    __slots__ = ("depth", "hold", "in_tx", "name", "query", "source", "statement")

    def __init__(
        self,
        name: bytes,
        query: str,
        source: str,
        statement: Statement | None = None,
        hold: bool = False,
        depth: int = 0,
    ) -> None:
        self.name = name
        self.query = query
        self.source = source
        """``"bind"`` or ``"declare"``."""
        self.statement = statement
        self.hold = hold
        """``WITH HOLD``: outlives the transaction that declared it if that one commits."""
        self.depth = depth
        """Savepoints open when it was made (``ROLLBACK TO`` one of them drops it)."""
        self.in_tx = True
        """Made in the current transaction (False: a WITH HOLD cursor held over)."""

    @property
    def known(self) -> bool:
        return self.source != "bind" or self.statement is not None

    def __repr__(self) -> str:
        return f"Portal({self.name!r}, {self.query!r})"


def _executed_effects(query: str) -> tuple[Effect, ...] | None:
    effects = statement_effects(query)
    if not effects or all(e.kind == fx.NONE for e in effects):
        return None
    return effects


# op kinds
_SKIP, _PARSE, _BIND, _CLOSE, _EXECUTE, _QUERY, _SYNC, _FCALL = range(8)
_ENDS: Final = frozenset({_SKIP, _QUERY, _SYNC, _FCALL})
"""Requests a ReadyForQuery may answer (SKIP: ones sent before tracking)."""


class _Op:
    """A client request whose replies the mirror waits for."""

    __slots__ = (
        "after_execute",
        "after_quiet",
        "count",
        "effects",
        "failed",
        "index",
        "kind",
        "name",
        "prepared",
        "started",
        "stmt",
        "stmt_name",
        "target",
        "uncertain",
    )

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.name = b""
        self.stmt: Statement | None = None
        self.stmt_name = b""
        self.target = 0
        """Close: ``S`` or ``P``."""
        self.effects: tuple[Effect, ...] = ()
        self.prepared: dict[int, Statement] = {}
        """Query: statement index -> the Statement its PREPARE makes."""
        self.index = 0
        self.failed = False
        self.started = False
        self.count = 0
        self.after_execute = False
        self.uncertain = False
        """A Bind in a segment that may hold Binds the mirror did not see: its BindComplete
        may be theirs."""
        self.after_quiet = False
        """Followed from a moment when nothing was (no replies surfaced): an error to a Bind /
        Execute the mirror did not see may have come before it (the server then skips it)."""


class Desynchronised(Exception):
    """The server answered something the mirror cannot match to a request."""


class ServerMirror:
    """The confirmed (and projected) statement and portal namespace of one session."""

    def __init__(
        self,
        *,
        track_portals: bool = False,
        on_tags: Callable[[], None] | None = None,
        on_change: Callable[[bytes | None], None] | None = None,
        on_drop: Callable[[Statement], None] | None = None,
    ) -> None:
        self._statements: dict[bytes, Statement] = {}
        self._portals: dict[bytes, Portal] = {}
        self._ops: deque[_Op] = deque()
        self._always_portals = track_portals
        self._always = track_portals
        """Every request is followed (no request the server answers goes unseen)."""
        self._window_portals = False
        self.portals_complete = track_portals
        """Every portal of the session is known (portals tracked since the start)."""
        self.on_tags = on_tags
        """Called when :meth:`client_tags` / :meth:`upstream_tags` change."""
        self.on_change = on_change
        """Called with a statement name (None: any) whose projected statement may have
        changed."""
        self.on_drop = on_drop
        """Called with each statement the server dropped or replaced (its portals live on)."""
        self.last_parsed: Statement | None = None
        """The statement of the last Parse the client sent (pending or, unnamed, installed)."""
        self._savepoints: list[bytes] = []
        self._tx_failed = False
        self._copy_in = False
        self._after_execute = False
        self._dirty = False
        """Binds / Executes the mirror did not see may share the segment it tracks (portal
        tracking started while the session was busy): their replies could be taken for the
        tracked ones'."""
        self._effectful = 0
        """Statements (confirmed or pending) whose execution changes the namespace."""
        self._skipping = False
        """An extended-protocol message failed and the client has not sent the Sync after it
        yet: the server skips every message it gets until that Sync (libpq's pipeline mode
        goes on sending after it has read the error), so those change nothing."""
        self._tags: tuple[bytes, bytes] = (b"", b"")
        self.desync: str | None = None
        self._tags = self._compute_tags()

    # --- what the buffers surface ----------------------------------------------------------------

    def client_tags(self) -> bytes:
        return self._tags[0]

    def client_barriers(self) -> bytes:
        return self._tags[0].replace(b"S", b"").replace(b"c", b"").replace(b"f", b"")

    def upstream_tags(self) -> bytes:
        return self._tags[1]

    def _tracking_binds(self) -> bool:
        """Bind and Execute are followed: portals are tracked, a statement that changes the
        namespace when executed exists, or replies are awaited (every request in flight is
        then followed, so that each reply is matched to its own)."""
        return (
            self._always_portals or self._window_portals or self._effectful > 0 or bool(self._ops)
        )

    def _tx_sensitive(self) -> bool:
        """Portals of the current transaction exist: its end and savepoints matter."""
        return any(p.in_tx for p in self._portals.values())

    def _compute_tags(self) -> tuple[bytes, bytes]:
        client = _OP_TAGS
        upstream = b""
        if self._tracking_binds():
            client += b"BE"
        if self._ops or self._always or self._skipping:
            client += b"Scf"
            upstream = _REPLY_TAGS
        elif self._tx_sensitive():
            upstream = b"EZ"
        return client, upstream

    def _retag(self) -> None:
        tags = self._compute_tags()
        if tags != self._tags:
            self._tags = tags
            if self.on_tags is not None:
                self.on_tags()

    def _changed(self, name: bytes | None = None) -> None:
        if self.on_change is not None:
            self.on_change(name)

    # --- lookups ---------------------------------------------------------------------------------

    def statement(self, name: bytes) -> Statement | None:
        """The prepared statement ``name`` as the server has it now (confirmed)."""
        return self._statements.get(name)

    def portal(self, name: bytes) -> Portal | None:
        """The portal or cursor ``name`` as the server has it now (confirmed).  None: it does
        not exist, or (unless :attr:`portals_complete`) was bound while portals were not
        tracked."""
        return self._portals.get(name)

    def statements(self) -> dict[bytes, Statement]:
        return dict(self._statements)

    def portals(self) -> dict[bytes, Portal]:
        return dict(self._portals)

    @property
    def quiet_for_queries(self) -> bool:
        """A Query without effects (``may_have_effects`` false) would change nothing here:
        nothing awaits a reply, requests are not all followed, there is no unnamed statement or
        portal for it to drop.  While this holds, such Queries need not be surfaced (the verdict
        cache answers them natively)."""
        return not (
            self._ops
            or self._always
            or self._skipping
            or self._after_execute
            or b"" in self._statements
            or b"" in self._portals
        )

    @property
    def quiet_for_parses(self) -> bool:
        """A Parse of a statement name with exactly the text the server holds under it would
        change nothing here (a named one fails as a duplicate; the unnamed one holds the same
        text again, or none if it fails): nothing awaits a reply, requests are not all followed,
        the server is not skipping to a Sync nor copying in, and no statement changes the
        namespace when executed.  While this holds, such Parses need not be surfaced (the
        client buffer answers them natively)."""
        return not (
            self._ops
            or self._always
            or self._skipping
            or self._copy_in
            or self._effectful
            or self._window_portals
        )

    @property
    def settled(self) -> bool:
        """Nothing is waiting for the server's answer."""
        return not self._ops

    def projected_statement(self, name: bytes) -> Statement | None:
        """The statement ``name`` once the server has processed what the client has sent."""
        return self._statement_before(name, len(self._ops))

    def _statement_before(self, name: bytes, upto: int) -> Statement | None:
        cur = self._statements.get(name)
        for i, op in enumerate(self._ops):
            if i >= upto:
                break
            cur = _project_statement(op, name, cur, self)
        return cur

    def projected_statements(self) -> dict[bytes, Statement]:
        names = set(self._statements)
        for op in self._ops:
            if op.kind == _PARSE:
                names.add(op.name)
            elif op.kind == _QUERY:
                names.update(e.name for e in op.effects if e.kind == fx.PREPARE and e.name)
        out = {}
        for n in names:
            s = self.projected_statement(n)
            if s is not None:
                out[n] = s
        return out

    def possible_statements(self) -> list[Statement]:
        """Every statement the server has, or may have once it processed what was sent."""
        out = list(self._statements.values())
        for op in self._ops:
            if op.kind == _PARSE and op.stmt is not None:
                out.append(op.stmt)
            elif op.kind == _QUERY:
                out.extend(op.prepared.values())
        return out

    def portal_candidates(self, name: bytes) -> list[Portal | None]:
        """What portal ``name`` may be once the server has processed what the client has sent:
        usually one; more when a pending Bind may fail and leave the one before.  None stands for
        "no portal, or one the mirror does not know" (see :attr:`portals_complete`)."""
        cands: list[Portal | None] = [self._portals.get(name)]
        for i, op in enumerate(self._ops):
            if op.failed:
                continue
            if op.kind == _BIND and op.name == name:
                stmt = self._statement_before(op.stmt_name, i)
                # (a statement the mirror does not know: a portal of unknown SQL)
                new = Portal(name, "", "bind") if stmt is None else _bound(name, stmt)
                boundary = any(o.kind in (_SYNC, _QUERY, _FCALL) for o in list(self._ops)[i:])
                if not boundary:
                    # should this Bind fail, the server skips to Sync: nothing after it in
                    # this segment can run the portal that was there before
                    cands = [new]
                elif not name or cands == [None]:
                    # it fails and a later ROLLBACK TO a savepoint could bring the old one back
                    cands = [new, *cands]
            elif (op.kind == _CLOSE and op.target == ord("P") and op.name == name) or (
                op.kind == _QUERY and not name
            ):
                cands = [None]
        return _unique(cands)

    # --- client side -----------------------------------------------------------------------------

    def client_message(self, tag: int, body: bytes, pending: int) -> None:
        """A surfaced client message (before the policy rewrites anything: what the policy sends
        instead fails where the client's message could succeed, so it changes nothing more).
        ``pending``: the native tracker's count of unanswered requests, read at this message
        (a barrier, so nothing after it is counted yet)."""
        if self._skipping and tag != _H:
            self._skipped(tag, body)
            return
        # the fast path of a Query on a policy session: nothing to follow unless it changes the
        # namespace or drops an unnamed statement / portal
        if (
            tag == _Q
            and not (self._ops or self._always)
            and not (may_have_effects(body) or b"" in self._statements or b"" in self._portals)
        ):
            self._after_execute = False
            return
        if tag == _H:  # Flush: nothing to wait for
            return
        if tag != _S:
            self._after_execute = tag == _E
        if tag in (_c, _f):
            self._copy_in = False
            return
        op = self._client_op(tag, body)
        if op is None:
            return
        if not self._ops and not self._always:
            # the server still owes ReadyForQuery for requests sent before tracking started
            owed = pending - (1 if tag in (_Q, _F, _S) else 0)
            if owed > 0:
                skip = _Op(_SKIP)
                skip.count = owed
                self._ops.append(skip)
            op.after_quiet = True
        if op.kind in (_BIND, _EXECUTE) and self._dirty and not self._has_sync():
            op.uncertain = True
        self._ops.append(op)
        self._retag()
        self._op_changes(op)

    def _skipped(self, tag: int, body: bytes) -> None:
        """A client message while the server skips to Sync (see :attr:`_skipping`): the Sync
        ends the skipping (its ReadyForQuery is awaited as usual); anything else is ignored by
        the server, and so here (a Parse's statement is never installed)."""
        if tag == _S:
            self._skipping = False
            self._retag()
            self.client_message(tag, body, 0)
            return
        if tag == _P:
            name, text = _two_strings(body)
            if text is not None:
                text_s = text.decode("utf-8", "replace")
                self.last_parsed = Statement(name, text_s, text_s, "parse")

    def _has_sync(self) -> bool:
        return any(o.kind in (_SYNC, _QUERY, _FCALL) for o in self._ops)

    def _client_op(self, tag: int, body: bytes) -> _Op | None:
        if tag == _P:
            name, text = _two_strings(body)
            if text is None:
                return None
            text_s = text.decode("utf-8", "replace")
            stmt = Statement(name, text_s, text_s, "parse")
            self.last_parsed = stmt
            op = _Op(_PARSE)
            op.name = name
            op.stmt = stmt
            if stmt.effects is not None:
                self._effectful += 1
            return op
        if tag == _B:
            if not self._tracking_binds():
                return None
            portal, sname = _two_strings(body)
            if sname is None:
                return None
            op = _Op(_BIND)
            op.name, op.stmt_name = portal, sname
            return op
        if tag == _E:
            if not self._tracking_binds():
                return None
            name, _ = _two_strings(body, 1)
            op = _Op(_EXECUTE)
            op.name = name
            return op
        if tag == _C:
            if len(body) < 2:
                return None
            name, _ = _two_strings(body[1:], 1)
            op = _Op(_CLOSE)
            op.target, op.name = body[0], name
            return op
        if tag == _Q:
            effects: tuple[Effect, ...] | None = ()
            if may_have_effects(body):  # decoded only then (a Query may be megabytes)
                end = body.find(b"\0")
                query = (body if end < 0 else body[:end]).decode("utf-8", "replace")
                effects = statement_effects(query)
            op = _Op(_QUERY)
            op.effects = effects or ()
            for i, e in enumerate(op.effects):
                if e.kind == fx.PREPARE and e.name is not None:
                    op.prepared[i] = Statement(e.name, e.text, e.query, "prepare")
            kinds = _NAMESPACE_KINDS
            if self._tx_sensitive():
                kinds = kinds | _TRANSACTION_KINDS
            has_effects = any(e.kind in kinds for e in op.effects)
            unnamed = b"" in self._statements or b"" in self._portals
            if not (self._ops or self._always or has_effects or unnamed):
                return None
            return op
        if tag == _F:
            return _Op(_FCALL) if (self._ops or self._always) else None
        if tag == _S:
            if not (self._ops or self._always) or self._copy_in:
                return None
            op = _Op(_SYNC)
            op.after_execute = self._after_execute
            return op
        return None

    def answered_locally(self) -> None:
        """The gateway answered the last client request itself (it never reached the server):
        forget it."""
        if self._ops and self._ops[-1].kind in (_QUERY, _FCALL):
            self._ops.pop()
            if self._ops and self._ops[-1].kind == _SKIP and self._ops[-1].count <= 0:
                self._ops.pop()
            self._retag()

    def function_call_replaced(self, pending: int) -> None:
        """The server gets a (failing) Query in place of the client's FunctionCall: a Query
        drops the unnamed statement and portal."""
        if self._ops and self._ops[-1].kind == _FCALL:
            self._ops.pop()
        self.client_message(_Q, b"\0", pending)

    # --- server side -----------------------------------------------------------------------------

    def server_message(self, tag: int, body: bytes) -> None:
        """A surfaced server message.  Raises :class:`Desynchronised` when it cannot be
        matched (then :attr:`desync` says why)."""
        if self.desync is not None:
            return
        try:
            self._server(tag, body)
        except Desynchronised as exc:
            self.desync = str(exc)
            self._ops.clear()
            self._retag()
            raise
        self._retag()

    def _head(self) -> _Op | None:
        return self._ops[0] if self._ops else None

    def _server(self, tag: int, body: bytes) -> None:
        if tag == _READY:
            self._ready(body[:1])
            return
        head = self._head()
        if tag == _ERROR:
            if self._tx_sensitive():
                self._tx_failed = True
            if head is not None and head.kind != _SKIP:
                self._error(head)
            return
        if head is None or head.kind == _SKIP:
            return
        if tag == _PARSE_COMPLETE:
            self._expect(head, _PARSE, "ParseComplete")
            self._ops.popleft()
            self._parsed(head)
        elif tag == _BIND_COMPLETE:
            if head.kind != _BIND:
                return  # a Bind sent before Binds were tracked (its reply comes first)
            self._ops.popleft()
            self._bound(head)
        elif tag == _CLOSE_COMPLETE:
            self._expect(head, _CLOSE, "CloseComplete")
            self._ops.popleft()
            self._closed(head)
        elif tag in (_COMMAND_COMPLETE, _SUSPENDED, _EMPTY):
            if head.kind == _EXECUTE:
                self._ops.popleft()
                if tag == _COMMAND_COMPLETE:
                    self._executed(head, body)
            elif head.kind == _QUERY:
                self._start(head)
                if tag == _COMMAND_COMPLETE:
                    self._query_statement(head, body)
        elif tag == _COPY_IN:
            self._copy_in = True
            if head.kind in (_EXECUTE, _QUERY):
                # a Sync right behind the COPY's Execute was read in copy-in mode: ignored
                nxt = self._ops[1] if len(self._ops) > 1 else None
                if nxt is not None and nxt.kind == _SYNC and nxt.after_execute:
                    del self._ops[1]

    def _expect(self, head: _Op, kind: int, what: str) -> None:
        if head.kind != kind:
            raise Desynchronised(f"{what} with {_NAMES[head.kind]} pending")

    def _error(self, head: _Op) -> None:
        if head.kind == _QUERY:
            self._start(head)
            head.failed = True  # the statements after the error never run
            self._op_changes(head)
            return
        if head.kind in (_SYNC, _FCALL):
            head.failed = True
            return
        # extended protocol: the server skips everything up to Sync (Queries included), and
        # what the client sends until then
        while self._ops and self._ops[0].kind not in (_SYNC, _SKIP):
            self._drop(self._ops.popleft())
        if not self._ops:
            self._skipping = True

    def _drop(self, op: _Op) -> None:
        """A request the server skipped or refused: its changes never happen."""
        if op.kind == _PARSE and op.stmt is not None and op.stmt.effects is not None:
            self._effectful -= 1
        self._op_changes(op)

    def _op_changes(self, op: _Op) -> None:
        """``op`` entered or left the projection: tell whom it concerns."""
        if op.kind == _PARSE or (op.kind == _CLOSE and op.target == ord("S")):
            self._changed(op.name)
        elif op.kind == _QUERY and any(e.kind in _STATEMENT_KINDS for e in op.effects):
            self._changed(None)

    def _ready(self, status: bytes) -> None:
        head = self._head()
        if head is not None:
            if head.kind == _SKIP:
                head.count -= 1
                if head.count <= 0:
                    self._ops.popleft()
            elif head.kind in (_SYNC, _QUERY, _FCALL):
                if head.kind == _QUERY:
                    self._start(head)
                self._ops.popleft()
                self._dirty = False
            elif head.after_quiet:
                self._skipped_to_sync(head)
            else:
                raise Desynchronised(f"ReadyForQuery with {_NAMES[head.kind]} pending")
        if status == b"I":
            self._transaction_end(committed=not self._tx_failed)
        elif status == b"E" and self._tx_sensitive():
            self._tx_failed = True

    def _skipped_to_sync(self, head: _Op) -> None:
        """ReadyForQuery while requests before the Sync it answers are unanswered, the first
        of them followed from a quiet moment (``after_quiet``): the server skipped them after
        an error the mirror did not see (a Bind / Execute it does not follow failed, and the
        client went on sending before its Sync); it answers every request otherwise.  They
        never happened.  Anything else cannot be matched."""
        end = next((i for i, o in enumerate(self._ops) if o.kind in _ENDS), None)
        if end is None or self._ops[end].kind != _SYNC:
            raise Desynchronised(f"ReadyForQuery with {_NAMES[head.kind]} pending")
        for _ in range(end):
            self._drop(self._ops.popleft())
        self._ops.popleft()
        self._dirty = False

    # --- applying confirmed changes --------------------------------------------------------------

    def _parsed(self, op: _Op) -> None:
        stmt = op.stmt
        assert stmt is not None
        # (a named one cannot exist: the server refuses such a Parse)
        self._replace_statement(op.name, stmt, counted=True)

    def _replace_statement(
        self, name: bytes, stmt: Statement | None, counted: bool = False
    ) -> None:
        """``counted``: ``stmt``'s effects were counted when its Parse was seen."""
        old = self._statements.pop(name, None)
        if old is not None:
            if old.effects is not None:
                self._effectful -= 1
            if self.on_drop is not None:
                self.on_drop(old)
        if stmt is not None:
            self._statements[name] = stmt
            if stmt.effects is not None and not counted:
                self._effectful += 1
        self._changed(name)

    def _bound(self, op: _Op) -> None:
        stmt = self._statements.get(op.stmt_name)
        if op.uncertain:
            # the BindComplete may be another Bind's: forget rather than guess
            self._portals.pop(op.name, None)
            return
        depth = len(self._savepoints)
        if stmt is None:
            # the server bound a statement the mirror never saw made (by a function...): a
            # portal of unknown SQL
            self._new_portal(Portal(op.name, "", "bind", None, False, depth))
            return
        self._new_portal(_bound(op.name, stmt, depth))

    def _new_portal(self, portal: Portal) -> None:
        if not self._tx_sensitive():
            # it was made, so the transaction had not failed
            self._tx_failed = False
        self._portals[portal.name] = portal

    def _closed(self, op: _Op) -> None:
        if op.target == ord("S"):
            self._replace_statement(op.name, None)
        else:
            self._portals.pop(op.name, None)

    def _executed(self, op: _Op, tag: bytes) -> None:
        portal = self._portals.get(op.name)
        if portal is None or portal.statement is None or portal.statement.effects is None:
            return
        if op.uncertain:
            raise Desynchronised("a statement that changes the namespace ran unobserved")
        effect = portal.statement.effects[0]
        self._apply(effect, _command_tag(tag), None)

    def _start(self, op: _Op) -> None:
        if op.started:
            return
        op.started = True
        # a simple Query drops the unnamed statement and runs in the unnamed portal
        if b"" in self._statements:
            self._replace_statement(b"", None)
        self._portals.pop(b"", None)

    def _query_statement(self, op: _Op, tag: bytes) -> None:
        i = op.index
        op.index += 1
        if op.failed or i >= len(op.effects):
            return
        effect = op.effects[i]
        if effect.kind == fx.NONE:
            return
        got = _command_tag(tag)
        if got not in _TAGS[effect.kind]:
            raise Desynchronised(f"CommandComplete {got!r} for a {effect.kind} statement")
        self._apply(effect, got, op.prepared.get(i))

    def _apply(self, e: Effect, tag: str, prepared: Statement | None) -> None:
        k = e.kind
        if k == fx.PREPARE and e.name is not None:
            if prepared is None:
                prepared = Statement(e.name, "", e.query, "prepare")
            self._replace_statement(e.name, prepared)
        elif k == fx.DEALLOCATE:
            if e.name is None:
                for n in [n for n in self._statements if n]:
                    self._replace_statement(n, None)
            else:
                self._replace_statement(e.name, None)
        elif k == fx.DISCARD_ALL:
            for n in [n for n in self._statements if n]:
                self._replace_statement(n, None)
            self._portals.clear()
            self._savepoints.clear()
        elif k == fx.DECLARE and e.name is not None:
            self._new_portal(
                Portal(e.name, e.query, "declare", None, e.hold, len(self._savepoints))
            )
        elif k == fx.CLOSE:
            if e.name is None:
                self._portals.clear()
            else:
                self._portals.pop(e.name, None)
        elif k == fx.BEGIN:
            self._tx_failed = False
        elif k == fx.COMMIT:
            # COMMIT of a failed transaction answers ROLLBACK
            self._transaction_end(committed=tag == "COMMIT")
        elif k in (fx.ROLLBACK, fx.PREPARE_TRANSACTION):
            self._transaction_end(committed=False)
        elif k == fx.SAVEPOINT and e.name is not None:
            self._savepoints.append(e.name)
        elif k == fx.RELEASE and e.name is not None:
            i = _last_index(self._savepoints, e.name)
            if i is not None:
                del self._savepoints[i:]
                for p in self._portals.values():
                    p.depth = min(p.depth, i)
        elif k == fx.ROLLBACK_TO and e.name is not None:
            i = _last_index(self._savepoints, e.name)
            keep = -1 if i is None else i
            if i is not None:
                del self._savepoints[i + 1 :]
            for n in [n for n, p in self._portals.items() if p.in_tx and p.depth > keep]:
                del self._portals[n]
            self._tx_failed = False

    def _transaction_end(self, committed: bool) -> None:
        self._savepoints.clear()
        self._tx_failed = False
        for n in list(self._portals):
            p = self._portals[n]
            if not p.in_tx:
                continue
            if committed and p.hold:
                p.in_tx = False
                p.depth = 0
            else:
                del self._portals[n]

    # --- portal tracking for a while (policy reload windows) ------------------------------------

    def track_portals(self, on: bool, busy: bool = False) -> None:
        """Track Bind / Execute from now on (``on``) or stop (portals bound while not tracked
        are unknown: :attr:`portals_complete` stays false).  ``busy``: the session may have
        Binds in flight that the mirror did not see."""
        if self._always_portals:
            return
        if on and not self._window_portals and busy:
            self._dirty = True
        self._window_portals = on
        self._retag()

    def __iter__(self) -> Iterator[tuple[bytes, Statement]]:
        return iter(self._statements.items())


_NAMES: Final = {
    _SKIP: "earlier requests",
    _PARSE: "a Parse",
    _BIND: "a Bind",
    _CLOSE: "a Close",
    _EXECUTE: "an Execute",
    _QUERY: "a Query",
    _SYNC: "a Sync",
    _FCALL: "a FunctionCall",
}

_TAGS: Final = {
    fx.PREPARE: ("PREPARE",),
    fx.DEALLOCATE: ("DEALLOCATE", "DEALLOCATE ALL"),
    fx.DECLARE: ("DECLARE CURSOR",),
    fx.CLOSE: ("CLOSE CURSOR", "CLOSE CURSOR ALL"),
    fx.DISCARD_ALL: ("DISCARD ALL",),
    fx.BEGIN: ("BEGIN", "START TRANSACTION"),
    fx.COMMIT: ("COMMIT", "ROLLBACK"),
    fx.ROLLBACK: ("ROLLBACK",),
    fx.SAVEPOINT: ("SAVEPOINT",),
    fx.RELEASE: ("RELEASE",),
    fx.ROLLBACK_TO: ("ROLLBACK",),
    fx.PREPARE_TRANSACTION: ("PREPARE TRANSACTION", "ROLLBACK"),
}


def _command_tag(body: bytes) -> str:
    end = body.find(b"\0")
    return (body if end < 0 else body[:end]).decode("ascii", "replace")


def _two_strings(body: bytes, count: int = 2) -> tuple[bytes, bytes | None]:
    i = body.find(b"\0")
    if i < 0:
        return body, None
    if count == 1:
        return body[:i], b""
    j = body.find(b"\0", i + 1)
    if j < 0:
        return body[:i], None
    return body[:i], body[i + 1 : j]


def _bound(name: bytes, stmt: Statement, depth: int = 0) -> Portal:
    return Portal(name, stmt.query, "bind", stmt, False, depth)


def _last_index(items: list[bytes], name: bytes) -> int | None:
    for i in range(len(items) - 1, -1, -1):
        if items[i] == name:
            return i
    return None


def _unique(cands: list[Portal | None]) -> list[Portal | None]:
    out: list[Portal | None] = []
    for c in cands:
        if c not in out:
            out.append(c)
    return out


def _project_statement(
    op: _Op, name: bytes, cur: Statement | None, mirror: ServerMirror
) -> Statement | None:
    """``cur`` after ``op`` succeeds where it can (see :meth:`ServerMirror.projected_statement`)."""
    if op.failed:
        return cur
    if op.kind == _PARSE and op.name == name:
        return op.stmt if (not name or cur is None) else cur
    if op.kind == _CLOSE and op.target == ord("S") and op.name == name:
        return None
    if op.kind == _QUERY:
        if not name and not op.started:
            cur = None
        for i in range(op.index, len(op.effects)):
            e = op.effects[i]
            if e.kind == fx.PREPARE and e.name == name and cur is None:
                cur = op.prepared.get(i)
            elif _drops_statement(e, name):
                cur = None
        return cur
    if op.kind == _EXECUTE:
        portal = mirror.portal(op.name)
        stmt = portal.statement if portal is not None else None
        if stmt is not None and stmt.effects:
            e = stmt.effects[0]
            if e.kind == fx.PREPARE and e.name == name and cur is None:
                return Statement(name, stmt.query, e.query, "prepare")
            if _drops_statement(e, name):
                return None
    return cur


def _drops_statement(e: Effect, name: bytes) -> bool:
    """``DEALLOCATE name`` / ``DEALLOCATE ALL`` / ``DISCARD ALL`` (the ALL forms leave the
    unnamed statement)."""
    if e.kind == fx.DEALLOCATE:
        return e.name == name or (e.name is None and bool(name))
    return e.kind == fx.DISCARD_ALL and bool(name)


def _drops_portal(op: _Op, name: bytes) -> bool:
    if op.kind == _CLOSE:
        return op.target == ord("P") and op.name == name
    return op.kind == _QUERY and not name
