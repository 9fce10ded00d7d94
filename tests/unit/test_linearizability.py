"""Unit tests for the linearizability checker in tests/checkers.

Hand-written histories pin each rule of the register model (Herlihy & Wing's
definition; Wing & Gong's search), random histories from real sequential
executions must pass and fail once corrupted, and small random histories are
compared with a brute-force search over every ordering.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence

import pytest

from tests.checkers import CheckResult, Operation, check_history

KEY = b"k"


def put(
    value: bytes, call: float, ret: float | None, *, key: bytes = KEY, client: int = 0
) -> Operation:
    return Operation(client, "put", key, value, None, None, call, ret)


def get(
    output: bytes | None,
    call: float,
    ret: float | None,
    *,
    key: bytes = KEY,
    client: int = 0,
) -> Operation:
    return Operation(client, "get", key, None, None, output, call, ret)


def cas(
    expected: bytes | None,
    value: bytes,
    output: bool | None,
    call: float,
    ret: float | None,
    *,
    key: bytes = KEY,
    client: int = 0,
) -> Operation:
    return Operation(client, "cas", key, value, expected, output, call, ret)


def delete(
    output: bool | None,
    call: float,
    ret: float | None,
    *,
    key: bytes = KEY,
    client: int = 0,
) -> Operation:
    return Operation(client, "delete", key, None, None, output, call, ret)


def assert_linearizable(ops: Sequence[Operation], initial: bytes | None = None) -> None:
    result = check_history(ops, initial=initial)
    assert result.ok, result.explanation
    assert not result.timed_out
    assert result.key is None


def assert_not_linearizable(
    ops: Sequence[Operation], key: bytes = KEY, initial: bytes | None = None
) -> CheckResult:
    result = check_history(ops, initial=initial)
    assert not result.ok
    assert not result.timed_out
    assert result.key == key
    return result


# --- sequential histories ---------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    assert_linearizable([])


def test_sequential_legal_history() -> None:
    assert_linearizable(
        [
            get(None, 0, 1),
            put(b"a", 2, 3),
            get(b"a", 4, 5),
            put(b"b", 6, 7),
            get(b"b", 8, 9),
        ]
    )


def test_get_of_value_never_written_is_illegal() -> None:
    result = assert_not_linearizable([put(b"a", 0, 1), get(b"zzz", 2, 3)])
    assert "b'zzz'" in result.explanation


def test_stale_read_after_completed_put_is_illegal() -> None:
    assert_not_linearizable([put(b"a", 0, 1), put(b"b", 2, 3), get(b"a", 4, 5)])


def test_initial_value_is_what_an_unwritten_key_reads() -> None:
    assert_linearizable([get(b"zero", 0, 1)], initial=b"zero")
    assert_not_linearizable([get(None, 0, 1)], initial=b"zero")


# --- concurrency and real-time order ------------------------------------------


@pytest.mark.parametrize("observed", [b"a", b"b"])
def test_read_may_see_either_of_two_concurrent_writes(observed: bytes) -> None:
    assert_linearizable(
        [put(b"a", 0, 10, client=1), put(b"b", 1, 9, client=2), get(observed, 11, 12)]
    )


def test_read_concurrent_with_write_may_see_old_or_new_value() -> None:
    assert_linearizable([put(b"a", 0, 10, client=1), get(None, 1, 2), get(b"a", 3, 4)])


def test_read_new_then_old_is_illegal() -> None:
    # The write is still in flight, but once a read has seen it, a later read
    # that starts after that one returned cannot go back to the old value.
    assert_not_linearizable([put(b"a", 0, 10, client=1), get(b"a", 1, 2), get(None, 3, 4)])


def test_reads_observing_concurrent_writes_in_flipping_order_are_illegal() -> None:
    assert_not_linearizable(
        [
            put(b"a", 0, 10, client=1),
            put(b"b", 0, 10, client=2),
            get(b"a", 1, 2, client=3),
            get(b"b", 3, 4, client=3),
            get(b"a", 5, 6, client=3),
        ]
    )


def test_overlapping_reads_may_disagree_on_order() -> None:
    assert_linearizable(
        [
            put(b"a", 0, 10, client=1),
            get(b"a", 1, 5, client=2),
            get(None, 2, 6, client=3),
        ]
    )


def test_touching_intervals_are_concurrent() -> None:
    # The put returns at exactly the time the get is called: either order is
    # allowed, so the get may still see the key absent.
    assert_linearizable([put(b"a", 0, 1), get(None, 1, 2)])
    assert_not_linearizable([put(b"a", 0, 1), get(None, 1.5, 2)])


def test_input_order_does_not_matter() -> None:
    ops = [put(b"a", 0, 1), put(b"b", 2, 3), get(b"a", 4, 5)]
    assert_not_linearizable(list(reversed(ops)))
    assert_linearizable(list(reversed(ops[:2])))


# --- compare-and-swap ---------------------------------------------------------


def test_cas_with_absent_expected_succeeds_on_absent_key() -> None:
    assert_linearizable([cas(None, b"a", True, 0, 1), get(b"a", 2, 3)])


def test_cas_with_absent_expected_fails_on_present_key() -> None:
    assert_linearizable([put(b"x", 0, 1), cas(None, b"a", False, 2, 3), get(b"x", 4, 5)])
    assert_not_linearizable([put(b"x", 0, 1), cas(None, b"a", True, 2, 3)])


def test_cas_success_and_failure_follow_current_value() -> None:
    assert_linearizable(
        [
            put(b"a", 0, 1),
            cas(b"a", b"b", True, 2, 3),
            cas(b"a", b"c", False, 4, 5),
            get(b"b", 6, 7),
        ]
    )


def test_cas_claiming_success_when_precondition_never_held_is_illegal() -> None:
    assert_not_linearizable([put(b"a", 0, 1), cas(b"b", b"c", True, 2, 3)])


def test_cas_success_made_possible_by_concurrent_write() -> None:
    assert_linearizable(
        [put(b"a", 0, 1), put(b"b", 2, 6, client=1), cas(b"b", b"c", True, 3, 7, client=2)]
    )


def test_cas_claiming_failure_when_precondition_held_is_illegal() -> None:
    assert_not_linearizable([put(b"a", 0, 1), cas(b"a", b"c", False, 2, 3)])


def test_failed_cas_does_not_write() -> None:
    assert_not_linearizable([put(b"a", 0, 1), cas(b"b", b"c", False, 2, 3), get(b"c", 4, 5)])


# --- delete -------------------------------------------------------------------


def test_delete_reports_whether_the_key_existed() -> None:
    assert_linearizable(
        [
            delete(False, 0, 1),
            put(b"a", 2, 3),
            delete(True, 4, 5),
            get(None, 6, 7),
            delete(False, 8, 9),
        ]
    )


def test_delete_claiming_an_absent_key_existed_is_illegal() -> None:
    assert_not_linearizable([delete(True, 0, 1)])


def test_delete_claiming_a_present_key_was_absent_is_illegal() -> None:
    assert_not_linearizable([put(b"a", 0, 1), delete(False, 2, 3)])


def test_read_of_deleted_value_is_illegal() -> None:
    assert_not_linearizable([put(b"a", 0, 1), delete(True, 2, 3), get(b"a", 4, 5)])


def test_delete_with_unknown_output_still_removes_the_key() -> None:
    assert_linearizable([delete(None, 0, 1), put(b"a", 2, 3), delete(None, 4, 5)])
    assert_not_linearizable([put(b"a", 0, 1), delete(None, 2, 3), get(b"a", 4, 5)])


def test_cas_expecting_absent_succeeds_after_delete() -> None:
    assert_linearizable([put(b"a", 0, 1), delete(True, 2, 3), cas(None, b"b", True, 4, 5)])


# --- unknown outcomes (ret=None) ----------------------------------------------


def test_pending_write_may_never_take_effect() -> None:
    assert_linearizable([put(b"a", 0, None, client=1), get(None, 1, 2), get(None, 10, 11)])


def test_pending_write_may_take_effect_and_be_observed() -> None:
    assert_linearizable([put(b"a", 0, None, client=1), get(None, 1, 2), get(b"a", 10, 11)])


def test_pending_write_takes_effect_at_one_point() -> None:
    assert_not_linearizable([put(b"a", 0, None, client=1), get(b"a", 1, 2), get(None, 3, 4)])


def test_read_of_pending_write_called_after_the_read_returned_is_illegal() -> None:
    assert_not_linearizable([get(b"a", 0, 1), put(b"a", 2, None, client=1)])


def test_pending_write_may_land_after_later_completed_writes() -> None:
    assert_linearizable(
        [put(b"a", 0, None, client=1), put(b"b", 5, 6), get(b"b", 7, 8), get(b"a", 9, 10)]
    )


def test_pending_get_is_ignored_whatever_its_output() -> None:
    assert_linearizable([put(b"a", 0, 1), get(b"never-written", 2, None)])


def test_pending_cas_may_or_may_not_apply() -> None:
    assert_linearizable([cas(None, b"a", None, 0, None, client=1), get(None, 5, 6)])
    assert_linearizable([cas(None, b"a", None, 0, None, client=1), get(b"a", 5, 6)])


def test_pending_cas_writes_only_if_its_precondition_held() -> None:
    assert_not_linearizable(
        [put(b"x", 0, 1), cas(b"b", b"c", None, 2, None, client=1), get(b"c", 5, 6)]
    )


def test_pending_cas_may_apply_after_a_concurrent_write_enables_it() -> None:
    assert_linearizable(
        [
            put(b"x", 0, 1),
            cas(b"b", b"c", None, 2, None, client=1),
            put(b"b", 3, 4, client=2),
            get(b"b", 5, 6),
            get(b"c", 7, 8),
        ]
    )


def test_pending_cas_ignores_a_recorded_output() -> None:
    # A pending cas that claims success while its precondition never held is
    # still legal if it never takes effect: no answer reached the client.
    assert_linearizable([put(b"x", 0, 1), cas(b"b", b"c", True, 2, None, client=1)])


def test_pending_delete_may_or_may_not_apply() -> None:
    assert_linearizable([put(b"a", 0, 1), delete(None, 2, None, client=1), get(b"a", 5, 6)])
    assert_linearizable([put(b"a", 0, 1), delete(None, 2, None, client=1), get(None, 5, 6)])


def test_many_unanswered_writes_after_an_election_are_checked_cheaply() -> None:
    # Eight clients retry writes of unique values that are never answered, as
    # during an election; then a leader serves overlapping writes and reads.
    # Every pending write is a candidate at every later point, so without the
    # checker's reductions this takes millions of steps.
    ops = []
    for client in range(8):
        for attempt in range(5):
            value = f"{client}.{attempt}".encode()
            call = float(attempt * 10 + client)
            if attempt % 2:
                previous = f"{client}.{attempt - 1}".encode()
                ops.append(cas(previous, value, None, call, None, client=client))
            else:
                ops.append(put(value, call, None, client=client))
    ops.append(get(b"3.2", 60, 62, client=8))
    for client in range(8):
        start = 60.0 + client * 3
        value = f"new{client}".encode()
        ops.append(put(value, start, start + 4, client=client))
        ops.append(get(value, start + 3.5, start + 5, client=client))
    result = check_history(ops, max_steps_per_key=10_000)
    assert result.ok, result.explanation

    ops.append(get(b"3.2", 100, 101, client=8))
    result = check_history(ops, max_steps_per_key=10_000)
    assert not result.ok
    assert not result.timed_out


# --- several keys -------------------------------------------------------------


def test_only_the_illegal_key_is_reported() -> None:
    result = assert_not_linearizable(
        [
            put(b"1", 0, 1, key=b"x"),
            get(b"1", 2, 3, key=b"x"),
            put(b"1", 0, 1, key=b"y"),
            put(b"2", 2, 3, key=b"y"),
            get(b"1", 4, 5, key=b"y"),
            put(b"1", 0, 1, key=b"z"),
            get(b"1", 2, 3, key=b"z"),
        ],
        key=b"y",
    )
    assert "key b'y'" in result.explanation
    assert "longest linearizable prefix" in result.explanation


def test_first_illegal_key_in_byte_order_is_reported() -> None:
    assert_not_linearizable(
        [get(b"?", 0, 1, key=b"b"), get(b"?", 0, 1, key=b"a")],
        key=b"a",
    )


def test_keys_are_independent_registers() -> None:
    assert_linearizable([put(b"1", 0, 1, key=b"x"), get(None, 2, 3, key=b"y")])


def test_explanation_lists_operations_and_longest_prefix() -> None:
    result = assert_not_linearizable(
        [
            put(b"a", 0, 1),
            put(b"b", 2, 3),
            get(b"a", 4, 5),
            put(b"c", 6, None, client=7),
            get(b"zzz", 6, None, client=8),
        ]
    )
    lines = result.explanation.splitlines()
    assert lines[1:7] == [
        "operations, sorted by call:",
        "  #0 client 0 [0, 1] put(b'a')",
        "  #1 client 0 [2, 3] put(b'b')",
        "  #2 client 0 [4, 5] get() -> b'a'",
        "  #3 client 7 [6, pending] put(b'c')",
        "  (not shown: 1 pending operation(s) that cannot change the value)",
    ]
    assert lines[7] == "longest linearizable prefix found (2 of 4 operations):"
    # Nothing reads b"b", so the checker does not tell it apart from other values.
    assert lines[-1] == "value after that prefix: a value no operation reads"


# --- search budget and malformed input ----------------------------------------


def test_exhausted_budget_reports_timed_out_not_ok() -> None:
    ops = [put(bytes([n]), n, n + 10, client=n) for n in range(10)]
    ops.append(get(bytes([0]), 30, 31))
    result = check_history(ops, max_steps_per_key=3)
    assert not result.ok
    assert result.timed_out
    assert result.key == KEY
    assert "unknown" in result.explanation


def test_proven_violation_wins_over_timed_out_key() -> None:
    ops = [put(bytes([n]), n, n + 10, client=n, key=b"a") for n in range(10)]
    ops += [put(b"1", 0, 1, key=b"b"), get(b"2", 2, 3, key=b"b")]
    result = check_history(ops, max_steps_per_key=5)
    assert not result.ok
    assert not result.timed_out
    assert result.key == b"b"


@pytest.mark.parametrize(
    "op",
    [
        Operation(0, "increment", KEY, None, None, None, 0, 1),
        Operation(0, "put", KEY, None, None, None, 0, 1),
        Operation(0, "cas", KEY, b"a", None, None, 0, 1),
        Operation(0, "get", KEY, None, None, True, 0, 1),
        Operation(0, "delete", KEY, None, None, b"a", 0, 1),
        Operation(0, "get", KEY, None, None, None, 2, 1),
    ],
)
def test_malformed_operations_are_rejected(op: Operation) -> None:
    with pytest.raises(ValueError):
        check_history([op])


# --- random histories ----------------------------------------------------------


def apply(store: dict[bytes, bytes], op: Operation) -> object:
    """Run ``op`` against a sequential store; return the output it gets."""
    current = store.get(op.key)
    if op.kind == "get":
        return current
    if op.kind == "put":
        assert op.value is not None
        store[op.key] = op.value
        return None
    if op.kind == "cas":
        assert op.value is not None
        if current != op.expected:
            return False
        store[op.key] = op.value
        return True
    store.pop(op.key, None)
    return current is not None


def generate_history(
    rng: random.Random,
    *,
    clients: int,
    ops_per_client: int,
    keys: int,
    values: int,
    max_duration: float,
    pending_probability: float,
) -> list[Operation]:
    """A history of a real atomic store with overlapping intervals.

    Every client runs its operations one after another. Each operation takes
    effect at a random point inside its interval (a pending one at any point
    after its call, or never), and its output comes from applying the
    operations to a dict in the order of those points.
    """
    key_names = [f"key{n}".encode() for n in range(keys)]
    value_names = [f"v{n}".encode() for n in range(values)]
    planned: list[tuple[float, Operation]] = []  # (point of effect, operation)
    unapplied: list[Operation] = []
    for client in range(clients):
        time = rng.uniform(0, 1)
        for _ in range(ops_per_client):
            call = time
            ret = call + rng.uniform(0, max_duration)
            time = ret + rng.uniform(0, 1)
            kind = rng.choice(("put", "get", "get", "cas", "delete"))
            value = rng.choice(value_names) if kind in ("put", "cas") else None
            expected = rng.choice([None, *value_names]) if kind == "cas" else None
            op = Operation(client, kind, rng.choice(key_names), value, expected, None, call, ret)
            if rng.random() >= pending_probability:
                planned.append((rng.uniform(call, ret), op))
                continue
            op = dataclasses.replace(op, ret=None)
            if rng.random() < 0.5:
                unapplied.append(op)
            else:
                planned.append((call + rng.uniform(0, 3 * max_duration), op))
    store: dict[bytes, bytes] = {}
    history = list(unapplied)
    for _, op in sorted(planned, key=lambda pair: pair[0]):
        output = apply(store, op)
        history.append(op if op.ret is None else dataclasses.replace(op, output=output))
    rng.shuffle(history)
    return history


@pytest.mark.parametrize("seed", range(12))
def test_random_real_history_passes_and_fails_once_corrupted(seed: int) -> None:
    rng = random.Random(seed)
    history = generate_history(
        rng,
        clients=rng.randint(5, 15),
        ops_per_client=rng.randint(5, 15),
        keys=rng.randint(1, 6),
        values=rng.choice((2, 4, 1000)),
        max_duration=rng.uniform(0.5, 5),
        pending_probability=0.05,
    )
    assert_linearizable(history)

    victim = rng.choice(
        [index for index, op in enumerate(history) if op.kind == "get" and op.ret is not None]
    )
    corrupted = list(history)
    corrupted[victim] = dataclasses.replace(history[victim], output=b"never-written")
    assert_not_linearizable(corrupted, key=history[victim].key)


def test_heavily_overlapping_history_is_checked_quickly() -> None:
    # 20 clients x 30 operations on 3 keys, each client nearly always waiting
    # on a long operation, so some 20 operations are in flight at any moment.
    rng = random.Random(2024)
    for values in (3, 1000):
        history = generate_history(
            rng,
            clients=20,
            ops_per_client=30,
            keys=3,
            values=values,
            max_duration=15,
            pending_probability=0.02,
        )
        assert_linearizable(history)


def brute_force_is_linearizable(ops: Sequence[Operation]) -> bool:
    """Try every subset of pending operations in every order."""
    completed = [op for op in ops if op.ret is not None]
    pending = [op for op in ops if op.ret is None and op.kind != "get"]
    for size in range(len(pending) + 1):
        for chosen in itertools.combinations(pending, size):
            for order in itertools.permutations([*completed, *chosen]):
                if respects_real_time(order) and outputs_match(order):
                    return True
    return False


def respects_real_time(order: Sequence[Operation]) -> bool:
    return not any(
        later.ret is not None and later.ret < earlier.call
        for position, earlier in enumerate(order)
        for later in order[position + 1 :]
    )


def outputs_match(order: Sequence[Operation]) -> bool:
    store: dict[bytes, bytes] = {}
    for op in order:
        output = apply(store, op)
        unchecked = (
            op.ret is None or op.kind == "put" or (op.kind == "delete" and op.output is None)
        )
        if not unchecked and output != op.output:
            return False
    return True


def random_small_history(rng: random.Random) -> list[Operation]:
    """Arbitrary outputs and integer times, so ties and violations are common."""
    history = []
    for client in range(rng.randint(1, 6)):
        kind = rng.choice(("put", "get", "cas", "delete"))
        call = rng.randint(0, 4)
        ret = None if rng.random() < 0.2 else call + rng.randint(0, 3)
        # Nothing reads b"c", so the checker merges it with other unread values.
        value = rng.choice((b"a", b"b", b"c")) if kind in ("put", "cas") else None
        expected = rng.choice((None, b"a", b"b")) if kind == "cas" else None
        output: object = {
            "put": None,
            "get": rng.choice((None, b"a", b"b")),
            "cas": rng.choice((True, False)),
            "delete": rng.choice((True, False, None)),
        }[kind]
        key = rng.choice((b"x", b"y"))
        history.append(Operation(client, kind, key, value, expected, output, call, ret))
    return history


def test_agrees_with_brute_force_on_small_random_histories() -> None:
    rng = random.Random(7)
    verdicts = []
    for _ in range(600):
        history = random_small_history(rng)
        expected = brute_force_is_linearizable(history)
        result = check_history(history)
        assert result.ok == expected, (history, result.explanation)
        verdicts.append(expected)
    # Both answers must be well represented for the comparison to mean much.
    assert 100 < sum(verdicts) < 500
