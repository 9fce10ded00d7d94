"""Unit tests for the list-append (Elle) checker in tests/checkers.

Small planted histories pin each anomaly of Adya's hierarchy as Elle names
them (Kingsbury & Alvaro, VLDB 2020, section 4: G0, G1a, G1b, G1c, G-single,
G2) and each read check; histories produced by a serial executor must pass,
with and without real-time order; a 20,000-transaction history bounds the
cost.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Sequence
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.checkers.list_append import (
    ListAppendResult,
    MicroOp,
    Transaction,
    check_list_append,
)

Status = Literal["ok", "fail", "info"]
STATUSES: tuple[Status, ...] = ("ok", "fail", "info")

X = b"x"
Y = b"y"


def r(key: bytes, *observed: int) -> MicroOp:
    return MicroOp("r", key, tuple(observed))


def unknown_read(key: bytes) -> MicroOp:
    return MicroOp("r", key, None)


def append(key: bytes, element: int) -> MicroOp:
    return MicroOp("append", key, element)


def txn(
    *ops: MicroOp,
    status: Status = "ok",
    call: float = 0.0,
    ret: float | None = 1.0,
    process: int = 0,
) -> Transaction:
    return Transaction(process, ops, status, call, ret)


def serial(*transactions: Transaction) -> list[Transaction]:
    """Give the transactions disjoint, increasing real-time intervals."""
    return [
        Transaction(t.process, t.ops, t.status, 2.0 * i, None if t.ret is None else 2.0 * i + 1)
        for i, t in enumerate(transactions)
    ]


def assert_valid(history: Sequence[Transaction], *, realtime: bool = False) -> ListAppendResult:
    result = check_list_append(history, realtime=realtime)
    assert result.ok, result.explanation
    assert result.anomalies == ()
    assert result.counts == {}
    return result


def assert_anomaly(
    history: Sequence[Transaction], kind: str, *, realtime: bool = False
) -> ListAppendResult:
    result = check_list_append(history, realtime=realtime)
    assert not result.ok
    assert kind in result.counts, result.explanation
    assert kind in result.explanation
    return result


# --- valid histories ------------------------------------------------------------


def test_empty_history_is_valid() -> None:
    result = assert_valid([])
    assert result.graph_transactions == 0


def test_serial_history_is_valid_under_realtime() -> None:
    history = serial(
        txn(r(X)),
        txn(append(X, 1), append(Y, 10)),
        txn(r(X, 1), append(X, 2), r(X, 1, 2)),
        txn(r(X, 1, 2), r(Y, 10)),
    )
    result = assert_valid(history, realtime=True)
    assert result.graph_transactions == 4
    assert "holds" in result.explanation


def test_concurrent_history_with_info_and_fail_is_valid() -> None:
    history = [
        txn(append(X, 1), call=0, ret=5, process=1),
        txn(r(X), append(Y, 1), call=1, ret=3, process=2),  # before T0 commits
        txn(append(X, 2), status="info", call=2, ret=None, process=3),  # committed: read below
        txn(append(X, 3), status="info", call=2, ret=None, process=4),  # never observed
        txn(append(Y, 2), r(X, 1), status="fail", call=4, ret=6, process=5),
        txn(r(X, 1, 2), r(Y, 1), call=7, ret=8, process=1),
        txn(unknown_read(X), status="info", call=9, ret=None, process=2),
    ]
    result = assert_valid(history, realtime=True)
    # The unobserved info txn, the failed txn and the read-only info txn stay out.
    assert result.graph_transactions == 4


def test_reads_of_own_appends_are_consistent() -> None:
    assert_valid(
        serial(
            txn(append(X, 1), r(X, 1), append(X, 2), r(X, 1, 2)),
            txn(append(X, 3), r(X, 1, 2, 3)),
        )
    )


def test_unknown_read_in_committed_txn_is_ignored() -> None:
    assert_valid(serial(txn(append(X, 1)), txn(unknown_read(X), r(X, 1))))


# --- cycles -------------------------------------------------------------------


def test_g0_write_cycle() -> None:
    history = [
        txn(append(X, 1), append(Y, 2), process=1),
        txn(append(X, 3), append(Y, 4), process=2),
        txn(r(X, 1, 3), r(Y, 4, 2), call=2, ret=3),
    ]
    result = assert_anomaly(history, "G0")
    cycle = next(a for a in result.anomalies if a.kind == "G0")
    assert set(cycle.transactions) == {0, 1}
    assert "T0 -ww-> T1 -ww-> T0" in cycle.description


def test_g1a_aborted_read() -> None:
    result = assert_anomaly(serial(txn(append(X, 1), status="fail"), txn(r(X, 1))), "G1a")
    assert result.anomalies[0].transactions == (1, 0)


def test_g1b_intermediate_read() -> None:
    assert_anomaly(serial(txn(append(X, 1), append(X, 2)), txn(r(X, 1)), txn(r(X, 1, 2))), "G1b")


def test_g1c_circular_information_flow() -> None:
    history = [
        txn(append(X, 1), r(Y, 2), process=1),
        txn(append(Y, 2), r(X, 1), process=2),
    ]
    result = assert_anomaly(history, "G1c")
    assert "-wr->" in result.anomalies[0].description


def test_g_single_lost_update() -> None:
    history = [
        txn(r(X), append(X, 1), process=1),
        txn(r(X), append(X, 2), process=2),
        txn(r(X, 1, 2), call=2, ret=3),
    ]
    result = assert_anomaly(history, "G-single")
    assert set(result.counts) == {"G-single"}


def test_g2_write_skew() -> None:
    history = [
        txn(r(X), r(Y), append(X, 1), process=1),
        txn(r(X), r(Y), append(Y, 2), process=2),
        txn(r(X, 1), r(Y, 2), call=2, ret=3),
    ]
    result = assert_anomaly(history, "G2")
    assert set(result.counts) == {"G2"}
    assert result.anomalies[0].description.count("-rw->") == 4  # the ring, then each edge


def test_info_txn_proven_committed_joins_cycles() -> None:
    history = [
        txn(append(X, 1), append(Y, 2), status="info", ret=None, process=1),
        txn(append(X, 3), append(Y, 4), process=2),
        txn(r(X, 1, 3), r(Y, 4, 2), call=2, ret=3),
    ]
    assert_anomaly(history, "G0")


def test_stale_read_is_only_a_realtime_cycle() -> None:
    history = [
        txn(append(X, 1), call=0, ret=1),
        txn(r(X), call=2, ret=3),
        txn(r(X, 1), call=4, ret=5),  # places 1 in x's order
    ]
    assert_valid(history)
    result = assert_anomaly(history, "G-single-realtime", realtime=True)
    assert set(result.counts) == {"G-single-realtime"}
    assert "returned before" in result.explanation


def test_touching_intervals_are_concurrent() -> None:
    assert_valid([txn(append(X, 1), call=0, ret=1), txn(r(X), call=1, ret=2)], realtime=True)


def test_realtime_order_is_transitive_through_the_frontier() -> None:
    # T2 must follow T0 in real time; only T1's completion links them.
    history = [
        txn(append(X, 1), call=0, ret=1, process=1),
        txn(append(Y, 1), call=2, ret=3, process=2),
        txn(r(X), call=4, ret=5, process=3),
        txn(r(X, 1), call=6, ret=7, process=4),
    ]
    assert_valid(history)
    assert_anomaly(history, "G-single-realtime", realtime=True)


def test_independent_cycles_are_reported_separately() -> None:
    lost_update = [
        txn(r(X), append(X, 1), process=1),
        txn(r(X), append(X, 2), process=2),
        txn(r(X, 1, 2), call=2, ret=3),
    ]
    skew = [
        txn(r(b"a"), r(b"b"), append(b"a", 1), process=3),
        txn(r(b"a"), r(b"b"), append(b"b", 2), process=4),
        txn(r(b"a", 1), r(b"b", 2), call=2, ret=3),
    ]
    result = check_list_append(lost_update + skew)
    assert result.counts == {"G-single": 1, "G2": 1}


# --- read checks ----------------------------------------------------------------


def test_incompatible_order() -> None:
    history = serial(txn(append(X, 1)), txn(append(X, 2)), txn(r(X, 1, 2)), txn(r(X, 2)))
    result = assert_anomaly(history, "incompatible-order")
    assert result.anomalies[0].transactions == (2, 3)


def test_duplicate_elements() -> None:
    assert_anomaly(serial(txn(append(X, 1)), txn(r(X, 1, 1))), "duplicate-elements")


def test_garbage_read() -> None:
    result = assert_anomaly(serial(txn(append(X, 1)), txn(r(X, 1, 99))), "garbage-read")
    assert "99" in result.explanation


def test_internal_read_misses_own_append() -> None:
    assert_anomaly(serial(txn(append(X, 1), r(X))), "internal")


def test_internal_second_read_disagrees_with_first() -> None:
    history = serial(txn(append(X, 1)), txn(append(X, 2)), txn(r(X, 1), r(X, 1, 2)))
    assert_anomaly(history, "internal")


def test_reads_of_failed_and_info_txns_are_not_checked() -> None:
    assert_valid(serial(txn(r(X, 42), status="fail"), txn(r(X, 7), status="info", ret=None)))


def test_malformed_history_raises() -> None:
    with pytest.raises(ValueError, match="unique"):
        check_list_append(serial(txn(append(X, 1)), txn(append(X, 1))))
    with pytest.raises(ValueError, match="unique"):
        check_list_append([txn(append(X, 1), append(X, 1))])
    with pytest.raises(ValueError, match="non-int"):
        check_list_append([txn(MicroOp("append", X, (1,)))])
    with pytest.raises(ValueError, match="before its call"):
        check_list_append([txn(r(X), call=2, ret=1)])


# --- generated histories --------------------------------------------------------


def serial_history(
    seed: int, count: int, keys: int, *, fail_rate: float = 0.1, info_rate: float = 0.1
) -> list[Transaction]:
    """Run random transactions one at a time on a dict of lists.

    A failed transaction changes nothing; an info transaction may or may not
    take effect and its reads are unknown, as a client that lost the answer
    would record them.
    """
    rng = random.Random(seed)
    state: dict[bytes, list[int]] = {}
    next_element = 0
    history: list[Transaction] = []
    for i in range(count):
        weights = [1 - fail_rate - info_rate, fail_rate, info_rate]
        status = rng.choices(STATUSES, weights)[0]
        applied = status == "ok" or (status == "info" and rng.random() < 0.5)
        own: dict[bytes, list[int]] = {}  # this transaction's appends, not yet applied
        ops: list[MicroOp] = []
        for _ in range(rng.randint(1, 4)):
            key = b"k%d" % rng.randrange(keys)
            if rng.random() < 0.5:
                observed = (*state.get(key, ()), *own.get(key, ()))
                ops.append(MicroOp("r", key, observed if status == "ok" else None))
            else:
                next_element += 1
                own.setdefault(key, []).append(next_element)
                ops.append(MicroOp("append", key, next_element))
        if applied:
            for key, elements in own.items():
                state.setdefault(key, []).extend(elements)
        ret = None if status == "info" else 2.0 * i + 1
        history.append(Transaction(rng.randrange(5), tuple(ops), status, 2.0 * i, ret))
    return history


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    count=st.integers(0, 60),
    keys=st.integers(1, 4),
    realtime=st.booleans(),
)
def test_serial_executions_pass(seed: int, count: int, keys: int, realtime: bool) -> None:
    assert_valid(serial_history(seed, count, keys), realtime=realtime)


def sloppy_history(seed: int, count: int) -> list[Transaction]:
    """Random overlapping transactions from a store that may read stale data.

    Each transaction reads one of the last few committed states (plus its own
    appends) and appends to the newest one, so some histories are
    serializable and some are not.
    """
    rng = random.Random(seed)
    snapshots: list[dict[bytes, tuple[int, ...]]] = [{}]
    next_element = 0
    history: list[Transaction] = []
    for i in range(count):
        status = rng.choices(STATUSES, [6, 1, 2])[0]
        snapshot = snapshots[-1 - rng.randrange(min(3, len(snapshots)))]
        own: dict[bytes, tuple[int, ...]] = {}
        ops: list[MicroOp] = []
        for _ in range(rng.randint(1, 3)):
            key = rng.choice((X, Y))
            if rng.random() < 0.5:
                observed = snapshot.get(key, ()) + own.get(key, ())
                ops.append(MicroOp("r", key, observed if status == "ok" else None))
            else:
                next_element += 1
                own[key] = (*own.get(key, ()), next_element)
                ops.append(MicroOp("append", key, next_element))
        if status == "ok" or (status == "info" and rng.random() < 0.5):
            latest = dict(snapshots[-1])
            for key, elements in own.items():
                latest[key] = latest.get(key, ()) + elements
            snapshots.append(latest)
        call = i + rng.uniform(-2, 0)
        ret = None if status == "info" else i + rng.uniform(0, 2)
        history.append(Transaction(i, tuple(ops), status, call, ret))
    return history


def has_serialization(history: Sequence[Transaction], *, realtime: bool) -> bool:
    """Brute force: some order of the ok transactions and some of the info ones
    (respecting real time if asked) explains every ok read."""
    committed = [i for i, t in enumerate(history) if t.status == "ok"]
    maybe = [i for i, t in enumerate(history) if t.status == "info"]
    for size in range(len(maybe) + 1):
        for chosen in itertools.combinations(maybe, size):
            for order in itertools.permutations([*committed, *chosen]):
                if realtime and any(
                    (history[later].ret or math.inf) < history[earlier].call
                    for position, earlier in enumerate(order)
                    for later in order[position + 1 :]
                ):
                    continue
                if explains(history, order):
                    return True
    return False


def explains(history: Sequence[Transaction], order: Sequence[int]) -> bool:
    state: dict[bytes, tuple[int, ...]] = {}
    for index in order:
        for op in history[index].ops:
            if op.kind == "append":
                assert isinstance(op.value, int)
                state[op.key] = (*state.get(op.key, ()), op.value)
            elif history[index].status == "ok" and op.value not in (None, state.get(op.key, ())):
                return False
    return True


def test_every_reported_anomaly_rules_out_every_serialization() -> None:
    # Elle is sound, not complete: an anomaly means no serial order exists,
    # while a pass may miss one (an append nobody read constrains nothing).
    flagged = 0
    for seed in range(1500):
        history = sloppy_history(seed, 1 + seed % 5)
        for realtime in (False, True):
            result = check_list_append(history, realtime=realtime)
            if not result.ok:
                flagged += 1
                assert not has_serialization(history, realtime=realtime), result.explanation
    assert flagged > 50  # the store is sloppy enough to exercise the claim


def test_twenty_thousand_transactions_are_fast() -> None:
    history = serial_history(7, 20_000, 50)
    # CPU time, not wall time: the machine running the tests may be shared.
    started = time.process_time()
    result = check_list_append(history, realtime=True)
    elapsed = time.process_time() - started
    assert result.ok, result.explanation
    assert elapsed < 10.0, f"{elapsed:.1f} s"
