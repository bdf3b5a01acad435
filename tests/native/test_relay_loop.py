"""A BufferedProtocol reading into a RecvBuffer through a real socket, under both loops.

stdlib asyncio calls ``get_buffer(-1)`` and releases its view before ``buffer_updated``; uvloop
calls ``get_buffer(65536)`` and releases after.  The output must equal the input either way.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop
import veilgate_native as vn
from reference_framer import data_row, frame_stream, msg, normalize, query, result_set

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


class RecvProtocol(asyncio.BufferedProtocol):
    def __init__(self, rb: vn.RecvBuffer, done: asyncio.Future[None]) -> None:
        self.rb = rb
        self.done = done
        self.results: list[object] = []
        self.hints: set[int] = set()
        self.exports_in_updated: set[int] = set()

    def get_buffer(self, sizehint: int) -> vn.RecvBuffer:
        self.hints.add(sizehint)
        self.rb.prepare(sizehint)
        return self.rb

    def buffer_updated(self, nbytes: int) -> None:
        self.exports_in_updated.add(self.rb.exports)
        self.results.append(self.rb.advance(nbytes))

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def relay(stream: bytes, rb: vn.RecvBuffer) -> RecvProtocol:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    b.setblocking(False)
    done: asyncio.Future[None] = loop.create_future()
    transport, proto = await loop.create_connection(lambda: RecvProtocol(rb, done), sock=a)
    try:
        # Uneven writes so reads land at arbitrary offsets.
        pos, step = 0, 1
        while pos < len(stream):
            await loop.sock_sendall(b, stream[pos : pos + step])
            pos += step
            step = step * 7 % 150_001 + 1
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(done, 30)
    finally:
        transport.close()
        b.close()
    return proto


def big_stream() -> bytes:
    rows = [[b"x" * 30, None, b"y" * 29, b"", b"z" * 31, b"w" * 30] for _ in range(2000)]
    out = result_set(rows, [f"c{i}" for i in range(6)])
    out += data_row([b"h" * 1_500_000])  # larger than any buffer: streamed
    out += msg(b"T", b"r" * 300_000)  # an event larger than the buffer: grown to fit
    out += msg(b"N", b"notice\0") * 100
    return out


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_stream_through_a_socket(loop_name: str) -> None:
    stream = big_stream()
    rb = vn.RecvBuffer(vn.SERVER, vn.SessionState(), capacity=65536)
    rb.set_events(b"TZ")
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        proto = runner.run(relay(stream, rb))
    got = normalize(proto.results)
    assert got.flat() == stream
    assert got.items == frame_stream(stream, events=b"TZ").output.items
    assert rb.exports == 0 and rb.buffered == 0
    if loop_name == "uvloop":
        assert proto.exports_in_updated == {1}  # uvloop still holds its view
    else:
        assert proto.exports_in_updated == {0}
        assert proto.hints == {-1}


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_client_side_requests_through_a_socket(loop_name: str) -> None:
    session = vn.SessionState()
    rb = vn.RecvBuffer(vn.CLIENT, session)
    rb.set_events(b"Q")
    stream = b"".join(query(f"select {i}") for i in range(500)) + msg(b"S")
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        proto = runner.run(relay(stream, rb))
    got = normalize(proto.results)
    assert [b for kind, b in got.items if kind == "event"] == [
        query(f"select {i}") for i in range(500)
    ]
    assert got.flat() == stream
    assert (session.pending, session.busy) == (501, True)
