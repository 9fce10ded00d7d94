"""Linearizability checker for histories of a key-value store.

Owns the decision "could this recorded history have come from one atomic
key-value store?" for put, get, cas and delete, and the human-readable
explanation when the answer is no. It knows nothing about Raft, processes or
clocks: callers record ``Operation`` values and call ``check_history``.

Promises:

1. Each key is an independent register whose value starts at ``initial``
   (``None`` = absent). The history is split by key and each key is checked
   alone; this is sound and complete because linearizability is compositional
   (Herlihy & Wing, "P-compositionality" in porcupine's terms).
2. ``ok=True`` only if every key's sub-history has a linearization.
   ``ok=False, timed_out=False`` only if some key provably has none; ``key``
   names the first such key in byte order. ``ok=False, timed_out=True`` when
   the search budget ran out on some key and no key was proven illegal: the
   answer is *unknown*, never a pass.
3. The verdict does not depend on the order the operations are given in
   (only where the step budget runs out can order matter); the explanation
   numbers a key's operations by call time, then return time, then input
   order.

Time ties: an operation's real-time interval is closed, ``[call, ret]``. When
one operation's ``ret`` equals another's ``call`` the two are treated as
concurrent, so either order is allowed. Clocks that record with coarse
resolution produce such ties for operations that did not overlap; calling them
concurrent can only hide a violation, never report a false one.

Unknown outcomes: an operation with ``ret=None`` never answered, so it may
have taken effect at any point after its call, or never. Its output is
ignored. A pending get observes nothing and is dropped. A pending write
behaves as if it returned at +infinity and may stay unlinearized at the end;
a pending cas writes exactly when the register holds ``expected`` at the
point where it is linearized.

Algorithm: Wing & Gong's search with Lowe's memoisation, as in porcupine.
Call and return events sit in one doubly linked list sorted by time; the
search repeatedly linearizes an operation whose call precedes every pending
return, lifting its two events out of the list, and backtracks when it meets
a return whose operation could not be placed. A set of (linearized
operations, register value) configurations already explored prunes repeats;
the set of operations is a Python ``int`` used as a bitset. The model is
deterministic (even a pending cas: it writes iff its precondition holds where
it is placed), so each configuration has one state and deduplicating
configurations deduplicates states.

A simulated election leaves dozens of writes pending, each a candidate at
every later point, which multiplies the configurations. Four reductions,
none of which changes a verdict, keep that in check:

1. values that no operation can tell apart share one state (``_ValueTable``);
2. equal operations are placed in call order (``_predecessors``);
3. pending operations that cannot change the value are dropped
   (``_constrains_nothing``);
4. the search never places a pending operation where it leaves the value
   unchanged, nor a blind write (put, delete with unknown outcome) right
   after a pending operation, whose effect that write would erase.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["CheckResult", "Operation", "check_history"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One client request and its response, as the client saw them.

    ``value`` is the value written by put and cas (``None`` for get and
    delete). ``expected`` is the value cas requires, ``None`` meaning the key
    must be absent. ``output`` is what the store answered: get returns
    ``bytes`` or ``None`` (absent), cas a ``bool`` (it wrote), delete a
    ``bool`` (the key existed) or ``None`` when unknown, put ``None``.
    ``ret=None`` means no answer arrived, so the outcome is unknown.
    """

    client_id: int
    kind: str
    key: bytes
    value: bytes | None
    expected: bytes | None
    output: object
    call: float
    ret: float | None


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a whole history; see the module docstring, promise 2."""

    ok: bool
    key: bytes | None
    explanation: str
    timed_out: bool = False


_KINDS = ("put", "get", "cas", "delete")

# Register values are interned per key as small ints, so a configuration of
# the search packs into one int and the model compares ints, not bytes.
_ABSENT = 0
_UNOBSERVED = 1
_ILLEGAL = -1


@dataclass(frozen=True, slots=True)
class _Step:
    """An operation's effect on one key's register of interned values.

    Two operations with equal steps are interchangeable in a linearization.
    """

    kind: str
    written: int  # put, cas: the value written
    required: int  # get: the value observed; cas: the value expected
    outcome: bool | None  # cas, delete: the reported result; None = unknown


def _next_state(step: _Step, state: int) -> int:
    """Apply ``step`` to a register holding ``state``.

    Returns the new state, or ``_ILLEGAL`` when the operation's recorded
    output is impossible from ``state``.
    """
    if step.kind == "put":
        return step.written
    if step.kind == "get":
        return state if state == step.required else _ILLEGAL
    if step.kind == "cas":
        precondition_holds = state == step.required
        if step.outcome is not None and step.outcome != precondition_holds:
            return _ILLEGAL
        return step.written if precondition_holds else state
    # delete
    if step.outcome is not None and step.outcome != (state != _ABSENT):
        return _ILLEGAL
    return _ABSENT


@dataclass(frozen=True, slots=True)
class _KeyVerdict:
    """How the search over one key's sub-history ended."""

    linearizable: bool
    timed_out: bool
    steps: int
    longest_prefix: tuple[int, ...]  # indexes into the key's sorted operations
    state_after_prefix: int


def check_history(
    ops: Iterable[Operation],
    *,
    initial: bytes | None = None,
    max_steps_per_key: int = 2_000_000,
) -> CheckResult:
    """Decide whether ``ops`` is linearizable; see the module docstring.

    ``max_steps_per_key`` bounds the search on each key (one step is one
    attempt to place or remove an operation). Raises ``ValueError`` for a
    malformed operation, since a recorder bug must not read as a verdict.
    """
    ops_by_key: defaultdict[bytes, list[Operation]] = defaultdict(list)
    for op in ops:
        _validate(op)
        ops_by_key[op.key].append(op)

    first_timed_out: tuple[bytes, str] | None = None
    checked_count = 0
    for key in sorted(ops_by_key):
        key_ops = sorted(ops_by_key[key], key=_sort_key)
        values = _ValueTable(key_ops, initial)
        checked: list[Operation] = []
        steps: list[_Step] = []
        for op in key_ops:
            step = _compile(op, values)
            if not _constrains_nothing(op, step):
                checked.append(op)
                steps.append(step)
        checked_count += len(checked)
        verdict = _search(checked, steps, values, max_steps_per_key)
        if verdict.linearizable:
            continue
        report = _explain(key, checked, len(key_ops) - len(checked), values, verdict)
        if not verdict.timed_out:
            return CheckResult(ok=False, key=key, explanation=report)
        if first_timed_out is None:
            first_timed_out = (key, report)

    if first_timed_out is not None:
        key, report = first_timed_out
        return CheckResult(ok=False, key=key, explanation=report, timed_out=True)
    return CheckResult(
        ok=True,
        key=None,
        explanation=f"linearizable: {checked_count} operations checked on {len(ops_by_key)} keys",
    )


def _validate(op: Operation) -> None:
    if op.kind not in _KINDS:
        raise ValueError(f"unknown operation kind {op.kind!r}: {op}")
    if op.kind in ("put", "cas") and not isinstance(op.value, bytes):
        raise ValueError(f"{op.kind} needs a bytes value: {op}")
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"operation returns before its call: {op}")
    if op.ret is None:
        return
    if op.kind == "get" and not (op.output is None or isinstance(op.output, bytes)):
        raise ValueError(f"get output must be bytes or None: {op}")
    if op.kind == "cas" and not isinstance(op.output, bool):
        raise ValueError(f"completed cas output must be a bool: {op}")
    if op.kind == "delete" and not (op.output is None or isinstance(op.output, bool)):
        raise ValueError(f"delete output must be a bool or None: {op}")


def _return_time(op: Operation) -> float:
    return math.inf if op.ret is None else op.ret


def _sort_key(op: Operation) -> tuple[float, float]:
    return (op.call, _return_time(op))


class _ValueTable:
    """Interns one key's register values as small ints.

    ``_ABSENT`` is absent. Values that no operation can tell apart all share
    ``_UNOBSERVED``; merging them changes no verdict, and it makes writes of
    distinct never-read values equal steps, which ``_predecessors`` orders
    instead of trying every subset. Pending writes of unique values that
    nobody read are the common case after an election.

    A completed get tells its output apart, and a completed cas its expected
    value. A pending cas compares with its expected value only to decide
    whether to write, so that comparison tells the value apart only when
    what it writes is itself told apart.
    """

    def __init__(self, ops: Iterable[Operation], initial: bytes | None) -> None:
        distinguished: set[bytes] = set()
        pending_cas: list[tuple[bytes, bytes]] = []  # (expected, written)
        for op in ops:
            if op.kind == "get" and op.ret is not None and isinstance(op.output, bytes):
                distinguished.add(op.output)
            elif op.kind == "cas" and op.expected is not None:
                if op.ret is not None:
                    distinguished.add(op.expected)
                elif op.value is not None:
                    pending_cas.append((op.expected, op.value))
        grew = True
        while grew:
            grew = False
            for expected, written in pending_cas:
                if written in distinguished and expected not in distinguished:
                    distinguished.add(expected)
                    grew = True
        self._values: list[bytes | None] = [None, None, *sorted(distinguished)]
        self._ids = {value: state for state, value in enumerate(self._values) if value is not None}
        self.initial_state = self.intern(initial)

    def intern(self, value: bytes | None) -> int:
        if value is None:
            return _ABSENT
        return self._ids.get(value, _UNOBSERVED)

    def describe(self, state: int) -> str:
        if state == _UNOBSERVED:
            return "a value no operation reads"
        return repr(self._values[state])

    def __len__(self) -> int:
        return len(self._values)


def _compile(op: Operation, values: _ValueTable) -> _Step:
    # _validate has checked the output types; the isinstance tests only narrow.
    reported = op.ret is not None and op.kind in ("cas", "delete")
    if op.kind == "get":
        required = values.intern(op.output if isinstance(op.output, bytes) else None)
    else:
        required = values.intern(op.expected) if op.kind == "cas" else _ABSENT
    return _Step(
        kind=op.kind,
        written=values.intern(op.value),
        required=required,
        outcome=op.output if reported and isinstance(op.output, bool) else None,
    )


def _constrains_nothing(op: Operation, step: _Step) -> bool:
    """Whether ``op`` is pending and leaves every register value unchanged.

    Placing such an operation or not is the same, so the search drops it: a
    pending get, and a pending cas that would write back a value
    indistinguishable from the one it expects.
    """
    if op.ret is not None:
        return False
    return step.kind == "get" or (step.kind == "cas" and step.written == step.required)


def _predecessors(ops: Sequence[Operation], steps: Sequence[_Step]) -> list[int]:
    """For each operation, an equal one that may be placed first, or -1.

    If X and Y have equal steps, X is called no later and returns no later
    than Y, then any linearization that places Y before X (or places a
    pending Y and not X) stays valid with the two swapped. So the search may
    insist that Y waits for X; this collapses the 2^k placements of k equal
    pending writes to k + 1. ``ops`` must be sorted by call, then return.
    """
    predecessor = [-1] * len(ops)
    earlier_equal: defaultdict[_Step, list[int]] = defaultdict(list)
    for index, (op, step) in enumerate(zip(ops, steps, strict=True)):
        candidates = earlier_equal[step]
        returned = _return_time(op)
        for candidate in reversed(candidates):
            if _return_time(ops[candidate]) <= returned:
                predecessor[index] = candidate
                break
        candidates.append(index)
    return predecessor


def _search(
    ops: Sequence[Operation],
    steps: Sequence[_Step],
    values: _ValueTable,
    max_steps: int,
) -> _KeyVerdict:
    """Wing & Gong with Lowe's cache over one key's operations.

    Node ``i`` of the linked list is the call of operation ``i`` and node
    ``count + i`` its return; ``head`` and ``tail`` are sentinels, so linking
    never tests for ``None``.
    """
    count = len(ops)
    head, tail = 2 * count, 2 * count + 1

    def event_order(node: int) -> tuple[float, bool, int]:
        # At equal times calls come first: touching intervals are concurrent.
        is_return = node >= count
        op = ops[node - count] if is_return else ops[node]
        time = _return_time(op) if is_return else op.call
        return (time, is_return, node)

    next_node = [0] * (2 * count + 2)
    previous_node = [0] * (2 * count + 2)
    chain = [head, *sorted(range(2 * count), key=event_order), tail]
    for earlier, later in itertools.pairwise(chain):
        next_node[earlier] = later
        previous_node[later] = earlier

    # Pending operations can always be placed last without changing what any
    # completed operation saw (their outputs are unknown, so every state
    # accepts them), so the search succeeds once every completed one is placed.
    pending = [op.ret is None for op in ops]
    unplaced_completed = pending.count(False)
    predecessor = _predecessors(ops, steps)
    # A pending operation is optional, so a linearization stays valid without
    # one that leaves the value as it was, or whose value the very next
    # operation overwrites whatever it was; the search never places those.
    overwrites = [
        step.kind == "put" or (step.kind == "delete" and step.outcome is None) for step in steps
    ]
    state_bits = len(values).bit_length()
    explored: set[int] = set()  # see configuration below
    placed: list[tuple[int, int]] = []  # (operation, state before it)
    longest: tuple[int, ...] = ()
    state_after_longest = values.initial_state
    linearized = 0
    state = values.initial_state
    node = next_node[head]
    spent = 0

    def verdict(*, linearizable: bool, timed_out: bool) -> _KeyVerdict:
        deepest = max(longest, tuple(op_index for op_index, _ in placed), key=len)
        return _KeyVerdict(
            linearizable=linearizable,
            timed_out=timed_out,
            steps=spent,
            longest_prefix=deepest,
            state_after_prefix=state if len(deepest) > len(longest) else state_after_longest,
        )

    while unplaced_completed:
        if spent == max_steps:
            return verdict(linearizable=False, timed_out=True)
        spent += 1
        if node < count:
            new_state = _next_state(steps[node], state)
            waits_for = predecessor[node]
            if (
                new_state != _ILLEGAL
                and (waits_for < 0 or linearized >> waits_for & 1)
                and not (pending[node] and new_state == state)
                and not (overwrites[node] and placed and pending[placed[-1][0]])
            ):
                new_linearized = linearized | (1 << node)
                # The low bit says the operation just placed is pending, which
                # forbids a blind write next: that configuration offers a
                # subset of the moves of the same one without the bit.
                configuration = ((new_linearized << state_bits) | new_state) << 1 | pending[node]
                if configuration not in explored and configuration & ~1 not in explored:
                    explored.add(configuration)
                    placed.append((node, state))
                    linearized, state = new_linearized, new_state
                    if not pending[node]:
                        unplaced_completed -= 1
                    for lifted in (node, count + node):
                        next_node[previous_node[lifted]] = next_node[lifted]
                        previous_node[next_node[lifted]] = previous_node[lifted]
                    node = next_node[head]
                    continue
            node = next_node[node]
        else:
            # A return: its operation is unplaced and no call before it can
            # extend this prefix, so undo the last placement and try the
            # next candidate after it.
            if not placed:
                return verdict(linearizable=False, timed_out=False)
            # The deepest prefix is only read on failure, so it is copied
            # when the search retreats from it rather than on every advance.
            if len(placed) > len(longest):
                longest = tuple(op_index for op_index, _ in placed)
                state_after_longest = state
            node, state = placed.pop()
            linearized &= ~(1 << node)
            if not pending[node]:
                unplaced_completed += 1
            # Reinsert in the reverse order of lifting (dancing links).
            for restored in (count + node, node):
                next_node[previous_node[restored]] = restored
                previous_node[next_node[restored]] = restored
            node = next_node[node]
    return verdict(linearizable=True, timed_out=False)


def _explain(
    key: bytes,
    ops: Sequence[Operation],
    dropped: int,
    values: _ValueTable,
    verdict: _KeyVerdict,
) -> str:
    if verdict.timed_out:
        headline = (
            f"key {key!r}: search gave up after {verdict.steps} steps; linearizability is unknown"
        )
    else:
        headline = f"key {key!r}: no linearization of its {len(ops)} operations exists"
    lines = [headline, "operations, sorted by call:"]
    lines.extend(f"  {_describe(index, op)}" for index, op in enumerate(ops))
    if dropped:
        lines.append(f"  (not shown: {dropped} pending operation(s) that cannot change the value)")
    lines.append(
        f"longest linearizable prefix found ({len(verdict.longest_prefix)} of "
        f"{len(ops)} operations):"
    )
    lines.extend(f"  {_describe(index, ops[index])}" for index in verdict.longest_prefix)
    lines.append(f"value after that prefix: {values.describe(verdict.state_after_prefix)}")
    return "\n".join(lines)


def _describe(index: int, op: Operation) -> str:
    returned = "pending" if op.ret is None else repr(op.ret)
    if op.kind == "put":
        action = f"put({op.value!r})"
    elif op.kind == "get":
        action = "get()"
    elif op.kind == "cas":
        action = f"cas({op.expected!r} => {op.value!r})"
    else:
        action = "delete()"
    if op.kind != "put":
        action += " -> unknown" if op.ret is None else f" -> {op.output!r}"
    return f"#{index} client {op.client_id} [{op.call!r}, {returned}] {action}"
