"""``shardkv``: the command-line client, and ``shardkv up`` (a local cluster).

::

    shardkv up [--nodes 3] [--groups 4] [--data-dir ./shardkv-data] [--port 7000] [--tls]
    shardkv certs --out DIR [--nodes 3] [--host HOST ...]
    shardkv [--router ADDR] [--timeout SECONDS] put KEY [VALUE]
    shardkv [--router ADDR] [--timeout SECONDS] get KEY
    shardkv [--router ADDR] [--timeout SECONDS] delete KEY
    shardkv [--router ADDR] [--timeout SECONDS] scan [--prefix P | --start S --end E] [--limit N]
    shardkv [--router ADDR] [--timeout SECONDS] status [--json]
    shardkv [--router ADDR] [--timeout SECONDS] txn list
    shardkv [--router ADDR] [--timeout SECONDS] txn show ID
    shardkv [--router ADDR] [--timeout SECONDS] txn resolve ID (--commit | --abort)
    shardkv [--router ADDR] admin add-group [--weight W] [--nodes A,B,C] [--id G]
                                            [--max-rate K] [--plan]
    shardkv [--router ADDR] admin remove-group G [--max-rate K] [--plan]
    shardkv [--router ADDR] admin set-weight G W [--max-rate K] [--plan]
    shardkv [--router ADDR] admin move-rate K
    shardkv [--router ADDR] admin rebalance (--plan | --apply)
    shardkv [--router ADDR] admin move-replica G FROM TO [--plan]
    shardkv [--router ADDR] admin remove-node N [--plan]
    shardkv [--router ADDR] admin transfer-leader G TO
    shardkv [--router ADDR] admin add-node ADDR

Every command but ``up`` goes through ``router.Client``. The router address
comes from ``--router`` (before or after the command), else ``SHARDKV_ROUTER``,
else 127.0.0.1:7000; several comma-separated addresses are tried in turn.
``--token`` (else ``SHARDKV_TOKEN``) is the bearer token sent on every call,
for a router that requires one (``router.auth``).
With ``--tls-ca-file``, ``--tls-cert-file`` and ``--tls-key-file`` (else
``SHARDKV_TLS_CA_FILE``, ``SHARDKV_TLS_CERT_FILE``, ``SHARDKV_TLS_KEY_FILE``;
all three or none) the client speaks mutual TLS to the router (``shardkv.tls``).
``certs`` writes a dev CA and certificates (``router.certs``); ``up --tls``
makes them once under its data directory and runs every process with them.

Keys and values on the command line are taken as the bytes the shell passed
(``os.fsencode``); ``put KEY`` without VALUE reads the value from stdin.

Output: ``get`` writes the value's raw bytes (a newline follows only on a
terminal); ``scan`` writes ``key<TAB>value`` lines, with backslash escapes
for what is not printable (``\\t``, ``\\n``, ``\\\\``, ``\\xNN`` for a byte that is
not UTF-8, ``\\uNNNN`` for a character that is not printable); ``put`` and
``delete`` write nothing; ``status`` a table, or with ``--json`` the same
summary as JSON (``summarize_status``). While the ring changes, ``status``
also shows each move of the migration: from and to which group, its phase, a
progress bar of keys copied against the estimate, the rate since the move
started, the time left at that rate, how long the moving keys were
unwritable (``frozen``), and why a move is stuck when it is. It shows each
node's state (up, leaving, removed), each group's learners and preferred
leader, ``retired`` for a group removed from the ring, and the replica moves
under way: group, from and to which node, phase (pending, learning,
voting), for how long, and why a move is stuck when it is.

``admin`` is for operators: ``add-group``, ``remove-group`` and ``set-weight``
each change the ring into a new epoch through the meta group; the moves then
run in the background (``status`` follows them). With ``--plan`` they change
nothing and print what would move: one row per pair of groups, with the
share of the ring, the estimated keys (the source's key count times the
moving part of its share) and the estimated time at ``PLANNING_RATE`` keys
per second (or half the change's ``--max-rate``, if lower). Bytes are not known
before the copy (nodes report key counts only); ``status`` shows the bytes
copied. ``rebalance --plan`` prints the plan of the ring change under way,
or else each group's share of the ring beside its share of the weights: the
ring is a function of the weights, so
without a change of weights nothing is to move ("balanced: nothing to
move"). ``rebalance --apply`` says the same: a change under way runs by
itself. A ring change the meta group refuses (one is under way already,
FAILED_PRECONDITION; the group exists) prints why and exits 4.
``--max-rate K`` holds the change's copies to K keys per second over all its
moves, and its collects (the drops at the sources) to K apart from them
(default 0: no limit), so that the writes sharing the nodes keep their
latency; ``move-rate K`` sets it for the change under way (0 lifts it; exit 4
when none runs), and ``status`` shows it. Asking a change under way again
keeps its limit.

Placement (``admin``, through ``ChangePlacement``): ``move-replica``,
``remove-node`` (decommission) and ``transfer-leader`` plan or start a
placement change; ``rebalance`` prints its ring part, then its placement
part: the replica moves and preferred leaders that even out replicas and
leaders over the up nodes (``format_placement``: what the planned map
changes in the current one), which ``--apply`` starts. ``add-node`` changes
nothing: a node joins by itself (``shardkv-node --join <member address>``);
it asks the node at ADDR for its id, directly (``Node.GetClusterMap``, with
the same ``--tls-*`` files), and exits 0 when the map lists it as a member,
4 when not (another cluster, removed, unknown), 3 when nothing answers.

``txn`` is for operators: ``list`` prints the transactions not finished (a
table: id ``hexclient:seq``, state, time to the deadline after which anyone
may abort it, primary group, groups holding its locks, a few locked keys),
``show`` one of them with its record and each group's prepare, ``resolve``
finishes a stuck one as committed or aborted and prints the outcome. The
router refuses a resolution its record contradicts (FAILED_PRECONDITION):
its reason goes to stderr and the exit status is 4.

Exit statuses: 0 done; 1 the key or transaction does not exist (``get``,
``delete``, ``txn show``, ``txn resolve``: stdout stays empty, a note goes to
stderr); 2 bad usage or input (also an INVALID_ARGUMENT from the cluster, and
a transaction id that is not ``hexclient:seq``); 3 the cluster is unavailable
(no router answered, or a group had no leader, within ``--timeout``, default
5 s); 4 the cluster failed or refused the request in another way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from router.client import Client, parse_addresses
from router.errors import ClientError, DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from shardkv.ring import build_ring, moving_shares
from shardkv.tls import TlsError, TlsFiles
from shardkv.txn_protocol import now_ms, step_keys, txn_name
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, node_pb2_grpc, router_pb2

__all__ = [
    "DEFAULT_ROUTER",
    "DEFAULT_TIMEOUT",
    "ENV_ROUTER",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "PLANNING_RATE",
    "GroupRow",
    "MigrationSummary",
    "MoveRow",
    "NodeRow",
    "PlanRow",
    "ReplicaMoveRow",
    "StatusSummary",
    "build_parser",
    "escape",
    "format_placement",
    "format_plan",
    "format_status",
    "format_txn",
    "format_txn_list",
    "main",
    "plan_rows",
    "resolve_router",
    "resolve_tls",
    "summarize_status",
]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_FAILED = 4

ENV_ROUTER = "SHARDKV_ROUTER"
ENV_TOKEN = "SHARDKV_TOKEN"
DEFAULT_ROUTER = "127.0.0.1:7000"
# Shorter than the library's 10 s: at a prompt, a cluster that is down should say so soon.
DEFAULT_TIMEOUT = 5.0

_PROGRAM = "shardkv"

# Keys per second a move copies, for plans' time estimates: a planning figure
# (a chunked copy through the target's Raft log), not a measurement; status
# shows each move's real rate.
PLANNING_RATE = 50_000


# -- output -----------------------------------------------------------------------------

_NAMED_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(data: bytes) -> str:
    """``data`` as one printable line: UTF-8 text as is, the rest as backslash escapes.

    A byte that is not part of valid UTF-8 becomes ``\\xNN``; a character
    that is not printable ``\\xNN`` below 0x80, ``\\uNNNN`` or ``\\UNNNNNNNN``
    above, so no escape means two things.
    """
    text = data.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    parts: list[str] = []
    for char in text:
        code = ord(char)
        if char in _NAMED_ESCAPES:
            parts.append(_NAMED_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
            parts.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            parts.append(char)
        elif code < 0x80:
            parts.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    return "".join(parts)


def _write_text(text: str) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))


# -- status -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRow:
    node_id: int
    address: str
    reachable: bool
    # Why the router could not reach it ("" when reachable).
    error: str
    # "up", "leaving" (its replicas move away: remove-node) or "removed" (it
    # hosts nothing); "" for a node the map does not list.
    state: str = "up"


@dataclass(frozen=True)
class GroupRow:
    group_id: int
    replicas: tuple[int, ...]
    # None when no reachable replica says it leads the group.
    leader: int | None
    term: int
    applied_index: int
    key_count: int
    epoch: int
    # Fraction of the ring, 0..1; None for groups off the ring (the meta group).
    share: float | None
    # Nodes catching up as Raft learners (a replica move heading there).
    learners: tuple[int, ...] = ()
    # The node the map asks to lead the group (None: the default spread).
    preferred_leader: int | None = None
    # Removed by remove-group: kept in the map, holds nothing.
    retired: bool = False


@dataclass(frozen=True)
class ReplicaMoveRow:
    """One replica move, as the meta group last recorded it (times in unix ms)."""

    group_id: int
    from_node: int
    to_node: int
    # "pending" (recorded), "learning" (the new node catching up) or "voting"
    # (the new node a voter, the old one being removed).
    phase: str
    started_ms: int
    phase_started_ms: int
    # Why the last step failed ("" while the move progresses).
    stuck: str


@dataclass(frozen=True)
class MoveRow:
    """One move of a migration, as the meta group last recorded it (times in unix ms)."""

    source: int
    target: int
    # "pending", "copying", "frozen", "active" or "done".
    phase: str
    keys_copied: int
    keys_estimate: int
    bytes_copied: int
    started_ms: int
    finished_ms: int
    # How long the moving keys were unwritable (0 until known).
    frozen_ms: int
    # Why the last step failed ("" while the move progresses).
    stuck: str


@dataclass(frozen=True)
class MigrationSummary:
    """The ring change under way: to the ring of ``epoch``."""

    epoch: int
    reason: str
    started_ms: int
    retiring: tuple[int, ...]
    moves: tuple[MoveRow, ...]
    # Keys per second its bulk steps may carry (0: no limit).
    max_keys_per_second: int = 0


@dataclass(frozen=True)
class StatusSummary:
    cluster_id: str
    epoch: int
    nodes: tuple[NodeRow, ...]
    groups: tuple[GroupRow, ...]
    migration: MigrationSummary | None = None
    replica_moves: tuple[ReplicaMoveRow, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def summarize_status(status: router_pb2.ClusterStatusResponse) -> StatusSummary:
    """One row per node and per group, from the router's map and the nodes' own reports.

    A group's leader is the reachable replica that reports itself leader at
    the highest term; its term, applied index, key count and epoch are the
    leader's. With no leader, they are the highest any replica reports.
    """
    addresses = {node.node_id: node.address for node in status.map.nodes}
    # An older map leaves the state empty for a member: it is up.
    node_states = {node.node_id: node.state or "up" for node in status.map.nodes}
    reports = {report.node_id: report for report in status.nodes}
    nodes = tuple(
        NodeRow(
            node_id=node_id,
            address=reports[node_id].address if node_id in reports else addresses[node_id],
            reachable=node_id in reports and not reports[node_id].error,
            error=reports[node_id].error if node_id in reports else "not reported by the router",
            state=node_states.get(node_id, ""),
        )
        for node_id in sorted(addresses.keys() | reports.keys())
    )
    replica_states: dict[int, list[tuple[int, node_pb2.GroupStatus]]] = {}
    for report in status.nodes:
        if not report.error:
            for group in report.status.groups:
                replica_states.setdefault(group.group_id, []).append((report.node_id, group))
    shares = {share.group_id: share.share for share in status.shares}
    groups = []
    for info in sorted(status.map.groups, key=lambda info: info.group_id):
        states = replica_states.get(info.group_id, [])
        leaders = [
            (state.term, node_id, state) for node_id, state in states if state.role == "leader"
        ]
        if leaders:
            _, leader, state = max(leaders, key=lambda entry: (entry[0], entry[1]))
            term, applied, keys, epoch = state.term, state.applied, state.key_count, state.epoch
        else:
            leader = None
            term = max((state.term for _, state in states), default=0)
            applied = max((state.applied for _, state in states), default=0)
            keys = max((state.key_count for _, state in states), default=0)
            epoch = max((state.epoch for _, state in states), default=0)
        groups.append(
            GroupRow(
                group_id=info.group_id,
                replicas=tuple(info.replicas),
                leader=leader,
                term=term,
                applied_index=applied,
                key_count=keys,
                epoch=epoch,
                share=shares.get(info.group_id),
                learners=tuple(info.learners),
                preferred_leader=info.preferred_leader or None,
                retired=info.retired,
            )
        )
    return StatusSummary(
        cluster_id=status.map.cluster_id,
        epoch=status.map.ring.epoch,
        nodes=nodes,
        groups=tuple(groups),
        migration=_migration(status.map) if status.map.HasField("migration") else None,
        replica_moves=tuple(
            ReplicaMoveRow(
                group_id=move.group_id,
                from_node=move.from_node,
                to_node=move.to_node,
                phase=cluster_pb2.ReplicaPhase.Name(move.phase).removeprefix("REPLICA_").lower(),
                started_ms=move.started_ms,
                phase_started_ms=move.phase_started_ms,
                stuck=move.stuck,
            )
            for move in status.map.replica_moves
        ),
    )


def _phase_name(phase: cluster_pb2.MovePhase) -> str:
    return cluster_pb2.MovePhase.Name(phase).removeprefix("MOVE_").lower()


def _migration(cluster_map: cluster_pb2.ClusterMap) -> MigrationSummary:
    migration = cluster_map.migration
    return MigrationSummary(
        epoch=migration.target.epoch,
        reason=migration.reason,
        started_ms=migration.started_ms,
        retiring=tuple(migration.retiring),
        max_keys_per_second=migration.max_keys_per_second,
        moves=tuple(
            MoveRow(
                source=move.source,
                target=move.target,
                phase=_phase_name(move.phase),
                keys_copied=move.keys_copied,
                keys_estimate=move.keys_estimate,
                bytes_copied=move.bytes_copied,
                started_ms=move.started_ms,
                finished_ms=move.finished_ms,
                frozen_ms=move.frozen_ms,
                stuck=move.stuck,
            )
            for move in migration.moves
        ),
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    )


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


_BAR = 20


def _bar(done: int, total: int) -> str:
    fraction = min(1.0, done / total) if total else 0.0
    filled = int(fraction * _BAR)
    return f"[{'#' * filled}{'.' * (_BAR - filled)}] {fraction * 100:3.0f}%"


def _move_cells(move: MoveRow, now: int) -> tuple[str, ...]:
    """PROGRESS, KEYS, BYTES, RATE, ETA and FROZEN of a move at ``now`` (unix ms)."""
    copied = move.phase in ("active", "done")
    progress = _bar(1, 1) if copied else _bar(move.keys_copied, move.keys_estimate)
    keys = f"{move.keys_copied:,}/{move.keys_estimate:,}"
    until = move.finished_ms or now
    rate = None
    if move.started_ms and until > move.started_ms:
        rate = move.keys_copied / ((until - move.started_ms) / 1000)
    eta = "-"
    if copied:
        eta = "done"
    elif rate:
        eta = _duration(max(0, move.keys_estimate - move.keys_copied) / rate)
    return (
        progress,
        keys,
        f"{move.bytes_copied:,}",
        "-" if rate is None else f"{rate:,.0f}/s",
        eta,
        f"{move.frozen_ms} ms" if move.frozen_ms else "-",
    )


def _format_migration(migration: MigrationSummary, now: int) -> str:
    started = (
        f", started {_duration(max(0, now - migration.started_ms) / 1000)} ago"
        if migration.started_ms
        else ""
    )
    lines = [
        f"ring change to epoch {migration.epoch}"
        + (f" ({migration.reason})" if migration.reason else "")
        + started
        + (
            f", at most {migration.max_keys_per_second:,} keys/s"
            if migration.max_keys_per_second
            else ""
        )
    ]
    if migration.retiring:
        lines.append(f"retiring {_groups_text(migration.retiring)} once it is done")
    rows = [
        (f"{move.source}->{move.target}", move.phase, *_move_cells(move, now))
        for move in migration.moves
    ]
    lines.append(
        _table(("MOVE", "PHASE", "PROGRESS", "KEYS", "BYTES", "RATE", "ETA", "FROZEN"), rows)
    )
    lines.extend(
        f"{move.source}->{move.target} stuck: {move.stuck}"
        for move in migration.moves
        if move.stuck
    )
    return "\n".join(lines) + "\n"


def _format_replica_moves(moves: Sequence[ReplicaMoveRow], now: int) -> str:
    def ago(since_ms: int) -> str:
        return _duration(max(0, now - since_ms) / 1000) if since_ms else "-"

    rows = [
        (
            str(move.group_id),
            f"{move.from_node}->{move.to_node}",
            move.phase,
            ago(move.phase_started_ms),
            ago(move.started_ms),
        )
        for move in moves
    ]
    lines = [
        f"replica moves under way: {len(moves)}",
        _table(("GROUP", "MOVE", "PHASE", "IN PHASE", "STARTED"), rows),
    ]
    lines.extend(
        f"group {move.group_id} {move.from_node}->{move.to_node} stuck: {move.stuck}"
        for move in moves
        if move.stuck
    )
    return "\n".join(lines) + "\n"


def _node_ids_text(node_ids: Iterable[int]) -> str:
    return ",".join(map(str, node_ids)) or "-"


def _group_cells(group: GroupRow) -> tuple[str, ...]:
    if group.retired:
        # A retired group holds nothing: its numbers would be stale.
        return (str(group.group_id), "-", "-", "retired", *("-",) * 6)
    return (
        str(group.group_id),
        _node_ids_text(group.replicas),
        _node_ids_text(group.learners),
        "-" if group.leader is None else str(group.leader),
        "-" if group.preferred_leader is None else str(group.preferred_leader),
        str(group.term),
        str(group.applied_index),
        str(group.key_count),
        str(group.epoch),
        "-" if group.share is None else f"{group.share * 100:.1f}%",
    )


def format_status(summary: StatusSummary, now: int | None = None) -> str:
    """``status``'s text; ``now`` (unix ms, default the clock) times the moves under way."""
    at = now_ms() if now is None else now
    node_rows = [
        (
            str(node.node_id),
            node.address,
            node.state or "-",
            "yes" if node.reachable else f"no: {node.error}",
        )
        for node in summary.nodes
    ]
    return (
        f"cluster {summary.cluster_id or '(unknown)'}, ring epoch {summary.epoch}\n\n"
        + _table(("NODE", "ADDRESS", "STATE", "REACHABLE"), node_rows)
        + "\n\n"
        + _table(
            (
                "GROUP",
                "REPLICAS",
                "LEARNERS",
                "LEADER",
                "PREFERRED",
                "TERM",
                "APPLIED",
                "KEYS",
                "EPOCH",
                "SHARE",
            ),
            [_group_cells(group) for group in summary.groups],
        )
        + "\n"
        + ("" if summary.migration is None else "\n" + _format_migration(summary.migration, at))
        + ("\n" + _format_replica_moves(summary.replica_moves, at) if summary.replica_moves else "")
    )


# -- ring changes -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRow:
    """What one pair of groups would move: a ``share`` of the ring, estimated keys and time."""

    source: int
    target: int
    share: float
    # None when no leader of the source reported its key count.
    keys: int | None
    seconds: float | None


def plan_rows(
    cluster_map: cluster_pb2.ClusterMap, key_counts: Mapping[int, int]
) -> tuple[PlanRow, ...]:
    """The moves of ``cluster_map``'s migration (planned or under way), sorted by groups.

    A source's keys are taken as spread evenly over its arcs: the moving
    part of its key count is its count times the moving share over its
    share. Nothing when the map has no migration.
    """
    if not cluster_map.HasField("migration"):
        return ()
    ring = build_ring(cluster_map.ring)
    shares = ring.shares()
    rows = []
    for (source, target), share in sorted(
        moving_shares(ring, build_ring(cluster_map.migration.target)).items()
    ):
        count = key_counts.get(source)
        keys = None
        if count is not None and shares.get(source):
            keys = round(count * share / shares[source])
        rows.append(
            PlanRow(
                source=source,
                target=target,
                share=share,
                keys=keys,
                seconds=None if keys is None else keys / _planning_rate(cluster_map),
            )
        )
    return tuple(rows)


def _planning_rate(cluster_map: cluster_pb2.ClusterMap) -> int:
    """Keys per second a plan's estimates take: ``PLANNING_RATE``, or half the change's
    limit if lower (its copies run at the limit, and its collects apart, at the limit
    too: a limited change takes about twice its keys over the limit)."""
    limit = cluster_map.migration.max_keys_per_second
    return min(PLANNING_RATE, max(1, limit // 2)) if limit else PLANNING_RATE


def format_plan(cluster_map: cluster_pb2.ClusterMap, rows: Sequence[PlanRow]) -> str:
    """A plan's table and its totals; "nothing to move" when it is empty."""
    if not rows:
        return f"nothing to move (ring epoch {cluster_map.ring.epoch})\n"
    migration = cluster_map.migration
    header = f"ring epoch {cluster_map.ring.epoch} -> {migration.target.epoch}"
    if migration.reason:
        header = f"{migration.reason}: {header}"
    table = _table(
        ("FROM", "TO", "SHARE", "KEYS (EST.)", "TIME (EST.)"),
        [
            (
                str(row.source),
                str(row.target),
                f"{row.share * 100:.1f}%",
                "?" if row.keys is None else f"~{row.keys:,}",
                "?" if row.seconds is None else f"~{_duration(row.seconds)}",
            )
            for row in rows
        ],
    )
    known = [row.keys for row in rows if row.keys is not None]
    rate = _planning_rate(cluster_map)
    keys = f"~{sum(known):,} keys" if len(known) == len(rows) else "keys unknown for some groups"
    total = (
        f"total: {sum(row.share for row in rows) * 100:.1f}% of the ring, {keys}, "
        f"~{_duration(sum(known) / rate)} at {rate:,} keys/s; "
        "bytes are known only as they are copied"
    )
    return f"{header}\n{table}\n{total}\n"


def _key_counts(status: router_pb2.ClusterStatusResponse) -> dict[int, int]:
    """Each group's key count as its leader reports it (groups with no leader left out)."""
    return {
        group.group_id: group.key_count
        for group in summarize_status(status).groups
        if group.leader is not None
    }


def _format_balance(status: router_pb2.ClusterStatusResponse) -> str:
    weights = {entry.group_id: entry.weight for entry in status.map.ring.groups}
    total = sum(weights.values())
    if not total:
        return f"no group on the ring (epoch {status.map.ring.epoch})\n"
    shares = {share.group_id: share.share for share in status.shares}
    rows = [
        (
            str(group_id),
            str(weight),
            f"{weight / total * 100:.1f}%",
            f"{shares.get(group_id, 0.0) * 100:.1f}%",
        )
        for group_id, weight in sorted(weights.items())
    ]
    return _table(("GROUP", "WEIGHT", "WEIGHT SHARE", "RING SHARE"), rows) + "\n"


_REFUSED = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)


def _change_ring(
    client: Client,
    args: argparse.Namespace,
    change: Callable[[bool], cluster_pb2.ClusterMap],
) -> int:
    """Plan (``--plan``) or start a ring change, and print its plan."""
    status = client.status()  # first: the key counts the estimates need
    try:
        changed = change(args.plan)
    except ClientError as exc:
        if exc.code not in _REFUSED:
            raise
        return _fail(f"cannot change the ring: {exc.details}", EXIT_FAILED)
    plan = format_plan(changed, plan_rows(changed, _key_counts(status)))
    if args.plan:
        _write_text("plan only, nothing changed: " + plan)
    elif changed.HasField("migration"):
        _write_text("started: " + plan + "follow it with `shardkv status`\n")
    else:
        _write_text(plan)
    return EXIT_OK


def _add_group(client: Client, args: argparse.Namespace) -> int:
    return _change_ring(
        client,
        args,
        lambda dry_run: client.add_group(
            args.weight, args.nodes, args.id, dry_run, max_keys_per_second=args.max_rate
        ),
    )


def _remove_group(client: Client, args: argparse.Namespace) -> int:
    return _change_ring(
        client,
        args,
        lambda dry_run: client.remove_group(args.group, dry_run, max_keys_per_second=args.max_rate),
    )


def _set_weight(client: Client, args: argparse.Namespace) -> int:
    return _change_ring(
        client,
        args,
        lambda dry_run: client.set_weight(
            args.group, args.weight, dry_run, max_keys_per_second=args.max_rate
        ),
    )


def _move_rate(client: Client, args: argparse.Namespace) -> int:
    """Limit the ring change under way (0: lift the limit)."""
    try:
        changed = client.set_move_rate(args.keys_per_second)
    except ClientError as exc:
        if exc.code not in _REFUSED:
            raise
        return _fail(f"cannot limit the ring change: {exc.details}", EXIT_FAILED)
    migration = changed.migration
    limit = migration.max_keys_per_second
    _write_text(
        f"ring change to epoch {migration.target.epoch} ({migration.reason}): "
        + (f"at most {limit:,} keys/s" if limit else "no limit")
        + " from its next chunk on\n"
    )
    return EXIT_OK


def _rebalance(client: Client, args: argparse.Namespace) -> int:
    """The ring part (nothing to apply unless a change is under way), then the placement part."""
    status = client.status()
    if status.map.HasField("migration"):
        plan = format_plan(status.map, plan_rows(status.map, _key_counts(status)))
        _write_text("under way: " + plan + "it runs by itself; follow it with `shardkv status`\n")
    else:
        _write_text(
            _format_balance(status)
            + "balanced: nothing to move (the ring gives each group the arcs of its weight; "
            "change weights with `shardkv admin set-weight`)\n"
        )
    _write_text("\n")
    return _change_placement(
        client,
        args.plan,
        status.map,
        lambda dry_run: client.rebalance_replicas(dry_run),
        # Moves under way: there is nothing to plan yet, which is an answer.
        refused_plan_is_answer=True,
    )


# -- placement changes ------------------------------------------------------------------


def _replicas_per_node(cluster_map: cluster_pb2.ClusterMap) -> dict[int, int]:
    """Replicas per node once the map's replica moves are done (retired groups hold none)."""
    leaving: dict[int, set[int]] = {}
    for move in cluster_map.replica_moves:
        leaving.setdefault(move.group_id, set()).add(move.from_node)
    counts = dict.fromkeys((node.node_id for node in cluster_map.nodes), 0)
    for group in cluster_map.groups:
        if not group.retired:
            held = {*group.replicas, *group.learners} - leaving.get(group.group_id, set())
            for node_id in held:
                counts[node_id] = counts.get(node_id, 0) + 1
    return counts


def _changed(before: str, after: str) -> str:
    return before if before == after else f"{before} -> {after}"


def format_placement(current: cluster_pb2.ClusterMap, planned: cluster_pb2.ClusterMap) -> str:
    """What ``planned`` changes in ``current``'s placement; "nothing to move" when nothing.

    One row per group that changes: its voters, learners and preferred leader
    (``before -> after`` where they differ) and its new replica move; then
    node states that change, and the replicas per node before and after.
    """
    lines = _placement_changes(current, planned)
    if not lines:
        return "placement: nothing to move (replicas and leaders are spread evenly)\n"
    return "placement:\n" + "\n".join(lines) + "\n"


def _placement_changes(
    current: cluster_pb2.ClusterMap, planned: cluster_pb2.ClusterMap
) -> list[str]:
    """``format_placement``'s lines; none when ``planned`` changes nothing of the placement."""
    before_groups = {group.group_id: group for group in current.groups}
    known = {(m.group_id, m.from_node, m.to_node) for m in current.replica_moves}
    new_moves = {
        move.group_id: f"{move.from_node}->{move.to_node}"
        for move in planned.replica_moves
        if (move.group_id, move.from_node, move.to_node) not in known
    }
    rows = []
    for group in sorted(planned.groups, key=lambda group: group.group_id):
        old = before_groups.get(group.group_id, cluster_pb2.GroupInfo())
        cells = (
            _changed(_node_ids_text(old.replicas), _node_ids_text(group.replicas)),
            _changed(_node_ids_text(old.learners), _node_ids_text(group.learners)),
            _changed(str(old.preferred_leader or "-"), str(group.preferred_leader or "-")),
        )
        move = new_moves.get(group.group_id, "-")
        if move != "-" or any(" -> " in cell for cell in cells):
            rows.append((str(group.group_id), *cells, move))
    old_states = {node.node_id: node.state or "up" for node in current.nodes}
    node_lines = [
        f"node {node.node_id}: {old_states.get(node.node_id, '-')} -> {node.state or 'up'}"
        for node in planned.nodes
        if old_states.get(node.node_id) != (node.state or "up")
    ]
    if not rows and not node_lines:
        return []
    lines = []
    if rows:
        lines.append(_table(("GROUP", "REPLICAS", "LEARNERS", "PREFERRED LEADER", "MOVE"), rows))
    lines.extend(node_lines)
    counts_before, counts_after = _replicas_per_node(current), _replicas_per_node(planned)
    lines.append(
        "replicas per node, once the moves are done: "
        + ", ".join(
            f"{node_id}: {_changed(str(counts_before.get(node_id, 0)), str(count))}"
            for node_id, count in sorted(counts_after.items())
        )
    )
    return lines


def _change_placement(
    client: Client,
    plan: bool,
    current: cluster_pb2.ClusterMap,
    change: Callable[[bool], cluster_pb2.ClusterMap],
    *,
    refused_plan_is_answer: bool = False,
) -> int:
    """Plan (``plan``) or start a placement change, and print what it changes in ``current``."""
    try:
        changed = change(plan)
    except ClientError as exc:
        if exc.code not in _REFUSED:
            raise
        if plan and refused_plan_is_answer:
            _write_text(f"placement: nothing planned: {exc.details}\n")
            return EXIT_OK
        return _fail(f"cannot change the placement: {exc.details}", EXIT_FAILED)
    text = format_placement(current, changed)
    if plan:
        _write_text("plan only, nothing changed: " + text)
    elif _placement_changes(current, changed):
        _write_text("started: " + text + "follow it with `shardkv status`\n")
    else:
        _write_text(text)
    return EXIT_OK


def _move_replica(client: Client, args: argparse.Namespace) -> int:
    return _change_placement(
        client,
        args.plan,
        client.status().map,
        lambda dry_run: client.move_replica(args.group, args.from_node, args.to_node, dry_run),
    )


def _remove_node(client: Client, args: argparse.Namespace) -> int:
    return _change_placement(
        client,
        args.plan,
        client.status().map,
        lambda dry_run: client.remove_node(args.node, dry_run),
    )


def _transfer_leader(client: Client, args: argparse.Namespace) -> int:
    current = client.status().map
    try:
        client.transfer_leader(args.group, args.to_node)
    except ClientError as exc:
        if exc.code not in _REFUSED:
            raise
        return _fail(f"cannot transfer the lead: {exc.details}", EXIT_FAILED)
    before = next(
        (group.preferred_leader for group in current.groups if group.group_id == args.group), 0
    )
    _write_text(
        f"group {args.group}: preferred leader {before or '-'} -> {args.to_node}; the lead "
        "moves there once the node is caught up (`shardkv status` shows the leader)\n"
    )
    return EXIT_OK


def _ask_node(address: str, args: argparse.Namespace) -> node_pb2.GetClusterMapResponse:
    """The node at ``address``'s id and map, straight from it (not through the router)."""
    tls = resolve_tls(args, os.environ)
    material = tls.load() if tls is not None else None
    channel = (
        grpc.insecure_channel(address)
        if material is None
        else grpc.secure_channel(address, material.channel_credentials())
    )
    with channel:
        stub = node_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]
        response: node_pb2.GetClusterMapResponse = stub.GetClusterMap(
            node_pb2.GetClusterMapRequest(), timeout=getattr(args, "timeout", DEFAULT_TIMEOUT)
        )
        return response


def _add_node(client: Client, args: argparse.Namespace) -> int:
    """Whether the node at ADDR is a member; a node becomes one by joining, not from here."""
    try:
        [address] = parse_addresses(args.address)
    except ValueError as exc:
        raise _UsageError(f"add-node: {exc}") from None
    cluster_map = client.status().map
    members = [node for node in cluster_map.nodes if node.state in ("", "up")]
    join = f"`shardkv-node --join {members[0].address if members else '<member address>'}`"
    try:
        answer = _ask_node(address, args)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return _fail(
                f"no node answers at {address}: {details}; start it with {join}",
                EXIT_UNAVAILABLE,
            )
        return _fail(f"the node at {address} did not answer: {details}", EXIT_FAILED)
    node_id = answer.node_id
    other = answer.map.cluster_id
    if answer.HasField("map") and other and other != cluster_map.cluster_id:
        return _fail(
            f"node {node_id} at {address} is not a member: it belongs to cluster {other}, "
            f"not {cluster_map.cluster_id}",
            EXIT_FAILED,
        )
    member = next((node for node in cluster_map.nodes if node.node_id == node_id), None)
    if member is None:
        return _fail(
            f"node {node_id} at {address} is not a member: start it with {join}", EXIT_FAILED
        )
    if member.state == "removed":
        return _fail(
            f"node {node_id} at {address} was removed from the cluster (remove-node); "
            "a removed node does not come back: give a new node a new id and start it "
            f"with {join}",
            EXIT_FAILED,
        )
    held = _replicas_per_node(cluster_map).get(node_id, 0)
    where = "" if member.address == address else f" (the map has it at {member.address})"
    hint = (
        f"; it holds {held} replicas"
        if held
        else "; it holds no replica yet: `shardkv admin rebalance --apply` places some there"
    )
    _write_text(f"node {node_id} at {address} is a member{where}, {member.state or 'up'}{hint}\n")
    return EXIT_OK


_ADMIN_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "add-group": _add_group,
    "remove-group": _remove_group,
    "set-weight": _set_weight,
    "move-rate": _move_rate,
    "rebalance": _rebalance,
    "move-replica": _move_replica,
    "remove-node": _remove_node,
    "transfer-leader": _transfer_leader,
    "add-node": _add_node,
}


def _admin(client: Client, args: argparse.Namespace) -> int:
    return _ADMIN_COMMANDS[args.admin_command](client, args)


# -- transactions -----------------------------------------------------------------------

# How many locked keys a row of `txn list` shows; `txn show` shows them all.
_KEYS_IN_LIST = 3


def _state_name(state: kv_pb2.TxnState) -> str:
    return kv_pb2.TxnState.Name(state).removeprefix("TXN_").lower()


def _deadline_text(deadline_ms: int, now: int) -> str:
    """Time left before anyone may abort the transaction, or how long ago that became so."""
    if not deadline_ms:
        return "-"
    left = (deadline_ms - now) / 1000
    return f"in {left:.1f}s" if left >= 0 else f"expired {-left:.1f}s ago"


def _groups_text(groups: Iterable[int]) -> str:
    return ",".join(map(str, sorted(set(groups)))) or "-"


def _keys_text(keys: Sequence[bytes], most: int | None = None) -> str:
    shown = keys if most is None else keys[:most]
    text = ", ".join(escape(key) for key in shown) or "-"
    if len(keys) > len(shown):
        text += f" (+{len(keys) - len(shown)} more)"
    return text


def format_txn_list(summaries: Sequence[router_pb2.TxnSummary], now: int) -> str:
    """``txn list``'s table; ``now`` in unix ms (the deadlines are the coordinators' clocks)."""
    if not summaries:
        return "no unfinished transactions\n"
    rows = [
        (
            txn_name(summary.txn),
            _state_name(summary.state),
            _deadline_text(summary.deadline_ms, now),
            str(summary.primary_group) if summary.primary_group else "-",
            _groups_text(summary.prepared_groups),
            _keys_text(list(summary.locked_keys), _KEYS_IN_LIST),
        )
        for summary in summaries
    ]
    return _table(("ID", "STATE", "DEADLINE", "PRIMARY", "PREPARED IN", "LOCKED KEYS"), rows) + "\n"


def format_txn(shown: router_pb2.ShowTxnResponse, now: int) -> str:
    """``txn show``: the summary, the record at the primary, then each group's prepare."""
    summary = shown.txn
    primary = f"group {summary.primary_group}" if summary.primary_group else "-"
    if summary.primary_key:
        primary += f", key {escape(summary.primary_key)}"
    deadline_ms = summary.deadline_ms or shown.record.deadline_ms
    lines = [
        f"transaction {txn_name(summary.txn)}",
        f"state        {_state_name(summary.state)}",
        f"deadline     {_deadline_text(deadline_ms, now)}",
        f"primary      {primary}",
        f"prepared in  {_groups_text(summary.prepared_groups)}",
    ]
    if shown.HasField("record"):
        record = shown.record
        outcome = _state_name(record.state)
        if record.state == kv_pb2.TXN_COMMITTED:
            outcome += ", then branch" if record.then_branch else ", else branch"
        finished = "every participant finished" if record.finished else "participants not finished"
        lines.append(f"record       {outcome}, {finished}")
        lines.append(f"participants {_keys_text(list(record.participant_keys))} (a key of each)")
    else:
        lines.append("record       none (not decided)")
    # The router lists one group per prepare, in the same order.
    groups: list[int | None] = list(summary.prepared_groups)
    if len(groups) != len(shown.prepared):
        groups = [None] * len(shown.prepared)
    for group_id, prepared in zip(groups, shown.prepared, strict=True):
        prepare = prepared.prepare
        where = "a group" if group_id is None else f"group {group_id}"
        compares = "no compares"
        if prepare.compares:
            held = "held" if prepared.outcome.succeeded else "failed"
            compares = f"{len(prepare.compares)} compares ({held})"
        lines.append(
            f"{where}: {compares}, {len(prepare.then_ops)} then / "
            f"{len(prepare.else_ops)} else operations; locks {_keys_text(step_keys(prepare))}"
        )
    return "\n".join(lines) + "\n"


def _txn_list(client: Client, args: argparse.Namespace) -> int:
    _write_text(format_txn_list(client.list_transactions(), now_ms()))
    return EXIT_OK


def _txn_show(client: Client, args: argparse.Namespace) -> int:
    _write_text(format_txn(client.show_transaction(args.id), now_ms()))
    return EXIT_OK


def _txn_resolve(client: Client, args: argparse.Namespace) -> int:
    try:
        record = client.resolve_transaction(args.id, args.commit)
    except ClientError as exc:
        if exc.code is not grpc.StatusCode.FAILED_PRECONDITION:
            raise
        return _fail(f"cannot resolve transaction {args.id}: {exc.details}", EXIT_FAILED)
    _write_text(f"transaction {txn_name(record.txn)} {_state_name(record.state)}\n")
    return EXIT_OK


_TXN_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "list": _txn_list,
    "show": _txn_show,
    "resolve": _txn_resolve,
}


def _txn(client: Client, args: argparse.Namespace) -> int:
    return _TXN_COMMANDS[args.txn_command](client, args)


# -- commands ---------------------------------------------------------------------------


def _bytes_argument(text: str) -> bytes:
    # The bytes the shell passed, even when they are not valid UTF-8.
    return os.fsencode(text)


def _put(client: Client, args: argparse.Namespace) -> int:
    if args.value is not None:
        value = _bytes_argument(args.value)
    elif sys.stdin.isatty():
        raise _UsageError("put: give VALUE, or pipe the value on stdin")
    else:
        value = sys.stdin.buffer.read()
    client.put(_bytes_argument(args.key), value)
    return EXIT_OK


def _get(client: Client, args: argparse.Namespace) -> int:
    key = _bytes_argument(args.key)
    value = client.get(key)
    if value is None:
        print(f"{_PROGRAM}: key {escape(key)!r} not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    sys.stdout.flush()
    sys.stdout.buffer.write(value + b"\n" if sys.stdout.isatty() else value)
    return EXIT_OK


def _delete(client: Client, args: argparse.Namespace) -> int:
    key = _bytes_argument(args.key)
    if not client.delete(key):
        print(f"{_PROGRAM}: key {escape(key)!r} not found: nothing deleted", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_OK


def _scan(client: Client, args: argparse.Namespace) -> int:
    prefix, start, end = (
        None if text is None else _bytes_argument(text)
        for text in (args.prefix, args.start, args.end)
    )
    if prefix is not None and (start is not None or end is not None):
        raise _UsageError("scan: give --prefix, or --start/--end, not both")
    scan = client.scan(prefix=prefix, start=start, end=end, limit=args.limit)
    try:
        for key, value in scan:
            _write_text(f"{escape(key)}\t{escape(value)}\n")
    finally:
        scan.close()
    return EXIT_OK


def _status(client: Client, args: argparse.Namespace) -> int:
    summary = summarize_status(client.status())
    _write_text(summary.to_json() + "\n" if args.json else format_status(summary))
    return EXIT_OK


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "put": _put,
    "get": _get,
    "delete": _delete,
    "scan": _scan,
    "status": _status,
    "txn": _txn,
    "admin": _admin,
}


class _UsageError(Exception):
    pass


# -- arguments --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is below 0")
    return value


def _rate(text: str) -> int:
    value = _whole_number(text)
    if value >= 1 << 32:
        raise argparse.ArgumentTypeError(f"{value} keys/s is over {(1 << 32) - 1}")
    return value


def _node_ids(text: str) -> list[int]:
    return [_positive_int(part.strip()) for part in text.split(",")]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not more than 0 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    # --router and --timeout are taken before or after the command; SUPPRESS
    # keeps the command's parser from overwriting a value given before it.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--router",
        metavar="ADDR",
        default=argparse.SUPPRESS,
        help=f"router host:port, or several comma-separated (default: ${ENV_ROUTER}, "
        f"else {DEFAULT_ROUTER})",
    )
    connection.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=argparse.SUPPRESS,
        help=f"give up after this long, retries included (default: {DEFAULT_TIMEOUT:g})",
    )
    connection.add_argument(
        "--token",
        metavar="TOKEN",
        default=argparse.SUPPRESS,
        help=f"bearer token for a router that requires one (default: ${ENV_TOKEN}, else none)",
    )
    for name, what in _TLS_FLAGS:
        connection.add_argument(
            f"--tls-{name}-file",
            metavar="PATH",
            default=argparse.SUPPRESS,
            help=f"PEM {what}, for mutual TLS with the other two --tls-* flags "
            f"(default: ${_tls_env(name)}, else plaintext)",
        )
    parser = argparse.ArgumentParser(
        prog=_PROGRAM,
        description="The shardkv command-line client, and a local cluster launcher (up).",
        epilog="exit status: 0 done, 1 key or transaction not found, 2 bad usage or input, "
        "3 cluster unavailable, 4 other cluster error",
        parents=[connection],
        # The top-level parser sees every argument: with abbreviations, `up --tls`
        # would be taken as an ambiguous prefix of the --tls-*-file flags.
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="run a local cluster (nodes and a router) in the foreground; Ctrl-C stops it",
        description="Start the node processes and one router as children and supervise them; "
        "Ctrl-C or SIGTERM stops them all. A data directory remembers its layout "
        "(cluster.json): later runs reuse it, and refuse flags that disagree.",
    )
    up.add_argument("--nodes", type=_positive_int, help="node processes (default: 3)")
    up.add_argument("--groups", type=_positive_int, help="data groups (default: 4)")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path("shardkv-data"),
        help="where nodes keep their data, logs and the layout (default: ./shardkv-data)",
    )
    up.add_argument(
        "--port",
        type=_positive_int,
        help="the router's port; node i listens on port+i (default: 7000)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS everywhere, with certificates made once in DATA_DIR/tls",
    )

    certs = commands.add_parser(
        "certs",
        help="create a local CA and certificates for a dev cluster (mutual TLS)",
        description="Write ca.pem and ca-key.pem (a new CA), and a certificate and key signed "
        "by it for each node (node-I.pem, node-I-key.pem), the router (router.pem) and a "
        "client (client.pem). Each names localhost, 127.0.0.1 and ::1, and every --host. "
        "Existing files are never overwritten.",
    )
    certs.add_argument("--out", type=Path, required=True, help="the directory to write into")
    certs.add_argument(
        "--nodes", type=_positive_int, default=3, help="node certificates (default: 3)"
    )
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="another DNS name or IP address the certificates name (repeatable)",
    )

    put = commands.add_parser("put", parents=[connection], help="write a key")
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE", nargs="?", help="the value (default: read stdin)")

    get = commands.add_parser("get", parents=[connection], help="print a key's value")
    get.add_argument("key", metavar="KEY")

    delete = commands.add_parser("delete", parents=[connection], help="delete a key")
    delete.add_argument("key", metavar="KEY")

    scan = commands.add_parser(
        "scan", parents=[connection], help="print keys and values in key order"
    )
    scan.add_argument("--prefix", metavar="P", help="only keys that start with P")
    scan.add_argument("--start", metavar="S", help="only keys >= S")
    scan.add_argument("--end", metavar="E", help="only keys < E")
    scan.add_argument("--limit", metavar="N", type=_positive_int, help="at most N keys")

    status = commands.add_parser(
        "status", parents=[connection], help="nodes, groups, leaders and ring shares"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    txn = commands.add_parser(
        "txn",
        parents=[connection],
        help="list, show and resolve unfinished transactions (for operators)",
        description="Transactions that are not finished hold locks on their keys. A "
        "transaction whose coordinator went away is finished by whoever meets its locks "
        "once its deadline has passed; these commands show them, and finish one by hand. "
        "A transaction is named CLIENT:SEQ (the client id in hex), as `txn list` shows.",
    )
    txn_commands = txn.add_subparsers(dest="txn_command", required=True, metavar="TXN_COMMAND")
    txn_commands.add_parser(
        "list",
        parents=[connection],
        help="the transactions not finished: state, deadline, groups, locked keys",
    )
    txn_show = txn_commands.add_parser(
        "show", parents=[connection], help="one transaction: its record and each group's prepare"
    )
    txn_show.add_argument("id", metavar="ID", help="the transaction, CLIENT:SEQ")
    txn_resolve = txn_commands.add_parser(
        "resolve",
        parents=[connection],
        help="finish a stuck transaction as committed or aborted",
        description="Finish the transaction everywhere as committed or aborted. The router "
        "refuses what the transaction's record already contradicts, and a commit while a "
        "participant is not prepared (exit status 4).",
    )
    txn_resolve.add_argument("id", metavar="ID", help="the transaction, CLIENT:SEQ")
    outcome = txn_resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--commit", dest="commit", action="store_true", default=None, help="commit it"
    )
    outcome.add_argument("--abort", dest="commit", action="store_false", help="abort it")

    admin = commands.add_parser(
        "admin",
        parents=[connection],
        help="change the ring (groups, weights) and the placement (replicas, leaders, nodes)",
        description="A ring change makes a new ring epoch through the meta group; the keys "
        "that change owner then move in the background, each pair of groups in turn "
        "(`shardkv status` follows them). One ring change at a time: another is refused while "
        "one is under way (exit status 4). A placement change moves replicas between nodes "
        "(one Raft membership change at a time, one move per group at a time) or changes a "
        "group's preferred leader. --plan prints what would change and changes nothing.",
    )
    admin_commands = admin.add_subparsers(
        dest="admin_command", required=True, metavar="ADMIN_COMMAND"
    )
    plan = argparse.ArgumentParser(add_help=False)
    plan.add_argument(
        "--plan", action="store_true", help="only print what would move; change nothing"
    )
    ring_plan = argparse.ArgumentParser(add_help=False, parents=[plan])
    ring_plan.add_argument(
        "--max-rate",
        type=_rate,
        default=0,
        metavar="K",
        help="copy at most K keys/s over all its moves, and collect at most K keys/s apart, so "
        "that the writes sharing the nodes keep their latency (default: 0, no limit; see "
        "move-rate)",
    )
    add_group = admin_commands.add_parser(
        "add-group", parents=[connection, ring_plan], help="add a data group; keys move to it"
    )
    add_group.add_argument(
        "--weight", type=_positive_int, default=1, help="its weight on the ring (default: 1)"
    )
    add_group.add_argument(
        "--nodes",
        type=_node_ids,
        metavar="A,B,C",
        help="the node ids to host it (default: the least loaded nodes)",
    )
    add_group.add_argument(
        "--id",
        type=_positive_int,
        default=0,
        metavar="G",
        help="its group id (default: the next free one)",
    )
    remove_group = admin_commands.add_parser(
        "remove-group",
        parents=[connection, ring_plan],
        help="move a data group's keys to the others, then retire it",
    )
    remove_group.add_argument("group", type=_positive_int, metavar="G", help="the group id")
    set_weight = admin_commands.add_parser(
        "set-weight",
        parents=[connection, ring_plan],
        help="change a data group's weight; keys move to or from it",
    )
    set_weight.add_argument("group", type=_positive_int, metavar="G", help="the group id")
    set_weight.add_argument(
        "weight", type=_whole_number, metavar="W", help="its new weight (0: off the ring)"
    )
    move_rate = admin_commands.add_parser(
        "move-rate",
        parents=[connection],
        help="limit the ring change under way to K keys/s (0: no limit)",
        description="The most keys per second the ring change under way copies over all its "
        "moves, and apart from that collects, from their next chunk on; 0 lifts the limit. "
        "The switches (the keys' unwritable moments) are never held back. Exit 4 when no "
        "ring change runs.",
    )
    move_rate.add_argument(
        "keys_per_second", type=_rate, metavar="K", help="keys per second (0: no limit)"
    )
    rebalance = admin_commands.add_parser(
        "rebalance",
        parents=[connection],
        help="show the ring's balance or its change under way; even out replicas and leaders",
        description="The ring part: the ring change under way, or each group's ring share "
        "beside its weight share (the ring follows the weights: nothing to apply). The "
        "placement part: replica moves that even out the replicas per up node, and "
        "preferred leaders spread over the nodes.",
    )
    mode = rebalance.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", action="store_true", help="print what is or would be moving")
    mode.add_argument(
        "--apply",
        action="store_true",
        help="start the replica moves and leader changes (a ring change under way runs)",
    )
    move_replica = admin_commands.add_parser(
        "move-replica",
        parents=[connection, plan],
        help="move a group's replica from one node to another",
        description="The new node joins the group as a Raft learner, catches up, becomes a "
        "voter, then the old node leaves the group; the group serves throughout.",
    )
    move_replica.add_argument("group", type=_whole_number, metavar="G", help="the group id")
    move_replica.add_argument(
        "from_node", type=_positive_int, metavar="FROM", help="the node that holds it"
    )
    move_replica.add_argument(
        "to_node", type=_positive_int, metavar="TO", help="the node to hold it instead"
    )
    remove_node = admin_commands.add_parser(
        "remove-node",
        parents=[connection, plan],
        help="decommission a node: move its replicas away, then mark it removed",
        description="The node becomes 'leaving', each replica it holds moves to the up node "
        "with the fewest replicas, then it is 'removed' and may be stopped.",
    )
    remove_node.add_argument("node", type=_positive_int, metavar="N", help="the node id")
    transfer_leader = admin_commands.add_parser(
        "transfer-leader",
        parents=[connection],
        help="make a voter of a group its preferred leader; the lead moves there",
    )
    transfer_leader.add_argument("group", type=_whole_number, metavar="G", help="the group id")
    transfer_leader.add_argument(
        "to_node", type=_positive_int, metavar="TO", help="a node holding a voter of the group"
    )
    add_node = admin_commands.add_parser(
        "add-node",
        parents=[connection],
        help="check that the node at ADDR is a member (nodes join by themselves)",
        description="A node becomes a member when it starts with `shardkv-node --join "
        "<member address>`; it then holds nothing until `rebalance --apply` or "
        "`move-replica` places replicas there. This asks the node at ADDR for its id and "
        "says whether the cluster map lists it (exit status 0), or not (4).",
    )
    add_node.add_argument("address", metavar="ADDR", help="the node's host:port")
    return parser


_TLS_FLAGS = (
    ("ca", "certificate of the cluster CA"),
    ("cert", "certificate of this client"),
    ("key", "private key of this client's certificate"),
)


def _tls_env(name: str) -> str:
    return f"SHARDKV_TLS_{name.upper()}_FILE"


def resolve_tls(args: argparse.Namespace, environ: Mapping[str, str]) -> TlsFiles | None:
    """The client's TLS files: each from its flag, else its variable; ``TlsError`` if partial."""
    ca, cert, key = (
        getattr(args, f"tls_{name}_file", None) or environ.get(_tls_env(name)) or None
        for name, _ in _TLS_FLAGS
    )
    return TlsFiles.from_options(ca, cert, key)


def _certs(args: argparse.Namespace) -> int:
    # Imported here: only this command needs the cryptography package.
    from router.certs import write_dev_certs

    try:
        certs = write_dev_certs(args.out, args.nodes, args.host)
    except (FileExistsError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(f"cannot write certificates in {args.out}: {exc}", EXIT_USAGE)
    client = certs.client
    print(
        f"wrote a CA and certificates for {', '.join(certs.names())} in {certs.directory}\n"
        f"client: shardkv --tls-ca-file {client.ca} --tls-cert-file {client.cert} "
        f"--tls-key-file {client.key} ..."
    )
    return EXIT_OK


def resolve_router(flag: str | None, environ: Mapping[str, str]) -> str:
    """The router address(es): ``--router``, else ``$SHARDKV_ROUTER``, else the default."""
    return flag or environ.get(ENV_ROUTER) or DEFAULT_ROUTER


def _fail(message: str, status: int) -> int:
    print(f"{_PROGRAM}: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``shardkv`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "up":
        # Imported here: the launcher's imports are not needed by the other commands.
        from router.launcher import run_up

        return run_up(args.data_dir, args.nodes, args.groups, args.port, tls=args.tls)
    if args.command == "certs":
        return _certs(args)

    try:
        addresses = parse_addresses(resolve_router(getattr(args, "router", None), os.environ))
    except ValueError as exc:
        return _fail(f"{exc} (from --router or ${ENV_ROUTER})", EXIT_USAGE)
    try:
        tls = resolve_tls(args, os.environ)
        client = Client(
            addresses,
            timeout=getattr(args, "timeout", DEFAULT_TIMEOUT),
            tls=tls,
            token=getattr(args, "token", None) or os.environ.get(ENV_TOKEN) or None,
        )
    except TlsError as exc:
        return _fail(f"{exc} (from the --tls-* flags or $SHARDKV_TLS_*)", EXIT_USAGE)
    try:
        with client:
            return _COMMANDS[args.command](client, args)
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except InvalidArgument as exc:
        return _fail(str(exc), EXIT_USAGE)
    except NotFound as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)
    except (Unavailable, DeadlineExceeded) as exc:
        return _fail(
            f"cluster unavailable at {','.join(addresses)}: {exc} (is it running? `shardkv up`)",
            EXIT_UNAVAILABLE,
        )
    except ClientError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except BrokenPipeError:
        # The reader went away (`shardkv scan | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
