"""Result masking on a relayed session: the per-session state machine (PROTOCOL.md 3-7).

Only sessions whose policy tier is masked have a :class:`MaskingRelay`; every other session stays
pure pass-through.  The native engine rewrites the rows (DataRow ``D``, CopyData ``d``) with the
plan installed on the server-side buffer; this module decides, once per result set, which plan,
and keeps the protocol in step:

* **Which statement a result belongs to.**  A FIFO of requests mirrors what the server answers,
  in order: a simple Query (its statements, split with the real parser; a cursor moves on at each
  CommandComplete / EmptyQueryResponse) or an extended-protocol segment (the Describes and
  Executes sent up to a Sync).  ReadyForQuery ends the head request; after an ErrorResponse the
  server skips to Sync, so the segment's pending entries are dropped.
* **Plans at barriers.**  RowDescription ``T`` and CopyOutResponse ``H`` are barrier events: the
  buffer frames nothing after them until the plan is installed.  A plan the catalog already
  knows is installed at once; otherwise the upstream side is *held* (no reading, nothing framed)
  while the planner asks the catalog, then released.
* **Execute without Describe.**  Clients (asyncpg, psycopg prepared statements) execute portals
  they never described, so before each Execute a Describe of the portal is injected and its reply
  swallowed: it is the portal's real RowDescription, result formats included.
* **COPY TO STDOUT** is planned before the statement is forwarded (the client side is held):
  when masking cannot be guaranteed the client gets ``0A000`` and the server never runs it.
  Columns the side connection cannot describe (a table of the client's open transaction, a
  temporary one, one the client holds a lock on) are planned from the server's
  CopyOutResponse and the statement's lineage instead, with a notice; one that does not exist
  gets the server's own error.
* **standard_conforming_strings.**  Statement text is read as the server reads it: with the
  setting off, ordinary literals are rewritten to their ``E'...'`` form before analysis.  A text
  that reads differently with it on and off (:func:`scs_dependent`) is read only when no request
  before it is in flight (the server reports a change at the ReadyForQuery that ends it): it
  waits for them, or, inside an unsynced pipeline, is refused with ``0A000``.
* **Fail closed.**  The buffer refuses rows when no plan is installed (``mask_required``); a
  planning failure or a response the FIFO did not expect ends the session with a FATAL.

What leaves this module for the audit log are counts per entity and column, never values.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from pglast import parser as _pg

from veilgate import log, metrics
from veilgate.bytecache import SESSION_CACHE_BYTES, ByteLRU, text_cost
from veilgate.gateway.guard import InferenceGuard, statement_fingerprint
from veilgate.gateway.mirror import ServerMirror
from veilgate.identity.base import Principal
from veilgate.masking.catalog import CatalogError
from veilgate.masking.fields import Field
from veilgate.masking.lineage import StatementInfo
from veilgate.masking.planner import MaskRefusal, parse_row_description
from veilgate.masking.policy import MaskingUnavailable
from veilgate.masking.sidechannel import SideChannelMasker
from veilgate.pgwire import wire
from veilgate.policy.analysis import rewrite_nonstandard_strings
from veilgate.policy.audit import AuditSink, MaskEvent

if TYPE_CHECKING:
    import veilgate_native as native

    from veilgate.gateway._relay import RelayProtocol
    from veilgate.gateway.recording import SessionRecording
    from veilgate.masking.planner import SessionMasking

__all__ = ["BARRIER_TAGS", "CLIENT_TAGS", "UPSTREAM_TAGS", "MaskingRelay"]

logger = log.get("gateway.masking")

CLIENT_TAGS: Final = b"QPBDESCHFcf"
"""Client messages a masked session surfaces: statements (Query, Parse), the extended-protocol
messages that place results (Bind, Describe, Execute, Sync, Close, Flush), FunctionCall, and the
end of a COPY FROM STDIN (CopyDone, CopyFail: the server ignores Sync until then)."""
UPSTREAM_TAGS: Final = b"THCsIEZnGNAS"
"""Server messages a masked session surfaces: result starts, result ends, errors, NoData,
CopyInResponse (from then on until CopyDone / CopyFail the server ignores Sync), and the rare
messages that may carry values besides rows (NoticeResponse, NotificationResponse,
ParameterStatus: masked like error fields)."""
BARRIER_TAGS: Final = b"TH"
"""Server events after which the buffer waits for a plan."""

MARKER_PREFIX: Final = "veilgate-masking-"
_MARKER_PREFIX_B: Final = MARKER_PREFIX.encode()
_SPLIT_CACHE: Final = 1024

_Q, _P, _B, _D, _E, _S, _C, _H, _F = (ord(c) for c in "QPBDESCHF")
_SOURCE_HEADS: Final = frozenset("fFmMeE")
"""First letters of FETCH, MOVE and EXECUTE (statements that run another's SQL)."""
_T, _s, _I, _Z, _n, _G = (ord(c) for c in "TsIZnG")
_c, _f = ord("c"), ord("f")
_N = ord("N")
_SIDE_TAGS: Final = frozenset(b"NAS")
_IDLE: Final = ord("I")

SCS_UNKNOWN: Final = (
    "this statement's text reads differently with standard_conforming_strings on and off, "
    "and a request still in flight may change that setting: it cannot be checked for masking"
)
SCS_UNKNOWN_HINT: Final = "send Sync (end the pipeline) before it, or write the literal as E'...'"
_MISSING: Final = object()

REFUSED_FUNCTION_CALL: Final = (
    "the FunctionCall protocol message is not available on a masked session: "
    "its results cannot be masked"
)


class _Result:
    """The plan installed now, and what its tallies are reported against."""

    __slots__ = ("fields", "info", "plan")

    def __init__(self, plan: Any, fields: list[Field], info: StatementInfo) -> None:
        self.plan = plan
        self.fields = fields
        self.info = info


class _Query:
    """A simple Query in flight: its statements, and the one the server is answering."""

    __slots__ = ("copy_plans", "index", "infos", "whole")

    def __init__(self, whole: StatementInfo, infos: list[StatementInfo]) -> None:
        self.whole = whole
        self.infos = infos
        self.index = 0
        self.copy_plans: dict[int, tuple[Any, int]] = {}
        """Statement index -> (CopyPlan, overall format) computed before forwarding (plan
        ``None``: the side connection could not describe its columns)."""

    def current(self) -> StatementInfo:
        if self.index < len(self.infos):
            return self.infos[self.index]
        # the server saw more statements than the parser split: lineage of the whole text
        return self.whole


class _Describe:
    __slots__ = ("info", "injected", "portal")

    def __init__(
        self, injected: bool, info: StatementInfo | None, portal: bytes | None = None
    ) -> None:
        self.injected = injected
        self.info = info
        self.portal = portal


class _Execute:
    __slots__ = ("copy_plan", "info", "portal")

    def __init__(
        self,
        info: StatementInfo | None,
        copy_plan: tuple[Any, int] | None,
        portal: bytes | None = None,
    ) -> None:
        self.info = info
        self.copy_plan = copy_plan
        """(CopyPlan, overall format) computed before the Execute (plan ``None``: the side
        connection could not describe its columns)."""
        self.portal = portal


class _Segment:
    """Extended-protocol messages up to a Sync: the replies the server still owes that matter."""

    __slots__ = ("expects", "sync_after_execute", "synced")

    def __init__(self) -> None:
        self.expects: deque[_Describe | _Execute] = deque()
        self.synced = False
        self.sync_after_execute = False
        """The Sync came right behind an Execute: if that Execute starts a COPY FROM STDIN, the
        server reads the Sync in copy-in mode and ignores it."""


class _Mismatch(Exception):
    """The server answered something the request FIFO did not expect."""


def _cstring(body: bytes, pos: int) -> tuple[bytes, int]:
    end = body.index(b"\0", pos)
    return body[pos:end], end + 1


def _copy_out_formats(body: bytes) -> tuple[int, list[int]]:
    """CopyOutResponse body: Int8 overall format, Int16 count, Int16 formats."""
    overall = body[0]
    (count,) = struct.unpack_from("!h", body, 1)
    return overall, list(struct.unpack_from(f"!{count}h", body, 3))


_SQL_OBJECT_WORDS: Final = ("declare", "fetch", "move", "prepare", "execute")


def _sql_object(text: str) -> tuple[str, str] | None:
    """(kind, name) when ``text`` is one statement that declares or reads a SQL-level cursor or
    prepared statement: ``("declare", c)``, ``("fetch", c)``, ``("prepare", p)``,
    ``("execute", p)``.  Their results come from the declared query, not from their own text."""
    low = text.lower()
    if not any(w in low for w in _SQL_OBJECT_WORDS):
        return None
    try:
        stmts = json.loads(_pg.parse_sql_json(text)).get("stmts", [])
    except Exception:
        return None
    if len(stmts) != 1:
        return None
    stmt = stmts[0].get("stmt", {})
    for node, kind, key in (
        ("DeclareCursorStmt", "declare", "portalname"),
        ("FetchStmt", "fetch", "portalname"),
        ("PrepareStmt", "prepare", "name"),
        ("ExecuteStmt", "execute", "name"),
    ):
        body = stmt.get(node)
        if isinstance(body, dict) and body.get(key):
            return kind, str(body[key])
    return None


def _is_copy_out(info: StatementInfo | None) -> bool:
    c = info.copy if info is not None else None
    return c is not None and not c.is_from and c.to_stdout


def _copy_format(info: StatementInfo) -> int:
    c = info.copy
    return 1 if c is not None and c.format == "binary" else 0


class MaskedSession(Protocol):
    """What the masking relay needs of its session (:class:`~veilgate.gateway.session.Session`
    is one; a protocol, so that this module does not import the session that imports it)."""

    @property
    def peer(self) -> str: ...
    @property
    def state(self) -> native.SessionState: ...
    @property
    def client(self) -> RelayProtocol: ...
    @property
    def upstream_rb(self) -> Any: ...
    @property
    def recording(self) -> SessionRecording | None: ...
    def upstream_side(self) -> RelayProtocol: ...
    def write_client(self, data: bytes) -> None: ...
    def write_upstream(self, data: bytes) -> None: ...
    def close(self, client_message: bytes | None, reason: str) -> None: ...


class MaskingRelay:
    """Per-session masking state; called by :class:`~veilgate.gateway.session.Session` for the
    masking events."""

    def __init__(
        self,
        session: MaskedSession,
        planner: SessionMasking,
        principal: Principal,
        tier: str,
        audit: AuditSink | None,
        forward_client: Callable[[Any], None],
        server_frame: Callable[[Any], bytes],
        mirror: ServerMirror,
    ) -> None:
        self.session = session
        self.mirror = mirror
        """The server's statements and portals: which SQL a result comes from."""
        self.planner = planner
        self.principal = principal
        self.tier = tier
        self.audit = audit
        self._forward_client = forward_client
        """Sends a client message on (through the policy enforcer when there is one)."""
        self._server_frame = server_frame
        """What the client gets for a server event (the enforcer's rewrite when there is one)."""
        self._requests: deque[_Query | _Segment] = deque()
        self.masked: dict[str, int] = {}
        """Values masked in this session by entity (per-target metrics)."""
        self._result: _Result | None = None
        self._markers: OrderedDict[bytes, bytes] = OrderedDict()
        """Refusal markers sent upstream: nonce -> the ErrorResponse the client gets instead."""
        self._splits: ByteLRU[str, list[StatementInfo]] = ByteLRU(SESSION_CACHE_BYTES)
        self._sql_objects: ByteLRU[str, tuple[str, str] | None] = ByteLRU(SESSION_CACHE_BYTES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._after_execute = False
        self._sync_after_execute = False
        self._copy_in = False
        """The server is in COPY FROM STDIN mode (it ignores Sync and Flush until the client's
        CopyDone / CopyFail)."""
        self._guard = InferenceGuard(self)
        """Masked-column uses refused before the server sees them (issue 10 item 4)."""
        self._side = SideChannelMasker(planner)
        """Masks error / notice / notification / parameter messages (issue 10 item 3)."""
        self.scs_on: Callable[[], bool] = lambda: True
        """The server's ``standard_conforming_strings`` as it last confirmed it (the session
        sets it to read the policy enforcer's picture of the server's ParameterStatus)."""
        self._lexed: ByteLRU[str, str | None] = ByteLRU(SESSION_CACHE_BYTES)
        """Statement texts that read differently with standard_conforming_strings on and off
        (see :func:`scs_dependent`), as the server read them: the text -> its standard form
        (``None``: read both ways in this session, or not at all).  The mirror keeps the texts
        as the client sent them; a statement bound or executed later is analysed from this."""
        self._waiting: Callable[[], None] | None = None
        """A client message held until every request before it is answered (the setting it
        is read with is known only then)."""

    # --- lifecycle -----------------------------------------------------------------------------

    def replace_planner(self, planner: SessionMasking) -> None:
        """A policy reload: results planned from now on follow the new masking rules."""
        planner.adopt(self.planner)  # the session's own tables stay known
        self.planner = planner
        self._side = SideChannelMasker(planner)
        self._guard = InferenceGuard(self)  # verdicts of the old rules are forgotten
        self._splits.clear()

    def close(self) -> None:
        self._closed = True
        for t in list(self._tasks):
            t.cancel()
        self._tasks.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task of this session (cancelled when it closes)."""
        self._spawn(coro)

    def hold_client(self) -> None:
        """Read nothing more from the client until this hold is released (holds are counted;
        later messages wait, in order)."""
        self.session.client.hold()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def fail(self, reason: str, detail: str | BaseException) -> None:
        """Fail closed: the session ends with a FATAL; nothing more reaches the client.  The
        detail (an error's type and text: never row values) goes to the log only."""
        if isinstance(detail, BaseException):
            detail = f"{type(detail).__name__}: {detail}"
        metrics.errors_total.inc(kind="masking")
        log.event(
            logger,
            "masking_failed",
            logging.ERROR,
            peer=self.session.peer,
            principal=self.principal.label(),
            tier=self.tier,
            reason=reason,
            detail=detail,
        )
        self.session.close(
            wire.fatal("XX000", f"result masking failed ({reason}); the session is closed"),
            "masking",
        )

    # --- client side ---------------------------------------------------------------------------

    def client_message(self, m: Any) -> None:
        tag = m.tag
        if tag in (_Q, _P) and not self._scs_known(m):
            return  # held until the setting is known, or refused
        if tag != _H:  # (Flush aside) did an Execute come last, for a Sync behind it
            self._sync_after_execute = tag == _S and self._after_execute
            self._after_execute = tag == _E
        try:
            if tag == _Q:
                # masked-column uses are refused before the server sees them (the statements
                # are split once, for both: large texts are not cached)
                whole, stmts = self._query_statements(m)
                judged = self._with_sources(stmts)
                if not self._guard.intercept(m, judged, lambda: self._query(m, whole, stmts)):
                    self._query(m, whole, stmts)
            elif tag == _P:
                stmts = [self._parse_statement(m)]
                if not self._guard.intercept(m, self._with_sources(stmts), lambda: self._parsed(m)):
                    self._parsed(m)
            elif tag == _B:  # the mirror follows what Parse / Bind do once the server has
                self._bind(m)
            elif tag == _D:
                self._segment().expects.append(_Describe(False, None))
                self._forward_client(m)
            elif tag == _E:
                self._execute(m)
            elif tag == _S:
                self._sync()
                self._forward_client(m)
            elif tag == _C:
                self._forward_client(m)
            elif tag in (_c, _f):
                self._copy_in = False
                self._forward_client(m)
            elif tag == _F:
                self._refuse_request(REFUSED_FUNCTION_CALL, function_call=True)
            else:  # Flush, and anything the enforcer added
                self._forward_client(m)
        except (ValueError, IndexError, struct.error):
            # malformed: the server answers it with a protocol error
            self._forward_client(m)
        except Exception as exc:
            self.fail("internal", exc)

    # --- standard_conforming_strings ----------------------------------------------------------

    def _scs_known(self, m: Any) -> bool:
        """Whether a Query / Parse can be read now: its text does not depend on
        standard_conforming_strings, or no request before it is still in flight (the server's
        ParameterStatus for a change comes with the ReadyForQuery of the request that made it,
        so until then the gateway cannot know how the server reads the text).  Otherwise the
        message waits (client held) for the requests in flight to be answered, when they all
        end in a Sync or are Queries; when some are an unsynced pipeline (whose end the client
        may be waiting on) it is refused (0A000): fail closed, never read the wrong way."""
        if not self._requests or not scs_dependent(_message_text(m)):
            return True
        reqs = self._requests
        if all(not isinstance(r, _Segment) or r.synced for r in reqs) and not self._copy_in:
            self.session.client.hold()
            self._waiting = lambda: self.client_message(m)
            return False
        error = wire.error_response("ERROR", "0A000", SCS_UNKNOWN, hint=SCS_UNKNOWN_HINT)
        log.event(
            logger,
            "masking_refused",
            logging.INFO,
            peer=self.session.peer,
            principal=self.principal.label(),
            sqlstate="0A000",
            reason="standard_conforming_strings unknown",
        )
        if m.tag == _Q:
            self._refuse_request("", error=error)
        else:
            self.refuse_parse(m, error)
        return False

    def _resume_waiting(self) -> None:
        """Every request is answered: the held message is read now, then the client."""
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            return

        async def resume() -> None:
            try:
                waiting()
            finally:
                self._release_client()

        self._spawn(resume())

    def _standard(self, text: str) -> str:
        """``text`` as the server reads it now, in the form the analysis reads (with
        standard_conforming_strings on); remembered for the mirror's later lookups."""
        if not scs_dependent(text):
            return text
        std: str | None = text
        if not self.scs_on():
            try:
                std = rewrite_nonstandard_strings(text)
            except ValueError:  # U&'' with the setting off: the server refuses it too
                std = None
        known = self._lexed.get(text, _MISSING)
        self._lexed.put(
            text, std if known is _MISSING or known == std else None, text_cost(text, copies=2)
        )
        return text if std is None else std

    def _statement_of(self, query: str) -> StatementInfo:
        """The statement the server has for a text the mirror kept (as the client sent it)."""
        std = self._lexed.get(query, _MISSING) if "\\" in query else _MISSING
        if isinstance(std, str):
            return self.planner.statement(std)
        if std is not _MISSING or scs_dependent(query):  # read both ways, or forgotten
            return _unknown_source(
                "a statement whose text reads differently with standard_conforming_strings "
                "on and off"
            )
        return self.planner.statement(query)

    def _fallback_plan(self, fields: list[Field], exc: Exception) -> Any:
        """A result whose plan failed: every column NULL (the session goes on), unless the
        catalog cannot be reached or masking cannot be built, which end the session
        (:meth:`fail`: the error is raised again)."""
        if isinstance(exc, MaskingUnavailable) or (
            isinstance(exc, CatalogError) and not str(exc).startswith("catalog lookup incomplete")
        ):
            raise exc
        log.event(
            logger,
            "masking_plan_fallback",
            logging.WARNING,
            peer=self.session.peer,
            principal=self.principal.label(),
            tier=self.tier,
            error=type(exc).__name__,
            columns=len(fields),
        )
        return self.planner.fallback_plan(fields)

    def _parsed(self, m: Any) -> None:
        self._forward_client(m)

    def _with_sources(self, stmts: list[StatementInfo]) -> list[StatementInfo]:
        """``stmts`` and, for a FETCH / MOVE / EXECUTE among them, the statement it runs as the
        mirror has it now: a cursor declared or a statement prepared under an older policy is
        judged again by the current one (a verdict this guard already gave is cached)."""
        out = stmts
        for info in stmts:
            head = info.text.lstrip()[:1]
            if head not in _SOURCE_HEADS or not info.parsed:
                continue
            obj = self._sql_object_of(info)
            if obj is None or obj[0] in ("declare", "prepare"):
                continue
            source = self._resolve(info)
            if source is not info and source.parsed:
                out = [*out, source]
        return out

    def _bind(self, m: Any) -> None:
        """A Bind of a statement parsed under an older policy (a reload since) is judged by the
        current one first (the guard of that policy has no verdict on its text yet)."""
        _, pos = _cstring(m.body, 0)
        sname, _ = _cstring(m.body, pos)
        stmt = self.mirror.projected_statement(sname)
        if stmt is None or self._guard.judged(stmt.query):
            self._forward_client(m)
            return
        info = self._resolve(self._statement_of(stmt.query))
        if not info.parsed or not self._guard.intercept(m, [info], lambda: self._forward_client(m)):
            self._forward_client(m)

    def refuse_bind(self, error: bytes) -> None:
        """Answer a Bind with ``error``: a Parse that fails under a name of its own goes
        upstream in its place (the server skips to Sync as for the Bind's own error; the
        client's statements and portals stay as they were)."""
        nonce = self._marker(error)
        marker = wire.cstr(nonce) + wire.cstr(f'SELECT "{nonce}"') + b"\0\0"
        self._segment()
        self.session.write_upstream(wire.frame(b"P", marker))

    def _query_statements(self, m: Any) -> tuple[StatementInfo, list[StatementInfo]]:
        """A Query message's text and its statements (as the server will split them)."""
        body = m.body
        end = body.find(b"\0")
        text = self._standard((body if end < 0 else body[:end]).decode("utf-8", "replace"))
        whole = self.planner.statement(text)
        return whole, (self._split(text) if whole.parsed else [whole])

    def _parse_statement(self, m: Any) -> StatementInfo:
        body = m.body
        _, pos = _cstring(body, 0)
        text, _ = _cstring(body, pos)
        return self.planner.statement(self._standard(text.decode("utf-8", "replace")))

    def _sync(self) -> None:
        # client_message has already reset _after_execute: the Sync's own tag is not E
        after_execute = self._sync_after_execute
        if self._copy_in:
            return  # ignored by the server: no ReadyForQuery answers it
        seg = self._segment()
        seg.synced = True
        seg.sync_after_execute = after_execute

    def _segment(self) -> _Segment:
        tail = self._requests[-1] if self._requests else None
        if isinstance(tail, _Segment) and not tail.synced:
            return tail
        seg = _Segment()
        self._requests.append(seg)
        return seg

    def _split(self, text: str) -> list[StatementInfo]:
        hit = self._splits.get(text)
        if hit is not None:
            self._splits.move_to_end(text)
            return hit
        try:
            parts = list(_pg.split(text, with_parser=True))
        except Exception:  # unparsable: the server refuses it too; lineage of the whole text
            parts = [text]
        infos = [self.planner.statement(p) for p in parts] or [self.planner.statement(text)]
        self._splits.put(text, infos, text_cost(text, copies=3))
        if len(self._splits) > _SPLIT_CACHE:
            self._splits.popitem(last=False)
        return infos

    def _sql_object_of(self, info: StatementInfo) -> tuple[str, str] | None:
        text = info.text
        if text in self._sql_objects:
            return self._sql_objects[text]
        obj = _sql_object(text) if info.parsed else None
        self._sql_objects.put(text, obj, text_cost(text))
        return obj

    def _resolve(self, info: StatementInfo, depth: int = 0) -> StatementInfo:
        """The statement whose columns ``info``'s result has, as the server has it now: a FETCH
        reads its cursor's (or protocol portal's) query, an EXECUTE its prepared statement's
        (SQL PREPARE or protocol Parse alike).  One the mirror does not know (a cursor a
        function opened...) is of unknown lineage: every column is treated as derived from a
        masked one (fail closed)."""
        obj = self._sql_object_of(info)
        if obj is None or obj[0] in ("declare", "prepare") or depth > 4:
            return info
        kind, name = obj
        raw = name.encode("utf-8", "surrogatepass")
        query: str | None = None
        if kind == "fetch":
            portal = self.mirror.portal(raw)
            query = portal.query if portal is not None and portal.known else None
        else:
            stmt = self.mirror.statement(raw)
            query = stmt.query if stmt is not None else None
        if query is None:
            return _unknown_source(f"{kind} of {name!r}, which the gateway did not see made")
        return self._resolve(self._statement_of(query), depth + 1)

    def _portal_info(self, portal: bytes) -> StatementInfo:
        """What an Execute of ``portal`` runs, as the server has it now."""
        p = self.mirror.portal(portal)
        if p is None or not p.known:
            return _unknown_source("a portal the gateway did not see bound")
        return self._resolve(self._statement_of(p.query))

    def _query(self, m: Any, whole: StatementInfo, split: list[StatementInfo]) -> None:
        # FETCH / EXECUTE are resolved when their result arrives (the server's state then)
        infos = split if whole.parsed else [whole]
        copies = [i for i, info in enumerate(infos) if _is_copy_out(info)]
        if not copies:
            self._requests.append(_Query(whole, infos))
            self._forward_client(m)
            return
        # plan the COPY before the server runs it: on refusal it never does
        self.session.client.hold()
        self._spawn(self._query_with_copy(m, whole, infos, copies))

    async def _query_with_copy(
        self, m: Any, whole: StatementInfo, infos: list[StatementInfo], copies: list[int]
    ) -> None:
        q = _Query(whole, infos)
        try:
            for i in copies:
                fmt = _copy_format(infos[i])
                q.copy_plans[i] = (await self.planner.copy_plan(infos[i], fmt, []), fmt)
        except MaskRefusal as exc:
            self._refuse_request(exc.message, exc.sqlstate)
            self._release_client()
            return
        except Exception as exc:
            self.fail("copy_plan", exc)
            return
        if self._closed:
            return
        self._requests.append(q)
        self._forward_client(m)
        self._release_client()

    def _release_client(self) -> None:
        if not self._closed:
            self.session.client.release()

    release_client = _release_client

    def refuse_query(self, error: bytes) -> None:
        """Answer a Query with ``error`` (an ErrorResponse) instead of running it."""
        self._refuse_request("", error=error)

    def refuse_parse(self, m: Any, error: bytes) -> None:
        """Answer a Parse with ``error``: a Parse of the same statement name that fails on the
        server goes upstream in its place (the server skips to Sync as for the Parse's own
        error; a named statement of that name stays as it was, the unnamed one is gone)."""
        name, _ = _cstring(m.body, 0)
        nonce = self._marker(error)
        self._segment()
        marker = name + b"\0" + wire.cstr(f'SELECT "{nonce}"') + b"\0\0"
        self.session.write_upstream(wire.frame(b"P", marker))

    def _refuse_request(
        self,
        message: str,
        sqlstate: str = "0A000",
        *,
        error: bytes | None = None,
        function_call: bool = False,
    ) -> None:
        """Answer a request (Query, FunctionCall) with an error instead of running it.

        Idle and outside a transaction block the gateway answers itself; otherwise a marker
        statement fails on the server, so the server's transaction state and response order
        stay authoritative (see :mod:`veilgate.gateway.enforce`)."""
        if error is None:
            log.event(
                logger,
                "masking_refused",
                logging.INFO,
                peer=self.session.peer,
                principal=self.principal.label(),
                sqlstate=sqlstate,
                reason=message,
            )
            error = wire.error_response("ERROR", sqlstate, message)
        state = self.session.state
        if not self._requests and state.pending <= 1 and state.tx_status in (0, _IDLE):
            if self.session.recording is not None:
                code = wire.parse_error_fields(error[5:]).get("C", sqlstate)
                self.session.recording.refused(code)
            state.discard_request()
            self.mirror.answered_locally()
            self.session.write_client(error + wire.ready_for_query(b"I"))
            return
        if function_call:
            self.mirror.function_call_replaced(state.pending)
        nonce = self._marker(error)
        self._requests.append(_Query(self.planner.statement(""), []))
        self.session.write_upstream(wire.frame(b"Q", wire.cstr(f'SELECT "{nonce}"')))

    def _marker(self, error: bytes) -> str:
        nonce = MARKER_PREFIX + secrets.token_hex(12)
        self._markers[nonce.encode()] = error
        if self.session.recording is not None:  # the message being handled is refused
            self.session.recording.refused(wire.parse_error_fields(error[5:]).get("C", "0A000"))
        return nonce

    def _execute(self, m: Any) -> None:
        body = m.body
        portal, _ = _cstring(body, 0)
        # a COPY is planned before it runs: from the portal the server will have by then
        for cand in self.mirror.portal_candidates(portal):
            info = self._resolve(self._statement_of(cand.query)) if cand and cand.known else None
            if _is_copy_out(info):
                assert info is not None
                self.session.client.hold()
                self._spawn(self._execute_copy(m, portal, info))
                return
        self._send_execute(m, portal, None, None)

    def _send_execute(
        self, m: Any, portal: bytes, info: StatementInfo | None, copy: tuple[Any, int] | None
    ) -> None:
        seg = self._segment()
        # the portal's own RowDescription, with the result formats its Bind chose; which SQL
        # it runs is read from the mirror when that reply arrives
        seg.expects.append(_Describe(True, info, portal))
        seg.expects.append(_Execute(info, copy, portal))
        self.session.write_upstream(wire.frame(b"D", b"P" + portal + b"\0"))
        self._forward_client(m)

    async def _execute_copy(self, m: Any, portal: bytes, info: StatementInfo) -> None:
        fmt = _copy_format(info)
        try:
            plan = await self.planner.copy_plan(info, fmt, [])
        except MaskRefusal as exc:
            # in place of the Execute, a Parse that fails: the server skips to Sync as for any
            # error, and the client gets the refusal in its place
            nonce = self._marker(wire.error_response("ERROR", exc.sqlstate, exc.message))
            marker = wire.cstr(nonce) + wire.cstr(f'SELECT "{nonce}"') + b"\0\0"
            self._segment()
            self.session.write_upstream(wire.frame(b"P", marker))
            self._release_client()
            return
        except Exception as exc:
            self.fail("copy_plan", exc)
            return
        if self._closed:
            return
        self._send_execute(m, portal, info, (plan, fmt))
        self._release_client()

    # --- server side ---------------------------------------------------------------------------

    def server_message(self, m: Any) -> bytes | None:
        """A server event: the bytes for the client, or None (swallowed, or sent later)."""
        tag = m.tag
        try:
            if tag == _T:
                return self._row_description(m)
            if tag == _H:
                return self._copy_out(m)
            if tag == _n:
                return self._no_data(m)
            if tag == _C:
                self._result_done()
                self._command_complete(m.body)
                self._statement_done()
            elif tag == _s:
                self._result_done()
                self._statement_done()
            elif tag == _I:
                self._statement_done()
            elif tag == _E:
                self._result_done()
                stmt = self._completed_statement()
                replaced = self._error(m.body)
                if replaced is not None:
                    return replaced
                return self._side_masked(self._server_frame(m), stmt)
            elif tag in _SIDE_TAGS:
                stmt = self._completed_statement() if tag == _N else None
                return self._side_masked(self._server_frame(m), stmt)
            elif tag == _G:
                self._copy_in_started()
            elif tag == _Z:
                self._copy_in = False
                self._result_done()
                if self._settled():
                    self._requests.popleft()
                if self._markers and not self._requests:
                    self._markers.clear()
                if self._waiting is not None and not self._settled():
                    self._resume_waiting()
        except _Mismatch as exc:
            self.fail("protocol", str(exc))
            return None
        except Exception as exc:  # never forward rows a failed plan was meant for
            self.fail("internal", exc)
            return None
        return self._server_frame(m)

    def _settled(self) -> bool:
        """Drop the head segment when a Query ended it (extended messages, no Sync, then a
        Query: the Query's replies follow the segment's, and one ReadyForQuery ends both).
        True when a request is in flight."""
        reqs = self._requests
        while len(reqs) > 1 and isinstance(reqs[0], _Segment) and not reqs[0].synced:
            if reqs[0].expects:
                break
            reqs.popleft()
        return bool(reqs)

    def _head(self) -> _Query | _Segment:
        if not self._settled():
            raise _Mismatch("a result arrived with no request in flight")
        return self._requests[0]

    def _expect(self, kind: type[_Describe] | type[_Execute]) -> _Describe | _Execute:
        head = self._head()
        if not isinstance(head, _Segment) or not head.expects:
            raise _Mismatch(f"unexpected reply ({kind.__name__[1:]})")
        item = head.expects[0]
        if not isinstance(item, kind):
            raise _Mismatch(f"reply out of order ({kind.__name__[1:]})")
        return item

    def _row_description(self, m: Any) -> bytes | None:
        head = self._head()
        swallow = False
        if isinstance(head, _Query):
            info = self._resolve(head.current())
        else:
            d = self._expect(_Describe)
            head.expects.popleft()
            assert isinstance(d, _Describe)
            if not d.injected:
                # the client's own Describe: no rows follow it; the Execute's injected
                # Describe installs the plan
                return self._server_frame(m)
            swallow = True
            info = self._described(d.info, d.portal)
        fields = parse_row_description(m.body)
        try:
            plan = self.planner.row_plan_cached(fields, info)
        except Exception as exc:
            plan = self._fallback_plan(fields, exc)
        if plan is not None:
            self._install(plan, fields, info)
            self._notice_unseen()
            return None if swallow else self._server_frame(m)
        frame = None if swallow else self._server_frame(m)
        self.session.upstream_side().hold()
        self._spawn(self._plan_rows(fields, info, frame))
        return None

    async def _plan_rows(
        self, fields: list[Field], info: StatementInfo, frame: bytes | None
    ) -> None:
        try:
            plan = await self.planner.row_plan(fields, info)
        except Exception as exc:
            try:
                plan = self._fallback_plan(fields, exc)
            except Exception as again:
                self.fail("row_plan", again)
                return
        if self._closed:
            return
        self._install(plan, fields, info)
        self._notice_unseen()
        if frame is not None:
            self.session.write_client(frame)
        self.session.upstream_side().release()

    def _notice_unseen(self) -> None:
        """Tell the client when its result was planned without catalog facts (a relation or
        type of its own open transaction, a temporary table): those columns are masked as
        unknown lineage.  Fail closed means mask, not disconnect."""
        unseen = self.planner.unseen
        if not unseen:
            return
        log.event(
            logger,
            "masking_unseen_objects",
            logging.INFO,
            peer=self.session.peer,
            principal=self.principal.label(),
            objects=sorted(unseen),
        )
        self.session.write_client(
            wire.notice_response(
                "01000",
                "veilgate: some result columns come from a table, view or type the gateway "
                "cannot look up yet; they are masked by their origin as far as the statement "
                "shows it, as of unknown origin otherwise",
                detail="objects created in this session's open transaction, and temporary "
                f"tables, are not visible to the gateway's catalog: {', '.join(sorted(unseen))}",
                hint="commit the transaction that creates them for their masking rules to apply",
            )
        )

    def _described(self, info: StatementInfo | None, portal: bytes | None) -> StatementInfo:
        if portal is not None:
            return self._portal_info(portal)
        return info if info is not None else _unknown_source("a result of no known request")

    def _install(self, plan: Any, fields: list[Field], info: StatementInfo) -> None:
        self.session.upstream_rb.set_row_plan(plan)
        self._result = _Result(plan, fields, info)

    def _no_data(self, m: Any) -> bytes | None:
        head = self._head()
        if isinstance(head, _Segment):
            d = self._expect(_Describe)
            head.expects.popleft()
            assert isinstance(d, _Describe)
            if d.injected:
                return None
        return self._server_frame(m)

    def _copy_out(self, m: Any) -> bytes | None:
        head = self._head()
        if isinstance(head, _Query):
            info = self._resolve(head.current())
            planned = head.copy_plans.get(head.index)
        else:
            e = self._expect(_Execute)
            assert isinstance(e, _Execute)
            info = self._described(e.info, e.portal)
            planned = e.copy_plan
            if e.info is None or e.info.text != info.text:
                # planned for another portal than the server's (a Bind that failed): again
                planned = None
        overall, formats = _copy_out_formats(m.body)
        frame = self._server_frame(m)
        fields = [_copy_field(i, f) for i, f in enumerate(formats)]
        if planned is not None and planned[0] is not None and planned[1] == overall:
            self._install(planned[0], fields, info)
            return frame
        # not planned ahead (COPY reached through a function, a rule...), another format, or
        # columns the side connection could not describe (it is not asked again)
        describe = planned is None or planned[0] is not None
        self.session.upstream_side().hold()
        self._spawn(self._plan_copy(info, overall, formats, fields, frame, describe))
        return None

    async def _plan_copy(
        self,
        info: StatementInfo,
        overall: int,
        formats: list[int],
        fields: list[Field],
        frame: bytes,
        describe: bool,
    ) -> None:
        try:
            plan = await self.planner.copy_plan(info, overall, formats) if describe else None
            if plan is None:  # from the CopyOutResponse's columns and the statement's lineage
                plan = await self.planner.copy_plan_undescribed(info, overall, formats)
        except MaskRefusal as exc:
            # the server is already streaming: the session cannot continue unmasked
            self.fail("copy_refused", exc.message)
            return
        except Exception as exc:
            self.fail("copy_plan", exc)
            return
        if self._closed:
            return
        self._install(plan, fields, info)
        self._notice_unseen()
        self.session.write_client(frame)
        self.session.upstream_side().release()

    def _copy_in_started(self) -> None:
        """CopyInResponse: the server ignores Sync until the copy ends.  A Sync the client sent
        right behind the COPY's Execute (libpq does) was read in copy-in mode: it ends nothing,
        so the head segment goes on into the next one."""
        self._copy_in = True
        if self._waiting is not None:
            # a statement held for the setting would wait for the copy's end, which the
            # client (held) cannot send: read it now (it is refused, nothing is guessed)
            self._resume_waiting()
        head = self._requests[0] if self._settled() else None
        if isinstance(head, _Segment) and head.synced and head.sync_after_execute:
            head.synced = False
            head.sync_after_execute = False
            nxt = self._requests[1] if len(self._requests) > 1 else None
            if isinstance(nxt, _Segment):
                head.expects.extend(nxt.expects)
                head.synced = nxt.synced
                head.sync_after_execute = nxt.sync_after_execute
                del self._requests[1]

    def _statement_done(self) -> None:
        """CommandComplete / PortalSuspended / EmptyQueryResponse: the head moves on."""
        if not self._settled():
            return
        head = self._requests[0]
        if isinstance(head, _Query):
            head.index += 1
        elif head.expects and isinstance(head.expects[0], _Execute):
            head.expects.popleft()

    def _error(self, body: bytes) -> bytes | None:
        if self._settled():
            head = self._requests[0]
            if isinstance(head, _Segment):
                # the server skips to Sync: nothing else of this segment is answered
                head.expects.clear()
        if self._markers and _MARKER_PREFIX_B in body:
            for nonce in self._markers:
                if nonce in body:
                    return self._markers.pop(nonce)
        return None

    def _command_complete(self, body: bytes) -> None:
        # DDL (CREATE / ALTER / DROP ...) may change what a column is: the catalog forgets;
        # a table the statement created joins the session's own (the catalog cannot see it)
        self.planner.note_command_tag(body, self._completed_statement())

    def _completed_statement(self) -> StatementInfo | None:
        """The statement a CommandComplete (an error, a notice) answers: the head request's
        current one."""
        if not self._settled():
            return None
        head = self._requests[0]
        if isinstance(head, _Query):
            return head.current()
        item = head.expects[0] if head.expects else None
        if item is None:
            return None
        if item.info is not None:
            return item.info
        # what the portal runs, as the mirror has it now
        portal = item.portal
        return self._portal_info(portal) if portal is not None else None

    def _side_masked(self, frame: bytes, stmt: StatementInfo | None) -> bytes:
        """An error / notice / notification / parameter frame with what it may echo of masked
        values masked (see :mod:`veilgate.masking.sidechannel`)."""
        tag, body = frame[:1], frame[5:]
        side = self._side
        if tag in (b"E", b"N"):
            res = None
            if stmt is not None and stmt.parsed:
                res = self.planner.analyzer(stmt.text).cached(stmt.text)
            new = side.error_or_notice(body, res, stmt.text if stmt is not None else "")
        elif tag == b"A":
            new = side.notification(body)
        elif tag == b"S":
            new = side.parameter_status(body)
        else:
            new = None
        return frame if new is None else wire.frame(tag, new)

    # --- audit ---------------------------------------------------------------------------------

    def _result_done(self) -> None:
        """A result ended: report what its plan masked (counts only)."""
        r = self._result
        if r is None:
            return
        self._result = None
        try:
            tallies = self.planner.take_tallies(r.plan, r.fields)
        except Exception as exc:  # counting must never break the data path
            log.event(logger, "mask_tally_failed", logging.WARNING, error=str(exc))
            return
        entities: dict[str, int] = {}
        columns: dict[str, dict[str, int]] = {}
        for column, counts in tallies.items():
            kept = {e: n for e, n in counts.items() if n > 0}
            if kept:
                columns[column] = kept
                for e, n in kept.items():
                    entities[e] = entities.get(e, 0) + n
        if not entities:
            return
        masked = self.masked
        for e, n in entities.items():
            metrics.masked_values_total.inc(n, entity=e)
            masked[e] = masked.get(e, 0) + n
        if self.audit is None:
            return
        event = MaskEvent.create(
            self.principal,
            session_id=self.session.peer,
            tier=self.tier,
            fingerprint=statement_fingerprint(r.info.text),
            entities=entities,
            columns=columns,
        )
        try:
            self.audit.emit(event)
        except (OSError, ValueError) as exc:
            log.event(logger, "audit_failed", logging.ERROR, error=str(exc))


def _unknown_source(why: str) -> StatementInfo:
    """Lineage of a result whose SQL the gateway does not know: unknown (not parsed), so the
    planner treats every computed column as derived from a masked one."""
    return StatementInfo(f"-- {why}", False, error=why)


def scs_dependent(text: str) -> bool:
    """Whether ``text`` reads differently with standard_conforming_strings on and off: an
    ordinary ``'...'`` (or ``N'...'``) literal, as read with it on, holds a backslash (with it
    off a backslash escapes the next character, a quote included, so even where the literal
    ends differs).  Without one, both read the same tokens (escape strings, dollar quotes,
    identifiers and comments do not depend on it).  Text that cannot be read with a backslash
    in it counts as dependent."""
    if "\\" not in text:
        return False
    try:
        tokens = _pg.scan(text)
    except Exception:
        return True
    for t in tokens:
        piece = text[t.start : t.end + 1]
        if "\\" in piece and (piece[:1] == "'" or piece[:2] in ("N'", "n'")):
            return True
    return False


def _message_text(m: Any) -> str:
    """The statement text of a Query or Parse message ('' when malformed)."""
    body = cast(bytes, m.body)
    if m.tag == _P:
        start = body.find(b"\0") + 1
        if start <= 0:
            return ""
        body = body[start:]
    end = body.find(b"\0")
    return (body if end < 0 else body[:end]).decode("utf-8", "replace")


def _copy_field(index: int, fmt: int) -> Field:
    from veilgate.masking.planner import Field

    return Field(f"column{index + 1}", 0, 0, 0, fmt)
