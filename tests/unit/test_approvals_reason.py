"""``SET veilgate.reason`` follows the server's transactions (gateway.approval.TxSetting): the
server's messages in order, as a session would see them."""

from __future__ import annotations

from veilgate.gateway.approval import TxSetting

IDLE, T, E = ord("I"), ord("T"), ord("E")
C_, E_, Z_ = ord("C"), ord("E"), ord("Z")


def z(s: TxSetting, status: bytes, idle: bool = True) -> None:
    s.server(Z_, status, idle)


def test_autocommit_set_is_kept_and_a_failed_implicit_transaction_undoes_it() -> None:
    s = TxSetting()
    s.set("a", local=False, tx_status=IDLE, failed_block=False)
    assert s.value == "a" and s.tracking
    s.server(C_, b"SET\0", False)
    z(s, b"I")
    assert s.value == "a" and not s.tracking
    # 'SET veilgate.reason = b; <error>' in one implicit transaction
    s.set("b", local=False, tx_status=IDLE, failed_block=False)
    s.server(E_, b"SERROR\0", False)
    z(s, b"I")
    assert s.value == "a"


def test_commit_of_a_failed_block_is_a_rollback() -> None:
    s = TxSetting()
    s.set("x", local=False, tx_status=T, failed_block=False)
    s.server(E_, b"", False)  # in the block: the block fails, nothing ends yet
    z(s, b"E")
    assert s.value == "x" and s.tracking
    s.server(C_, b"ROLLBACK\0", False)  # the server's tag for COMMIT of a failed block
    z(s, b"I")
    assert s.value is None


def test_refused_in_a_failed_block_and_local_ends_with_the_transaction() -> None:
    s = TxSetting()
    s.set("no", local=False, tx_status=E, failed_block=True)
    assert s.value is None and not s.tracking
    s.set("here", local=True, tx_status=T, failed_block=False)
    assert s.value == "here"
    s.server(C_, b"COMMIT\0", False)
    z(s, b"I")
    assert s.value is None


def test_settled_only_once_nothing_is_in_flight_and_uncertain_drops_a_change() -> None:
    s = TxSetting()
    # pipelined: an earlier request's ReadyForQuery arrives before the SET's transaction ends
    s.set("p", local=False, tx_status=IDLE, failed_block=False)
    s.server(C_, b"SELECT 1\0", False)
    z(s, b"I", idle=False)
    assert s.tracking
    s.server(C_, b"BEGIN\0", False)
    z(s, b"T", idle=False)
    s.server(C_, b"ROLLBACK\0", False)
    z(s, b"I")
    assert s.value is None  # the last transaction-ending tag was a ROLLBACK
    # a SAVEPOINT rolled back to after the change: dropped, never kept wrongly
    s.set("kept", local=False, tx_status=IDLE, failed_block=False)
    z(s, b"I")
    s.set("sp", local=False, tx_status=T, failed_block=False)
    s.server(C_, b"ROLLBACK\0", False)  # ROLLBACK TO SAVEPOINT has this tag too
    z(s, b"T")
    s.server(C_, b"COMMIT\0", False)
    z(s, b"I")
    assert s.value is None
