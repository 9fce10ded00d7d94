"""Serializability checker for list-append transaction histories (Elle).

Owns the decision "could these transactions have run one at a time?" for a
workload whose keys hold lists of ints and whose transactions read whole
lists and append single elements, and the human-readable account of every
anomaly found. It follows Kingsbury & Alvaro, "Elle: Inferring Isolation
Anomalies from Experimental Observations" (VLDB 2020): because every element
is appended once, a read of a list reveals the order of every append before
it, so the dependencies between transactions can be read off the history
instead of searched for. It knows nothing about Raft or clocks: callers record
``Transaction`` values and call ``check_list_append``.

Promises:

1. Every anomaly reported is real: each follows from the recorded reads
   alone (Elle is sound; it is not complete, since appends that no read
   observed constrain nothing).
2. Per key, every read of a committed (``ok``) transaction must be a prefix
   of the longest such read, which gives the key's version order
   (``incompatible-order`` otherwise). Elements appended but never read have
   no position and add no edges.
3. Reads are checked for ``duplicate-elements``, ``garbage-read`` (no
   transaction appended the element), ``G1a`` (its appender failed),
   ``G1b`` (the read ends at an element its appender followed with another
   append to the same key) and ``internal`` inconsistency (within one
   transaction a read must show the transaction's own earlier reads and
   appends to that key).
4. The dependency graph holds the ``ok`` transactions and the ``info``
   transactions some read proves committed. Edges: ``ww`` when T2 appended
   the element right after T1's in a key's order; ``wr`` when T2 read a list
   ending at T1's element; ``rw`` when T1 read a list ending at ``e`` (or
   empty) and T2 appended the element right after ``e`` (or the first). With
   ``realtime=True`` also ``realtime`` when T1 returned before T2 was called,
   which checks strict serializability.
5. Every strongly connected component of more than one transaction yields
   one anomaly with one concrete cycle, named for the weakest class that has
   a cycle there: ``G0`` (ww only), ``G1c`` (ww and wr), ``G-single``
   (exactly one rw), ``G2`` (more rw), each with a ``-realtime`` suffix when
   no cycle exists without realtime edges.
6. ``ok=True`` only when no anomaly of any kind was found.

Statuses: ``ok`` committed and its reads are what it observed; ``fail``
definitely did not take effect; ``info`` may or may not have committed and
its reads are unknown. Reads with ``value=None`` are unknown and ignored.

Cost: linear in the size of the history plus the length of each key's
longest read (a read that is a prefix of the longest costs one slice
comparison, and its elements are checked once, through the longest read).
Real-time edges link each transaction only to the transactions completed
before its call that no other such transaction follows, as Elle does, so
their number grows with the concurrency, not quadratically. Strongly
connected components come from an iterative Tarjan; cycles from BFS.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Anomaly",
    "AnomalyKind",
    "ListAppendResult",
    "MicroOp",
    "Transaction",
    "check_list_append",
]

Status = Literal["ok", "fail", "info"]
EdgeKind = Literal["ww", "wr", "rw", "realtime"]
AnomalyKind = Literal[
    "incompatible-order",
    "duplicate-elements",
    "garbage-read",
    "internal",
    "G1a",
    "G1b",
    "G0",
    "G1c",
    "G-single",
    "G2",
    "G0-realtime",
    "G1c-realtime",
    "G-single-realtime",
    "G2-realtime",
]


@dataclass(frozen=True, slots=True)
class MicroOp:
    """One step of a transaction.

    ``kind="r"``: ``value`` is the tuple of elements read (``()`` when the key
    is absent), or ``None`` when the read's outcome is unknown.
    ``kind="append"``: ``value`` is the int appended.
    """

    kind: Literal["r", "append"]
    key: bytes
    value: tuple[int, ...] | int | None


@dataclass(frozen=True, slots=True)
class Transaction:
    """One transaction as its client saw it; see the module docstring."""

    process: int
    ops: tuple[MicroOp, ...]
    status: Status
    call: float
    ret: float | None


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One anomaly; ``transactions`` are indexes into the checked history."""

    kind: AnomalyKind
    transactions: tuple[int, ...]
    description: str


@dataclass(frozen=True)
class ListAppendResult:
    """The verdict on a whole history; see the module docstring, promise 6.

    ``counts`` maps each anomaly kind found to its number of anomalies.
    ``graph_transactions`` and ``graph_edges`` size the dependency graph.
    """

    ok: bool
    anomalies: tuple[Anomaly, ...]
    explanation: str
    counts: Mapping[str, int]
    graph_transactions: int
    graph_edges: int


# Why an edge exists: (key, earlier element, later element). ww: the target
# appended the later element right after the source's earlier one. wr: the
# target read a list ending at the later element (no earlier one). rw: the
# source read a list ending at the earlier element (None: the empty list) and
# the target appended the later one. Real-time edges have no cause.
_Cause = tuple[bytes, int | None, int] | None
_Graph = list[dict[int, dict[EdgeKind, _Cause]]]

# Edge kinds in the order a cycle's description prefers them: the cheapest
# explanation of an edge comes first.
_EDGE_PREFERENCE: tuple[EdgeKind, ...] = ("ww", "wr", "rw", "realtime")

# Searches tried on each strongly connected component, weakest anomaly first:
# (edge kinds a path may use, whether the cycle must close with one rw edge).
_DATA_SEARCHES: tuple[tuple[frozenset[EdgeKind], bool], ...] = (
    (frozenset({"ww"}), False),
    (frozenset({"ww", "wr"}), False),
    (frozenset({"ww", "wr"}), True),
    (frozenset({"ww", "wr", "rw"}), False),
)

# A G-single search runs one BFS per rw edge; in a huge component (a badly
# broken store) stop after this many and let the G2 search name the cycle.
_SINGLE_RW_ATTEMPTS = 256

# How many anomalies the explanation spells out in full.
_EXPLAINED_ANOMALIES = 5


def check_list_append(
    history: Sequence[Transaction], *, realtime: bool = False
) -> ListAppendResult:
    """Check ``history`` for serializability; see the module docstring.

    ``realtime=True`` checks strict serializability. Raises ``ValueError``
    for a malformed history (a bad micro-op, an element appended twice to one
    key), since a recorder bug must not read as a verdict.
    """
    history = tuple(history)
    anomalies: list[Anomaly] = []
    writers = _index_appends(history)
    observations = _observe(history, writers, anomalies)
    orders = _version_orders(history, observations, writers, anomalies)

    graph: _Graph = [{} for _ in history]
    in_graph = [txn.status == "ok" for txn in history]
    for key, order in orders.items():
        for element in order:
            writer = writers.get(key, {}).get(element)
            if writer is not None and history[writer].status == "info":
                in_graph[writer] = True
    _add_data_edges(graph, in_graph, writers, orders, observations)
    if realtime:
        _add_realtime_edges(graph, history, in_graph)

    nodes = [index for index, member in enumerate(in_graph) if member]
    for component in _strongly_connected(nodes, lambda node: list(graph[node])):
        if len(component) > 1:
            anomalies.append(_cycle_anomaly(history, graph, component, realtime))

    counts: dict[str, int] = defaultdict(int)
    for anomaly in anomalies:
        counts[anomaly.kind] += 1
    edge_count = sum(len(successors) for successors in graph)
    return ListAppendResult(
        ok=not anomalies,
        anomalies=tuple(anomalies),
        explanation=_explain(history, anomalies, counts, len(nodes), edge_count, realtime),
        counts=dict(counts),
        graph_transactions=len(nodes),
        graph_edges=edge_count,
    )


# --- reading the history ------------------------------------------------------


def _index_appends(history: Sequence[Transaction]) -> dict[bytes, dict[int, int]]:
    """Validate every transaction; map each key's elements to their appender."""
    writers: dict[bytes, dict[int, int]] = defaultdict(dict)
    for index, txn in enumerate(history):
        if txn.status not in ("ok", "fail", "info"):
            raise ValueError(f"T{index}: unknown status {txn.status!r}")
        if txn.ret is not None and txn.ret < txn.call:
            raise ValueError(f"T{index}: returned at {txn.ret} before its call at {txn.call}")
        for op in txn.ops:
            if op.kind == "append":
                if not isinstance(op.value, int) or isinstance(op.value, bool):
                    raise ValueError(f"T{index}: append of a non-int {op.value!r}")
                key_writers = writers[op.key]
                if op.value in key_writers:
                    raise ValueError(
                        f"T{index} and T{key_writers[op.value]} both append {op.value} to"
                        f" {_format_key(op.key)}; elements must be unique per key"
                    )
                key_writers[op.value] = index
            elif op.kind == "r":
                if op.value is not None and not isinstance(op.value, tuple):
                    raise ValueError(f"T{index}: read of {op.value!r}, not a tuple or None")
            else:
                raise ValueError(f"T{index}: unknown micro-op kind {op.kind!r}")
    return writers


@dataclass(slots=True)
class _Observations:
    """What the committed transactions' reads say, grouped for the passes."""

    # key -> (reader, list read) for every known read of an ok transaction.
    reads: dict[bytes, list[tuple[int, tuple[int, ...]]]]
    # (reader, key, list read from other transactions): the first read of
    # each key in each ok transaction, with its own earlier appends removed.
    external: list[tuple[int, bytes, tuple[int, ...]]]


def _observe(
    history: Sequence[Transaction],
    writers: Mapping[bytes, Mapping[int, int]],
    anomalies: list[Anomaly],
) -> _Observations:
    """Collect the ok transactions' reads; report internal inconsistencies."""
    observations = _Observations(reads=defaultdict(list), external=[])
    for index, txn in enumerate(history):
        if txn.status != "ok":
            continue
        # key -> (what the last read showed or None, own appends since then)
        state: dict[bytes, tuple[tuple[int, ...] | None, tuple[int, ...]]] = {}
        for op in txn.ops:
            known, appended = state.get(op.key, (None, ()))
            if op.kind == "append":
                assert isinstance(op.value, int)
                state[op.key] = (known, (*appended, op.value))
                continue
            if op.value is None:
                continue  # unknown outcome; a read changes nothing, so state holds
            assert isinstance(op.value, tuple)
            observed = op.value
            observations.reads[op.key].append((index, observed))
            if known is not None:
                expected = known + appended
                if observed != expected:
                    anomalies.append(
                        _internal(history, index, op.key, observed, _format_list(expected))
                    )
            elif appended and observed[len(observed) - len(appended) :] != appended:
                anomalies.append(
                    _internal(
                        history,
                        index,
                        op.key,
                        observed,
                        f"a list ending with its own appends {_format_list(appended)}",
                    )
                )
            else:
                prefix = observed[: len(observed) - len(appended)]
                observations.external.append((index, op.key, prefix))
                _check_intermediate(history, writers, index, op.key, prefix, anomalies)
            state[op.key] = (observed, ())
    return observations


def _internal(
    history: Sequence[Transaction], index: int, key: bytes, observed: tuple[int, ...], wanted: str
) -> Anomaly:
    return Anomaly(
        "internal",
        (index,),
        f"internal: {_name(index)} read {_format_key(key)} = {_format_list(observed)}"
        f" but its own earlier micro-ops require {wanted}\n  {_describe(history, index)}",
    )


def _check_intermediate(
    history: Sequence[Transaction],
    writers: Mapping[bytes, Mapping[int, int]],
    reader: int,
    key: bytes,
    prefix: tuple[int, ...],
    anomalies: list[Anomaly],
) -> None:
    """Report G1b when ``prefix`` ends between two appends of one transaction."""
    if not prefix:
        return
    writer = writers.get(key, {}).get(prefix[-1])
    if writer is None or writer == reader:
        return
    own = [op.value for op in history[writer].ops if op.kind == "append" and op.key == key]
    if own[-1] != prefix[-1]:
        anomalies.append(
            Anomaly(
                "G1b",
                (reader, writer),
                f"G1b (intermediate read): {_name(reader)} read {_format_key(key)}"
                f" ending at {prefix[-1]}, but {_name(writer)} appended"
                f" {own[-1]} after it in the same transaction\n"
                f"  {_describe(history, reader)}\n  {_describe(history, writer)}",
            )
        )


def _version_orders(
    history: Sequence[Transaction],
    observations: _Observations,
    writers: Mapping[bytes, Mapping[int, int]],
    anomalies: list[Anomaly],
) -> dict[bytes, tuple[int, ...]]:
    """Each key's longest read; report reads that contradict it or their writers."""
    orders: dict[bytes, tuple[int, ...]] = {}
    # (key, element) -> first read that showed it, for the per-element checks.
    shown: dict[tuple[bytes, int], int] = {}
    for key in sorted(observations.reads):
        reads = observations.reads[key]
        longest_reader, longest = max(reads, key=lambda read: len(read[1]))
        orders[key] = longest
        incompatible = [
            (reader, observed)
            for reader, observed in reads
            if observed is not longest and longest[: len(observed)] != observed
        ]
        if incompatible:
            reader, observed = incompatible[0]
            position = next(
                i for i, (a, b) in enumerate(zip(longest, observed, strict=False)) if a != b
            )
            anomalies.append(
                Anomaly(
                    "incompatible-order",
                    (longest_reader, reader),
                    f"incompatible-order: {_format_key(key)} was read as"
                    f" {_format_list(longest)} by {_name(longest_reader)} and as"
                    f" {_format_list(observed)} by {_name(reader)}, which is not a"
                    f" prefix of it: at position {position} one holds {longest[position]},"
                    f" the other {observed[position]} ({len(incompatible)} reads of"
                    f" {_format_key(key)} disagree with the longest)",
                )
            )
        # A prefix of the longest read holds no element the longest does not,
        # so only the longest and the incompatible reads need the element checks.
        for reader, observed in [(longest_reader, longest), *incompatible]:
            if len(set(observed)) != len(observed):
                repeated = sorted(e for e, n in Counter(observed).items() if n > 1)
                anomalies.append(
                    Anomaly(
                        "duplicate-elements",
                        (reader,),
                        f"duplicate-elements: {_name(reader)} read"
                        f" {_format_key(key)} = {_format_list(observed)}, which repeats"
                        f" {_format_elements(repeated)}",
                    )
                )
            for element in observed:
                shown.setdefault((key, element), reader)
    _check_writers(history, writers, shown, anomalies)
    return orders


def _check_writers(
    history: Sequence[Transaction],
    writers: Mapping[bytes, Mapping[int, int]],
    shown: Mapping[tuple[bytes, int], int],
    anomalies: list[Anomaly],
) -> None:
    """Report elements read that nobody appended, or that a failed txn appended."""
    garbage: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    aborted: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for (key, element), reader in shown.items():
        writer = writers.get(key, {}).get(element)
        if writer is None:
            garbage[reader, key].append(element)
        elif history[writer].status == "fail":
            aborted[reader, key].append(element)
    for (reader, key), elements in garbage.items():
        anomalies.append(
            Anomaly(
                "garbage-read",
                (reader,),
                f"garbage-read: {_name(reader)} read {_format_key(key)} with"
                f" {_format_elements(elements)}, which no transaction appended",
            )
        )
    for (reader, key), elements in aborted.items():
        failed = sorted({writers[key][element] for element in elements})
        anomalies.append(
            Anomaly(
                "G1a",
                (reader, *failed),
                f"G1a (aborted read): {_name(reader)} read {_format_key(key)} with"
                f" {_format_elements(elements)}, appended by failed"
                f" {', '.join(_name(writer) for writer in failed)}\n"
                + "\n".join(f"  {_describe(history, writer)}" for writer in failed),
            )
        )


# --- the dependency graph -----------------------------------------------------


def _add_edge(graph: _Graph, source: int, target: int, kind: EdgeKind, cause: _Cause) -> None:
    if source != target:
        graph[source].setdefault(target, {}).setdefault(kind, cause)


def _add_data_edges(
    graph: _Graph,
    in_graph: Sequence[bool],
    writers: Mapping[bytes, Mapping[int, int]],
    orders: Mapping[bytes, tuple[int, ...]],
    observations: _Observations,
) -> None:
    """Add the ww, wr and rw edges of promise 4 between graph transactions."""

    def writer_of(key: bytes, element: int) -> int | None:
        writer = writers.get(key, {}).get(element)
        return writer if writer is not None and in_graph[writer] else None

    for key, order in orders.items():
        for earlier, later in itertools.pairwise(order):
            source, target = writer_of(key, earlier), writer_of(key, later)
            if source is not None and target is not None:
                _add_edge(graph, source, target, "ww", (key, earlier, later))
    for reader, key, prefix in observations.external:
        if prefix:
            writer = writer_of(key, prefix[-1])
            if writer is not None:
                _add_edge(graph, writer, reader, "wr", (key, None, prefix[-1]))
        order = orders[key]
        # A prefix of an external read that contradicts the order has no place
        # in it, so it yields no rw edge.
        if len(prefix) < len(order) and order[: len(prefix)] == prefix:
            later = order[len(prefix)]
            overwriter = writer_of(key, later)
            if overwriter is not None:
                read_end = prefix[-1] if prefix else None
                _add_edge(graph, reader, overwriter, "rw", (key, read_end, later))


def _add_realtime_edges(
    graph: _Graph, history: Sequence[Transaction], in_graph: Sequence[bool]
) -> None:
    """Link each graph transaction to the latest transactions completed before its call.

    Sweep calls and returns in time order (a call before a return at the same
    instant, so touching intervals stay concurrent). ``frontier`` holds the
    completed transactions that no completed transaction follows yet; a call
    links from all of them. When a transaction completes it replaces its own
    predecessors in the frontier: anything called later reaches them through
    it. So every real-time order is a path, with few edges.
    """
    events: list[tuple[float, int, int]] = []
    for index, txn in enumerate(history):
        if in_graph[index]:
            events.append((txn.call, 0, index))
            if txn.status == "ok" and txn.ret is not None:
                events.append((txn.ret, 1, index))
    events.sort()
    frontier: set[int] = set()
    predecessors: dict[int, frozenset[int]] = {}
    for _, is_return, index in events:
        if is_return:
            frontier -= predecessors.pop(index)
            frontier.add(index)
        else:
            predecessors[index] = frozenset(frontier)
            for predecessor in frontier:
                _add_edge(graph, predecessor, index, "realtime", None)


def _strongly_connected(
    nodes: Iterable[int], successors: Callable[[int], list[int]]
) -> list[list[int]]:
    """Tarjan's algorithm with an explicit stack; components in reverse topological order."""
    index_of: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    components: list[list[int]] = []
    for root in nodes:
        if root in index_of:
            continue
        index_of[root] = low[root] = len(index_of)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(successors(root)))]
        while work:
            node, pending = work[-1]
            descended = False
            for successor in pending:
                if successor not in index_of:
                    index_of[successor] = low[successor] = len(index_of)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(successors(successor))))
                    descended = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index_of[successor])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index_of[node]:
                component: list[int] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


# --- cycles -------------------------------------------------------------------


# One edge of a reported cycle: (source, target, kind, cause).
_Step = tuple[int, int, EdgeKind, _Cause]


def _label(graph: _Graph, source: int, target: int, allowed: frozenset[EdgeKind]) -> _Step:
    kinds = graph[source][target]
    kind = next(kind for kind in _EDGE_PREFERENCE if kind in allowed and kind in kinds)
    return (source, target, kind, kinds[kind])


def _successors(
    graph: _Graph, node: int, members: set[int], allowed: frozenset[EdgeKind]
) -> list[int]:
    return [
        target
        for target, kinds in graph[node].items()
        if target in members and not allowed.isdisjoint(kinds)
    ]


def _path(
    graph: _Graph, start: int, goal: int, members: set[int], allowed: frozenset[EdgeKind]
) -> list[int] | None:
    """Shortest path from ``start`` to ``goal`` (``goal`` reached by an edge; the
    two may be equal) through ``members`` on ``allowed`` edges, or None."""
    parent: dict[int, int] = {}
    queue = deque([start])
    visited = {start}
    while queue:
        node = queue.popleft()
        for target in _successors(graph, node, members, allowed):
            if target == goal:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), goal]
            if target not in visited:
                visited.add(target)
                parent[target] = node
                queue.append(target)
    return None


def _find_cycle(
    graph: _Graph, members: set[int], allowed: frozenset[EdgeKind], single_rw: bool
) -> list[_Step] | None:
    """A cycle through ``members``: on ``allowed`` edges, or on ``allowed``
    edges closed by exactly one rw edge when ``single_rw``."""
    if single_rw:
        attempts = 0
        for source in sorted(members):
            for target, kinds in graph[source].items():
                if "rw" not in kinds or target not in members:
                    continue
                attempts += 1
                if attempts > _SINGLE_RW_ATTEMPTS:
                    return None
                path = _path(graph, target, source, members, allowed)
                if path is not None:
                    rw: _Step = (source, target, "rw", kinds["rw"])
                    return [rw, *(_label(graph, a, b, allowed) for a, b in _pairs(path))]
        return None
    components = _strongly_connected(
        sorted(members), lambda node: _successors(graph, node, members, allowed)
    )
    for component in components:
        if len(component) > 1:
            start = min(component)
            path = _path(graph, start, start, set(component), allowed)
            assert path is not None  # a strongly connected component has a cycle
            return [_label(graph, a, b, allowed) for a, b in _pairs(path)]
    return None


def _pairs(path: Sequence[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(path))


def _classify(cycle: Sequence[_Step]) -> AnomalyKind:
    kinds = [kind for _, _, kind, _ in cycle]
    rw_count = kinds.count("rw")
    realtime = "realtime" in kinds
    if rw_count == 0:
        if "wr" in kinds:
            return "G1c-realtime" if realtime else "G1c"
        return "G0-realtime" if realtime else "G0"
    if rw_count == 1:
        return "G-single-realtime" if realtime else "G-single"
    return "G2-realtime" if realtime else "G2"


def _cycle_anomaly(
    history: Sequence[Transaction], graph: _Graph, component: Sequence[int], realtime: bool
) -> Anomaly:
    """Name one cycle of ``component``, trying the weakest anomaly first."""
    members = set(component)
    searches = list(_DATA_SEARCHES)
    if realtime:
        searches += [(allowed | {"realtime"}, single) for allowed, single in _DATA_SEARCHES]
    for allowed, single_rw in searches:
        cycle = _find_cycle(graph, members, allowed, single_rw)
        if cycle is not None:
            break
    else:  # pragma: no cover - the last search allows every edge of the component
        raise AssertionError("a strongly connected component without a cycle")
    kind = _classify(cycle)
    names = [_name(source) for source, _, _, _ in cycle]
    ring = " ".join(f"{name} -{step[2]}->" for name, step in zip(names, cycle, strict=True))
    lines = [
        f"{kind}: cycle {ring} {names[0]}"
        f" (in a strongly connected component of {len(component)} transactions)"
    ]
    lines += [f"  {_describe(history, source)}" for source, _, _, _ in cycle]
    lines += [f"  {_explain_edge(step)}" for step in cycle]
    return Anomaly(kind, tuple(source for source, _, _, _ in cycle), "\n".join(lines))


def _explain_edge(step: _Step) -> str:
    source, target, kind, cause = step
    head = f"{_name(source)} -{kind}-> {_name(target)}:"
    if cause is None:
        return f"{head} {_name(source)} returned before {_name(target)} was called"
    key, earlier, later = cause
    shown_key = _format_key(key)
    if kind == "wr":
        return (
            f"{head} {_name(target)} read {shown_key} ending at {later},"
            f" appended by {_name(source)}"
        )
    if kind == "ww":
        return (
            f"{head} {_name(target)} appended {later} to {shown_key} right after"
            f" {_name(source)}'s {earlier}"
        )
    read = "empty" if earlier is None else f"ending at {earlier}"
    return (
        f"{head} {_name(source)} read {shown_key} {read}, and"
        f" {_name(target)} appended {later}, the next element"
    )


# --- text ---------------------------------------------------------------------


def _explain(
    history: Sequence[Transaction],
    anomalies: Sequence[Anomaly],
    counts: Mapping[str, int],
    graph_transactions: int,
    graph_edges: int,
    realtime: bool,
) -> str:
    model = "strict serializability" if realtime else "serializability"
    summary = (
        f"{len(history)} transactions, {graph_transactions} in the dependency graph"
        f" with {graph_edges} edges"
    )
    if not anomalies:
        return f"{model} holds: {summary}, no anomalies"
    tally = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()))
    lines = [f"{model} violated: {len(anomalies)} anomalies ({tally}); {summary}"]
    lines += [anomaly.description for anomaly in anomalies[:_EXPLAINED_ANOMALIES]]
    if len(anomalies) > _EXPLAINED_ANOMALIES:
        lines.append(f"... and {len(anomalies) - _EXPLAINED_ANOMALIES} more")
    return "\n".join(lines)


def _name(index: int) -> str:
    return f"T{index}"


def _describe(history: Sequence[Transaction], index: int) -> str:
    txn = history[index]
    ops = "; ".join(_format_op(op) for op in txn.ops)
    ret = "?" if txn.ret is None else f"{txn.ret:g}"
    return f"T{index} (process {txn.process}, {txn.status}, [{txn.call:g}, {ret}]): {ops}"


def _format_op(op: MicroOp) -> str:
    if op.kind == "append":
        return f"append {_format_key(op.key)} {op.value}"
    if op.value is None:
        return f"r {_format_key(op.key)} ?"
    assert isinstance(op.value, tuple)
    return f"r {_format_key(op.key)} {_format_list(op.value)}"


def _format_key(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _format_list(elements: Sequence[int]) -> str:
    if len(elements) <= 8:
        return "[" + " ".join(map(str, elements)) + "]"
    head = " ".join(map(str, elements[:3]))
    tail = " ".join(map(str, elements[-3:]))
    return f"[{head} ... {tail}] ({len(elements)} elements)"


def _format_elements(elements: Sequence[int]) -> str:
    shown = ", ".join(map(str, elements[:5]))
    more = f" and {len(elements) - 5} more" if len(elements) > 5 else ""
    return f"{shown}{more}"
