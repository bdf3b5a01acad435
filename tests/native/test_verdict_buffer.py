"""A client RecvBuffer armed with a VerdictCache: which Queries it answers natively (forwarded
as bytes, counted, kept for the decision events) and which it surfaces (fail closed)."""

from __future__ import annotations

import veilgate_native as vn
from drive import events_of, read_cycle
from reference_framer import msg, query

SELECT = "select * from orders where id = 1"


def _armed(**kw: object) -> tuple[vn.RecvBuffer, vn.VerdictCache, object]:
    cache = vn.VerdictCache()
    verdict = object()
    assert cache.insert(7, SELECT.encode(), True, verdict, "rule-a", "fp")
    rb = vn.RecvBuffer(vn.CLIENT, vn.SessionState())
    rb.set_events(b"QP")
    rb.set_barrier_events(b"QP")
    rb.set_verdicts(cache, 7, **kw)  # type: ignore[arg-type]
    return rb, cache, verdict


def test_a_cached_shape_is_forwarded_and_kept_for_its_event() -> None:
    rb, cache, verdict = _armed(events=True)
    stream = query("select * from orders where id = 42") + query(
        "select * from orders where id = 9"
    )
    _, out = read_cycle(rb, stream, 65536)
    # both answered: one bytes object, no event, no barrier stop
    assert out == stream
    assert rb.verdict_events == 2 and cache.hits == 2
    count, hits = rb.take_verdict_hits()
    assert count == 2
    assert [(v is verdict, t) for v, t in hits] == [
        (True, b"select * from orders where id = 42"),
        (True, b"select * from orders where id = 9"),
    ]
    assert rb.take_verdict_hits() == (0, [])


def test_what_is_not_answered_surfaces_in_order() -> None:
    rb, cache, _ = _armed(max_frame=80)
    hit = query("select * from orders where id = 5")
    other = query("select * from customers where id = 5")  # another shape
    effects = query("begin")  # the mirror must see it
    big = query("select * from orders where id = " + "9" * 80)  # over max_frame
    semi = query("select * from orders where id = 1; select 2")
    bad = msg(b"Q", b"select * from orders where id = 1\0junk\0")  # bytes after the text
    for m in (other, effects, big, semi, bad):
        _, out = read_cycle(rb, hit + m + hit, 65536)
        evs = events_of(out)
        assert [bytes(e.frame()) for e in evs] == [m]
        assert out[0] == hit  # type: ignore[index]
        # the barrier stopped the walk after the surfaced Query: the rest frames next
        assert rb.at_barrier
        assert rb.advance(0) == hit
    assert cache.hits == 5 * 2


def test_a_reload_disarms_at_once_and_none_disarms() -> None:
    rb, cache, _ = _armed()
    _, out = read_cycle(rb, query("select * from orders where id = 3"), 65536)
    assert type(out) is bytes
    cache.clear()  # the engine reloaded: the buffer was armed under the old generation
    cache.insert(7, SELECT.encode(), True, object(), "rule-a", "fp")
    _, out = read_cycle(rb, query("select * from orders where id = 3"), 65536)
    assert len(events_of(out)) == 1
    rb.set_verdicts(cache, 7)  # re-armed under the new generation
    _, out = read_cycle(rb, query("select * from orders where id = 4"), 65536)
    assert type(out) is bytes
    rb.set_verdicts(None)
    assert not rb.verdicts_armed
    _, out = read_cycle(rb, query("select * from orders where id = 4"), 65536)
    assert len(events_of(out)) == 1


def test_another_scope_misses_and_server_buffers_refuse() -> None:
    cache = vn.VerdictCache()
    cache.insert(7, SELECT.encode(), True, object(), "r", "f")
    rb = vn.RecvBuffer(vn.CLIENT, vn.SessionState())
    rb.set_events(b"Q")
    rb.set_verdicts(cache, 8)
    _, out = read_cycle(rb, query(SELECT), 65536)
    assert len(events_of(out)) == 1
    try:
        vn.RecvBuffer(vn.SERVER).set_verdicts(cache, 7)
    except ValueError:
        pass
    else:
        raise AssertionError("a server buffer must refuse a verdict cache")


def test_exact_entries_need_the_exact_text() -> None:
    cache = vn.VerdictCache()
    assert cache.insert(1, b"set x = 5", False, "v", "r", "f")
    assert cache.lookup(1, b"set x = 5") == "v"
    assert cache.lookup(1, b"set x = 6") is None
    assert cache.lookup(1, b"set x =  5") is None


# --- standing grants (issue 13): a principal's grant scope -------------------------------------


def _granted(ttl: float = 60.0) -> tuple[vn.RecvBuffer, vn.VerdictCache, vn.GrantHandle, object]:
    cache = vn.VerdictCache()
    grant = vn.GrantHandle(ttl)
    use = object()
    assert cache.insert_grant(
        1001, SELECT.encode(), True, use, "rule-jit", "fp", "ap-request", grant
    )
    rb = vn.RecvBuffer(vn.CLIENT, vn.SessionState())
    rb.set_events(b"QP")
    rb.set_verdicts(cache, 7, events=True, grant_scope=1001)
    return rb, cache, grant, use


def test_a_grant_answers_under_its_grant_scope_and_counts_each_use() -> None:
    rb, cache, grant, use = _granted()
    before = vn.grant_hits()
    stream = query("select * from orders where id = 4") + query("select * from orders where id = 5")
    _, out = read_cycle(rb, stream, 65536)
    assert out == stream
    assert vn.grant_hits() - before == 2
    assert grant.take_uses() == 2 and grant.take_uses() == 0 and grant.total_uses == 2
    count, hits = rb.take_verdict_hits()
    assert count == 2 and [v is use for v, _ in hits] == [True, True]
    # a buffer without the grant scope, or with another principal's, never answers from it
    for scope in (None, 1002):
        other = vn.RecvBuffer(vn.CLIENT, vn.SessionState())
        other.set_events(b"QP")
        other.set_verdicts(cache, 7, grant_scope=scope)
        _, out = read_cycle(other, query("select * from orders where id = 4"), 65536)
        assert len(events_of(out)) == 1
    # nor does a lookup (it would count a use)
    assert cache.lookup(1001, b"select * from orders where id = 4") is None
    assert grant.take_uses() == 0


def test_a_revoked_or_expired_grant_answers_nothing_and_is_purged() -> None:
    rb, cache, grant, _ = _granted()
    grant.revoke()
    assert not grant.live
    _, out = read_cycle(rb, query("select * from orders where id = 4"), 65536)
    assert len(events_of(out)) == 1  # surfaces: the control plane asks the store
    assert grant.take_uses() == 0
    assert cache.purge_grants() == 1 and len(cache) == 0

    import time

    rb, cache, grant, _ = _granted(ttl=0.05)
    _, out = read_cycle(rb, query("select * from orders where id = 4"), 65536)
    assert type(out) is bytes
    time.sleep(0.06)
    _, out = read_cycle(rb, query("select * from orders where id = 4"), 65536)
    assert len(events_of(out)) == 1
    assert grant.take_uses() == 1 and not grant.live
    assert not vn.GrantHandle(0.0).live and not vn.GrantHandle(float("nan")).live


def _parse(name: bytes, text: bytes, types: bytes = b"\0\0") -> bytes:
    return msg(b"P", name + b"\0" + text + b"\0" + types)


def test_a_reparse_of_the_held_statement_is_answered_and_nothing_else() -> None:
    cache = vn.VerdictCache()
    verdict = object()
    held = b"select * from orders where id = $1"
    rb = vn.RecvBuffer(vn.CLIENT, vn.SessionState())
    rb.set_events(b"QP")
    rb.set_barrier_events(b"QP")
    rb.set_verdicts(
        cache, 0, queries=False, parses=[(b"", held, verdict, "rule-a", "fp", None)], events=True
    )
    same = _parse(b"", held, b"\0\1\0\0\0\x17")  # parameter types aside: the same statement
    bind = msg(b"B", b"\0\0\0\0\0\0\0\0")
    _, out = read_cycle(rb, same + bind + same, 65536)
    assert type(out) is bytes and out == same + bind + same
    count, hits = rb.take_verdict_hits()
    assert count == 2 and [(v is verdict, t) for v, t in hits] == [(True, held)] * 2
    surfaced = (
        _parse(b"", held + b" "),  # another text
        _parse(b"s1", held),  # another name
        _parse(b"", held[:-1]),  # a prefix of it
        query(held.decode()),  # Queries are not armed
        msg(b"P", b"\0" + held),  # malformed: no terminator
    )
    for m in surfaced:
        _, out = read_cycle(rb, m, 65536)
        assert [bytes(e.frame()) for e in events_of(out)] == [m], m
    # a reload disarms at once, whatever the buffer was armed with
    cache.clear()
    _, out = read_cycle(rb, same, 65536)
    assert len(events_of(out)) == 1
    assert rb.take_verdict_hits()[0] == 0
