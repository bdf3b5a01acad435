"""A small raw PostgreSQL wire-protocol client for tests.

It builds frontend frames byte by byte (so tests can also build *wrong* ones), reads backend
messages, negotiates TLS with the :mod:`ssl` module (SSLRequest path or direct TLS, with or without
ALPN) and parses the backend messages tests assert on.  Nothing here hides protocol errors: the
raw connection returns what the server sent, and :func:`connect` raises :class:`ServerError` with
the parsed ErrorResponse fields when startup fails.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = (3 << 16) | 0
ALPN_POSTGRESQL = "postgresql"

# ---------------------------------------------------------------------------------------------
# Frontend frames


def _cstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return b + b"\0"


def untagged(body: bytes) -> bytes:
    """An untagged (startup-phase) packet: Int32 length including itself, then ``body``."""
    return struct.pack("!I", len(body) + 4) + body


def tagged(tag: bytes, body: bytes = b"") -> bytes:
    """A regular message: Byte1 tag, Int32 length including itself, body."""
    assert len(tag) == 1
    return tag + struct.pack("!I", len(body) + 4) + body


def protocol_version(major: int, minor: int) -> int:
    return (major << 16) | minor


def startup_message(params: Mapping[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", version)
    for k, v in params.items():
        body += _cstr(k) + _cstr(v)
    return untagged(body + b"\0")


def ssl_request() -> bytes:
    return untagged(struct.pack("!I", SSL_REQUEST_CODE))


def gssenc_request() -> bytes:
    return untagged(struct.pack("!I", GSSENC_REQUEST_CODE))


def cancel_request(pid: int, key: bytes | int) -> bytes:
    """CancelRequest; ``key`` is the secret key as sent in BackendKeyData (4..256 bytes)."""
    if isinstance(key, int):
        key = struct.pack("!i", key)
    return untagged(struct.pack("!Ii", CANCEL_REQUEST_CODE, pid) + key)


def password_message(password: str | bytes) -> bytes:
    return tagged(b"p", _cstr(password))


def query(sql: str) -> bytes:
    return tagged(b"Q", _cstr(sql))


def parse(name: str, sql: str, param_types: Sequence[int] = ()) -> bytes:
    body = _cstr(name) + _cstr(sql) + struct.pack("!H", len(param_types))
    body += b"".join(struct.pack("!I", t) for t in param_types)
    return tagged(b"P", body)


def bind(
    portal: str,
    statement: str,
    params: Sequence[bytes | None] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    body = _cstr(portal) + _cstr(statement)
    body += struct.pack("!H", len(param_formats)) + b"".join(
        struct.pack("!H", f) for f in param_formats
    )
    body += struct.pack("!H", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!H", len(result_formats)) + b"".join(
        struct.pack("!H", f) for f in result_formats
    )
    return tagged(b"B", body)


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return tagged(b"E", _cstr(portal) + struct.pack("!I", max_rows))


def describe(kind: str, name: str = "") -> bytes:
    assert kind in ("S", "P")
    return tagged(b"D", kind.encode() + _cstr(name))


def close(kind: str, name: str = "") -> bytes:
    assert kind in ("S", "P")
    return tagged(b"C", kind.encode() + _cstr(name))


def sync() -> bytes:
    return tagged(b"S")


def flush() -> bytes:
    return tagged(b"H")


def terminate() -> bytes:
    return tagged(b"X")


def copy_data(data: bytes) -> bytes:
    return tagged(b"d", data)


def copy_done() -> bytes:
    return tagged(b"c")


def copy_fail(message: str) -> bytes:
    return tagged(b"f", _cstr(message))


# ---------------------------------------------------------------------------------------------
# Backend messages


@dataclass(frozen=True)
class Msg:
    tag: str
    body: bytes

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 60 else self.body[:60] + b"..."
        return f"Msg({self.tag!r}, {body!r})"


class ConnectionClosed(Exception):
    """The peer closed the connection (or reset it)."""

    def __init__(self, msg: str = "connection closed", received: Sequence[Msg] = ()) -> None:
        super().__init__(msg)
        self.received = list(received)


class ServerError(Exception):
    """An ErrorResponse where the test expected success."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(f"{fields.get('S')} {fields.get('C')}: {fields.get('M')}")
        self.fields = fields

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V", self.fields.get("S", ""))


def _read_cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\0", pos)
    return body[pos:end].decode(), end + 1


def error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse / NoticeResponse body, keyed by their one-letter codes."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = _read_cstr(body, pos + 1)
        out[code] = value
    return out


def parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = _read_cstr(body, 0)
    value, _ = _read_cstr(body, pos)
    return name, value


def backend_key_data(body: bytes) -> tuple[int, bytes]:
    """(pid, secret key bytes); the key is 4 bytes in protocol 3.0, up to 256 in 3.2."""
    (pid,) = struct.unpack_from("!i", body, 0)
    return pid, body[4:]


def negotiate_protocol_version(body: bytes) -> tuple[int, list[str]]:
    """(newest version supported, unrecognised options).

    The version is the whole ``major << 16 | minor`` Int32, as PostgreSQL sends it and libpq reads
    it (protocol.sgml calls it the "newest minor version").
    """
    version, n = struct.unpack_from("!iI", body, 0)
    pos = 8
    opts = []
    for _ in range(n):
        s, pos = _read_cstr(body, pos)
        opts.append(s)
    return version, opts


@dataclass(frozen=True)
class Column:
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    typlen: int
    typmod: int
    format: int


def row_description(body: bytes) -> list[Column]:
    (n,) = struct.unpack_from("!H", body, 0)
    pos = 2
    cols = []
    for _ in range(n):
        name, pos = _read_cstr(body, pos)
        t, a, ty, tl, tm, f = struct.unpack_from("!IhIhih", body, pos)
        pos += 18
        cols.append(Column(name, t, a, ty, tl, tm, f))
    return cols


def data_row(body: bytes) -> list[bytes | None]:
    (n,) = struct.unpack_from("!H", body, 0)
    pos = 2
    out: list[bytes | None] = []
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[pos : pos + ln])
            pos += ln
    return out


def parameter_description(body: bytes) -> list[int]:
    (n,) = struct.unpack_from("!H", body, 0)
    return list(struct.unpack_from(f"!{n}I", body, 2))


def notification(body: bytes) -> tuple[int, str, str]:
    (pid,) = struct.unpack_from("!i", body, 0)
    channel, pos = _read_cstr(body, 4)
    payload, _ = _read_cstr(body, pos)
    return pid, channel, payload


def command_tag(body: bytes) -> str:
    return body.rstrip(b"\0").decode()


def auth_code(body: bytes) -> int:
    return struct.unpack_from("!I", body, 0)[0]


# ---------------------------------------------------------------------------------------------
# Connections


def client_tls_context(ca_file: str | None, alpn: Sequence[str] | None = None) -> ssl.SSLContext:
    """A verifying client context (``verify-full``) trusting ``ca_file``; ALPN if given."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if ca_file is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class RawConn:
    """A socket speaking the PostgreSQL protocol at the frame level."""

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self.sock: socket.socket = sock
        self.timeout = timeout
        self._buf = bytearray()
        self.parameters: dict[str, str] = {}
        self.backend_key: tuple[int, bytes] | None = None
        self.notices: list[dict[str, str]] = []
        self.notifications: list[tuple[int, str, str]] = []
        sock.settimeout(timeout)

    # -- plumbing

    @classmethod
    def open(cls, host: str, port: int, timeout: float = 10.0) -> RawConn:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as e:
            raise ConnectionClosed(f"connection reset: {e}") from e
        except ssl.SSLError as e:
            raise ConnectionClosed(f"TLS error: {e}") from e
        except TimeoutError:
            raise
        except OSError as e:
            raise ConnectionClosed(f"socket error: {e}") from e
        if not chunk:
            raise ConnectionClosed()
        self._buf += chunk

    def read_bytes(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < n:
            self._fill(deadline)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv(self, timeout: float | None = None) -> Msg:
        """One backend message (tag + body)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < 5:
            self._fill(deadline)
        (length,) = struct.unpack_from("!I", self._buf, 1)
        if length < 4:
            raise AssertionError(f"server sent a message with length {length}")
        while len(self._buf) < 1 + length:
            self._fill(deadline)
        tag = chr(self._buf[0])
        body = bytes(self._buf[5 : 1 + length])
        del self._buf[: 1 + length]
        return Msg(tag, body)

    def skim_until_ready(self, timeout: float = 120.0) -> tuple[str, int, list[Msg]]:
        """Read to ReadyForQuery without keeping big bodies: (tags, total bytes, small messages).

        DataRow / CopyData bodies are read in chunks and dropped, so a huge result costs the
        test process no memory; other messages are kept (parsed as usual).
        """
        deadline = time.monotonic() + timeout
        tags: list[str] = []
        kept: list[Msg] = []
        total = 0
        while True:
            header = self.read_bytes(5, timeout=max(0.001, deadline - time.monotonic()))
            tag = chr(header[0])
            (length,) = struct.unpack_from("!I", header, 1)
            if length < 4:
                raise AssertionError(f"server sent a message with length {length}")
            total += 1 + length
            remaining = length - 4
            if tag in "Dd":
                while remaining:
                    n = min(remaining, 1 << 20)
                    self.read_bytes(n, timeout=max(0.001, deadline - time.monotonic()))
                    remaining -= n
                tags.append(tag)
                continue
            body = self.read_bytes(remaining, timeout=max(0.001, deadline - time.monotonic()))
            m = Msg(tag, body)
            self._note(m)
            kept.append(m)
            tags.append(tag)
            if tag == "Z":
                return "".join(tags), total, kept

    def recv_until(self, tags: str, timeout: float | None = None) -> list[Msg]:
        """Messages up to and including the first whose tag is in ``tags``."""
        out: list[Msg] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                m = self.recv(timeout=max(0.0, deadline - time.monotonic()))
            except ConnectionClosed as e:
                raise ConnectionClosed(str(e), out + e.received) from e
            self._note(m)
            out.append(m)
            if m.tag in tags:
                return out

    def recv_until_ready(self, timeout: float | None = None) -> list[Msg]:
        return self.recv_until("Z", timeout)

    def recv_all_until_close(self, timeout: float | None = None) -> list[Msg]:
        """Everything the server sends until it closes the connection."""
        out: list[Msg] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                m = self.recv(timeout=max(0.001, deadline - time.monotonic()))
            except ConnectionClosed:
                return out
            out.append(m)

    def expect_close(self, timeout: float | None = None) -> None:
        """Assert the server closes the connection without sending anything more."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                self._fill(deadline)
                if self._buf:
                    raise AssertionError(f"expected close, got bytes {bytes(self._buf[:80])!r}")
        except ConnectionClosed:
            return

    def no_message_within(self, seconds: float) -> bool:
        """True if nothing at all arrives within ``seconds`` (connection still open)."""
        if self._buf:
            return False
        self.sock.settimeout(seconds)
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            return True
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        if not chunk:
            raise ConnectionClosed()
        self._buf += chunk
        return False

    def _note(self, m: Msg) -> None:
        if m.tag == "S":
            k, v = parameter_status(m.body)
            self.parameters[k] = v
        elif m.tag == "K":
            self.backend_key = backend_key_data(m.body)
        elif m.tag == "N":
            self.notices.append(error_fields(m.body))
        elif m.tag == "A":
            self.notifications.append(notification(m.body))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- TLS

    def request_ssl(self) -> bytes:
        """Send SSLRequest, return the one-byte answer."""
        self.send(ssl_request())
        return self.read_bytes(1)

    def start_tls(
        self,
        ca_file: str | None,
        server_hostname: str | None = "localhost",
        alpn: Sequence[str] | None = (ALPN_POSTGRESQL,),
    ) -> None:
        ctx = client_tls_context(ca_file, alpn)
        assert not self._buf, "bytes buffered before the TLS handshake"
        self.sock.settimeout(self.timeout)
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ConnectionClosed(f"connection reset during the handshake: {e}") from e

    @property
    def selected_alpn(self) -> str | None:
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.selected_alpn_protocol()
        return None

    # -- startup and queries

    def startup(
        self,
        params: Mapping[str, str],
        password: str | None = None,
        version: int = PROTOCOL_3_0,
        raise_on_error: bool = True,
    ) -> list[Msg]:
        """Send StartupMessage, answer a password request, read to ReadyForQuery.

        Returns every message received.  An ErrorResponse raises :class:`ServerError` unless
        ``raise_on_error`` is false (then the messages up to the error are returned).
        """
        self.send(startup_message(params, version))
        out: list[Msg] = []
        while True:
            m = self.recv()
            self._note(m)
            out.append(m)
            if m.tag == "R":
                code = auth_code(m.body)
                if code == 3:
                    if password is None:
                        raise AssertionError("server asked for a password; none given")
                    self.send(password_message(password))
                elif code != 0:
                    raise AssertionError(f"unexpected authentication request {code}")
            elif m.tag == "E":
                if raise_on_error:
                    raise ServerError(error_fields(m.body))
                return out
            elif m.tag == "Z":
                return out

    def simple(self, sql: str) -> list[Msg]:
        """Send a simple Query and return its messages up to ReadyForQuery."""
        self.send(query(sql))
        return self.recv_until_ready()

    def rows(self, sql: str) -> list[list[bytes | None]]:
        """Text rows of a single-statement simple query; raise ServerError on an error."""
        msgs = self.simple(sql)
        for m in msgs:
            if m.tag == "E":
                raise ServerError(error_fields(m.body))
        return [data_row(m.body) for m in msgs if m.tag == "D"]

    def scalar(self, sql: str) -> str | None:
        rows = self.rows(sql)
        assert len(rows) == 1 and len(rows[0]) == 1, rows
        v = rows[0][0]
        return None if v is None else v.decode()

    def terminate(self) -> None:
        with contextlib.suppress(OSError):
            self.send(terminate())
        self.close()


@dataclass
class Endpoint:
    """Where and how to reach a PostgreSQL-speaking server."""

    host: str
    port: int
    ca_file: str | None
    user: str
    password: str
    database: str
    server_hostname: str = "localhost"
    extra: dict[str, str] = field(default_factory=dict)

    def params(self, **overrides: str) -> dict[str, str]:
        p = {"user": self.user, "database": self.database, **self.extra}
        p.update(overrides)
        return p


def open_tls(ep: Endpoint, alpn: Sequence[str] | None = (ALPN_POSTGRESQL,)) -> RawConn:
    """TCP connect, SSLRequest, TLS handshake (verify-full against ``ep.ca_file``)."""
    c = RawConn.open(ep.host, ep.port)
    answer = c.request_ssl()
    if answer != b"S":
        c.close()
        raise AssertionError(f"SSLRequest answered {answer!r}")
    c.start_tls(ep.ca_file, ep.server_hostname, alpn)
    return c


def open_direct_tls(ep: Endpoint, alpn: Sequence[str] | None = (ALPN_POSTGRESQL,)) -> RawConn:
    """TCP connect and start TLS at once (PostgreSQL 17 direct TLS)."""
    c = RawConn.open(ep.host, ep.port)
    c.start_tls(ep.ca_file, ep.server_hostname, alpn)
    return c


def connect(
    ep: Endpoint,
    params: Mapping[str, str] | None = None,
    version: int = PROTOCOL_3_0,
    direct: bool = False,
) -> RawConn:
    """A ready session (ReadyForQuery received) over TLS."""
    c = open_direct_tls(ep) if direct else open_tls(ep)
    try:
        c.startup(ep.params(**(params or {})), password=ep.password, version=version)
    except BaseException:
        c.close()
        raise
    return c


def assert_fatal_or_nothing(received: bytes, codes: Sequence[str] = ()) -> None:
    """``received`` (raw bytes up to a close) is nothing, or one FATAL ErrorResponse with one of
    ``codes`` (any code if empty); a protocol-2 style error (no length) only has to say FATAL."""
    if not received:
        return
    assert received[:1] == b"E", f"expected an ErrorResponse or nothing, got {received[:40]!r}"
    (length,) = struct.unpack_from("!I", received.ljust(5, b"\0"), 1)
    if length + 1 == len(received):
        err = error_fields(received[5:])
        assert err.get("V") == "FATAL", err
        if codes:
            assert err.get("C") in codes, err
    else:
        assert b"FATAL" in received, received[:80]


def frames(msgs: Iterable[Msg]) -> str:
    """The tags of ``msgs`` as a string, e.g. ``"1 2 T D C Z"`` -> ``"12TDCZ"``."""
    return "".join(m.tag for m in msgs)


def first_error(msgs: Iterable[Msg]) -> dict[str, str] | None:
    for m in msgs:
        if m.tag == "E":
            return error_fields(m.body)
    return None


# ---------------------------------------------------------------------------------------------
# Where the tests connect: the gateway under test, or the cluster directly (for comparisons)


def conninfo_quote(value: str) -> str:
    if value and all(c.isalnum() or c in "._-/:@" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class Target:
    """Connection parameters for one server (gateway or direct), for every client the tests use."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    ca_file: str | None
    server_hostname: str = "localhost"

    def endpoint(self) -> Endpoint:
        return Endpoint(
            self.host,
            self.port,
            self.ca_file,
            self.user,
            self.password,
            self.dbname,
            self.server_hostname,
        )

    def conninfo(self, *, with_password: bool = True, **extra: str | int) -> str:
        """A libpq keyword/value string: verify-full against the CA, password included."""
        kv: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
            "sslmode": "verify-full" if self.ca_file else "require",
            "connect_timeout": 10,
        }
        if self.ca_file:
            kv["sslrootcert"] = self.ca_file
        if with_password:
            kv["password"] = self.password
        kv.update(extra)
        return " ".join(f"{k}={conninfo_quote(str(v))}" for k, v in kv.items())

    def ssl_context(self) -> ssl.SSLContext:
        return client_tls_context(self.ca_file)

    def asyncpg_kwargs(self, **extra: object) -> dict[str, object]:
        kw: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.dbname,
            "ssl": self.ssl_context(),
            "timeout": 15,
        }
        kw.update(extra)
        return kw

    def psql_env(self) -> dict[str, str]:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self.password
        env["PGCONNECT_TIMEOUT"] = "10"
        return env


def _attr(obj: object, *names: str, default: object = None) -> object:
    for n in names:
        if hasattr(obj, n):
            v = getattr(obj, n)
            return v() if callable(v) and n.startswith("get_") else v
    return default


def gateway_target(gateway: object) -> Target:
    """The gateway fixture as a :class:`Target` (the token is the password)."""
    ca = _attr(gateway, "ca_file", "cafile", "ca_path", "sslrootcert")
    return Target(
        host=str(_attr(gateway, "host", default="127.0.0.1")),
        port=int(_attr(gateway, "port")),  # type: ignore[call-overload]
        user=str(_attr(gateway, "user", "username", default="agent")),
        password=str(_attr(gateway, "token", "password")),
        dbname=str(_attr(gateway, "dbname", "database", "target", default="app")),
        ca_file=None if ca is None else str(ca),
        server_hostname=str(_attr(gateway, "server_hostname", default="localhost")),
    )


DIRECT_ROLE = "vg_itest_direct"
DIRECT_PASSWORD = "vg-itest-direct-pw"
_direct_ready: set[int] = set()


def direct_target(pg_cluster: object) -> Target:
    """The cluster itself over TLS + SCRAM, as a login role that has ``veilgate_app``'s rights."""
    key = id(pg_cluster)
    if key not in _direct_ready:
        pg_cluster.execute(  # type: ignore[attr-defined]
            f"""DO $$BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DIRECT_ROLE}') THEN
                CREATE ROLE {DIRECT_ROLE} LOGIN PASSWORD '{DIRECT_PASSWORD}';
              END IF;
            END$$;
            GRANT veilgate_app TO {DIRECT_ROLE};
            GRANT pg_read_all_stats TO {DIRECT_ROLE};
            GRANT pg_signal_backend TO {DIRECT_ROLE};""",
            "postgres",
        )
        _direct_ready.add(key)
    ca = _attr(pg_cluster, "ca_file")
    return Target(
        host=str(_attr(pg_cluster, "host")),
        port=int(_attr(pg_cluster, "port")),  # type: ignore[call-overload]
        user=DIRECT_ROLE,
        password=DIRECT_PASSWORD,
        dbname="app",
        ca_file=None if ca is None else str(ca),
        server_hostname=str(_attr(pg_cluster, "server_hostname", default="localhost")),
    )


def superuser_target(pg_cluster: object) -> Target:
    """The cluster's superuser over TLS (for pg_stat_activity and pg_terminate_backend)."""
    user = _attr(pg_cluster, "superuser")
    password = _attr(pg_cluster, "superuser_password")
    if user is None or password is None:
        return direct_target(pg_cluster)  # has pg_read_all_stats and pg_signal_backend
    base = direct_target(pg_cluster)
    return Target(
        host=base.host,
        port=base.port,
        user=str(user),
        password=str(password),
        dbname="postgres",
        ca_file=base.ca_file,
        server_hostname=base.server_hostname,
    )
