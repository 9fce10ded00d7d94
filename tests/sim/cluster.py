"""A cluster of Raft nodes in one process, on a simulated network and clock.

``Cluster.step()`` advances virtual time by one tick: deliver what is due,
let clients act, tick every running node, and run every node's Ready through
the persist-send-apply-advance contract. Invariants are checked as it goes
(``SafetyViolation`` on the first breach); the history of client operations
is kept for the linearizability checker.

Crashes lose everything not persisted in ``MemoryStorage``: a crashed node is
rebuilt from its storage alone (the key-value store from the snapshot, the
rest by replaying the log), like a real process restarting.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardkv.node.codec import message_from_proto, message_to_proto
from shardkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
)
from shardkv.v1 import raft_pb2
from tests.checkers import Operation
from tests.sim.kv import STALE, Command, KeyValueStore
from tests.sim.network import Network

__all__ = ["Cluster", "ClusterOptions", "SafetyViolation", "SimClient", "SimNode"]


def _over_the_wire(message: Message) -> Message:
    wire = message_to_proto(message).SerializeToString()
    return message_from_proto(raft_pb2.Message.FromString(wire))


class SafetyViolation(AssertionError):
    """A Raft safety property broke."""


@dataclass(slots=True)
class ClusterOptions:
    election_tick: int = 10
    heartbeat_tick: int = 2
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    max_inflight: int = 8
    max_size_per_msg: int = 1 << 20
    snapshot_chunk_size: int = 1 << 20
    # Snapshot every this many applied entries (0: never), keeping this many
    # entries of log behind the snapshot for slow followers.
    snapshot_interval: int = 0
    compaction_lag: int = 0
    max_delay: int = 1
    # Carry every message as serialized protobuf, as the node's transport will.
    wire_format: bool = False


@dataclass(slots=True)
class PendingRead:
    client_id: int
    seq: int
    key: str
    index: int | None = None


class SimNode:
    def __init__(self, node_id: int, storage: MemoryStorage, cluster: Cluster) -> None:
        self.node_id = node_id
        self.storage = storage
        self.cluster = cluster
        self.raw: RawNode | None = None
        self.kv = KeyValueStore()
        self.conf_state = ConfState()
        self.applied = 0
        self.last_snapshot_index = 0
        self.incarnation = 0
        # Requests this incarnation answers: (client_id, seq) of proposed
        # commands, and ReadIndex contexts.
        self.waiting: set[tuple[int, int]] = set()
        self.reads: dict[bytes, PendingRead] = {}

    @property
    def running(self) -> bool:
        return self.raw is not None

    def start(self) -> None:
        options = self.cluster.options
        snapshot = self.storage.snapshot()
        config = Config(
            applied=snapshot.metadata.index,
            id=self.node_id,
            election_tick=options.election_tick,
            heartbeat_tick=options.heartbeat_tick,
            pre_vote=options.pre_vote,
            check_quorum=options.check_quorum,
            lease_reads=options.lease_reads,
            max_inflight=options.max_inflight,
            max_size_per_msg=options.max_size_per_msg,
            snapshot_chunk_size=options.snapshot_chunk_size,
            seed=self.cluster.rng.randrange(1 << 30),
        )
        self.kv = KeyValueStore.restore(snapshot.data)
        self.conf_state = snapshot.metadata.conf_state
        self.applied = snapshot.metadata.index
        self.last_snapshot_index = snapshot.metadata.index
        self.raw = RawNode(config, self.storage)
        self.incarnation += 1

    def crash(self) -> None:
        self.raw = None
        self.waiting.clear()
        self.reads.clear()

    # -- the Ready contract ----------------------------------------------------

    def handle_ready(self) -> None:
        cluster = self.cluster
        for _ in range(100):
            raw = self.raw
            if raw is None or not raw.has_ready():
                return
            ready = raw.ready()
            if cluster.crash_point(self, "before_persist"):
                return
            self._persist(ready)
            if cluster.crash_point(self, "after_persist"):
                return
            for message in ready.messages:
                cluster.network.send(cluster.now, message)
            self._apply(ready)
            raw.advance(ready)
            self._maybe_snapshot()
            self._serve_reads()
        raise AssertionError(f"node {self.node_id} kept producing Ready")

    def _persist(self, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.storage.apply_snapshot(ready.snapshot)
        if ready.entries:
            self.storage.append(ready.entries)
        if ready.hard_state is not None:
            self.storage.set_hard_state(ready.hard_state)

    def _apply(self, ready: Ready) -> None:
        assert self.raw is not None
        cluster = self.cluster
        if ready.snapshot is not None:
            metadata = ready.snapshot.metadata
            cluster.check_snapshot(self, metadata.index, metadata.term)
            self.kv = KeyValueStore.restore(ready.snapshot.data)
            self.conf_state = metadata.conf_state
            self.applied = metadata.index
            self.last_snapshot_index = metadata.index
        for entry in ready.committed_entries:
            cluster.check_apply(self, entry)
            self.applied = entry.index
            if entry.type == EntryType.CONF_CHANGE:
                change = ConfChange.decode(entry.data)
                self.conf_state = self.raw.apply_conf_change(change)
                cluster.check_roles(self)
                if change.type == ConfChangeType.REMOVE_NODE:
                    cluster.retire(change.node_id)
            elif entry.data:
                command = Command.decode(entry.data)
                result = self.kv.apply(command)
                request = (command.client_id, command.seq)
                if request in self.waiting and result != STALE:
                    self.waiting.discard(request)
                    cluster.respond(command.client_id, command.seq, result)
        for read_state in ready.read_states:
            read = self.reads.get(read_state.context)
            if read is not None:
                read.index = read_state.index

    def _maybe_snapshot(self) -> None:
        interval = self.cluster.options.snapshot_interval
        if not interval or self.applied - self.last_snapshot_index < interval:
            return
        self.storage.create_snapshot(self.applied, self.conf_state, self.kv.snapshot())
        self.last_snapshot_index = self.applied
        compact_to = self.applied - self.cluster.options.compaction_lag
        if compact_to >= self.storage.first_index():
            self.storage.compact(compact_to)

    def _serve_reads(self) -> None:
        for context, read in list(self.reads.items()):
            if read.index is not None and self.applied >= read.index:
                del self.reads[context]
                self.cluster.respond(read.client_id, read.seq, self.kv.data.get(read.key))

    # -- log introspection for invariants -------------------------------------

    def log_terms(self) -> dict[int, int]:
        """index -> term of every entry this node holds (persisted or not)."""
        terms: dict[int, int] = {}
        if self.raw is None:
            first, last = self.storage.first_index(), self.storage.last_index()
            for index in range(first, last + 1):
                terms[index] = self.storage.term(index)
            return terms
        log = self.raw.raft.log
        for index in range(log.first_index(), log.last_index() + 1):
            term = log.term(index)
            assert term is not None
            terms[index] = term
        return terms


@dataclass(slots=True)
class ClientOp:
    kind: str
    key: str
    value: str | None
    expected: str | None
    seq: int
    call: int
    attempts: int = 0
    deadline: int = 0
    via_log: bool = False


@dataclass(slots=True)
class SimClient:
    client_id: int
    ops_left: int
    rng: random.Random
    leader_hint: int = 0
    seq: int = 0
    op: ClientOp | None = None
    give_up_after: int = 1 << 30


@dataclass(slots=True)
class Stats:
    leaders: int = 0
    snapshots_installed: int = 0
    crashes: int = 0
    conf_changes: int = 0
    transfers: int = 0
    completed_ops: int = 0
    abandoned_ops: int = 0
    events: list[str] = field(default_factory=list)


class Cluster:
    def __init__(self, seed: int, voters: int, options: ClusterOptions, spares: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = options
        self.now = 0
        self.network = Network(random.Random(self.rng.randrange(1 << 30)), options.max_delay)
        initial = tuple(range(1, voters + 1))
        self.nodes: dict[int, SimNode] = {}
        for node_id in initial:
            self.nodes[node_id] = SimNode(node_id, MemoryStorage.with_voters(initial), self)
        self.next_node_id = voters + 1
        for _ in range(spares):
            self.add_spare()
        for node in self.nodes.values():
            node.start()
        self.clients: dict[int, SimClient] = {}
        self.history: list[Operation] = []
        self.trace: deque[str] = deque(maxlen=60)
        self.stats = Stats()
        # Global facts the invariants compare against.
        self.leader_of_term: dict[int, int] = {}
        self.applied_log: dict[int, Entry] = {}
        self.crash_probability = 0.0
        self.removed: set[int] = set()
        # Crashed nodes come back at these steps (crash points schedule it too).
        self.restart_at: dict[int, int] = {}
        self.on_step: Callable[[Cluster], None] | None = None

    def add_spare(self) -> SimNode:
        """A node outside the configuration, empty, waiting to be added."""
        node_id = self.next_node_id
        self.next_node_id += 1
        node = SimNode(node_id, MemoryStorage(), self)
        self.nodes[node_id] = node
        return node

    def log(self, text: str) -> None:
        self.trace.append(f"[{self.now}] {text}")

    # -- driving --------------------------------------------------------------

    def step(self) -> None:
        self.now += 1
        for node_id, when in list(self.restart_at.items()):
            if self.now >= when:
                del self.restart_at[node_id]
                self.restart(node_id)
        for message in self.network.due(self.now):
            if self.options.wire_format:
                message = _over_the_wire(message)
            node = self.nodes.get(message.to)
            if node is None or node.raw is None:
                continue
            node.raw.step(message)
            self.check_roles(node)
        for client in self.clients.values():
            self._drive_client(client)
        for node in self.nodes.values():
            if node.raw is not None:
                node.raw.tick()
                self.check_roles(node)
        for node in self.nodes.values():
            node.handle_ready()
        if self.on_step is not None:
            self.on_step(self)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def running_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.raw is not None]

    def leader(self) -> SimNode | None:
        """The running leader of the highest term, if any."""
        best: SimNode | None = None
        for node in self.running_nodes():
            assert node.raw is not None
            raft = node.raw.raft
            if raft.role == Role.LEADER and (best is None or raft.term > best.raw.raft.term):  # type: ignore[union-attr]
                best = node
        return best

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.raw is not None:
            self.log(f"crash {node_id}")
            self.stats.crashes += 1
            node.crash()

    def retire(self, node_id: int) -> None:
        """A committed removal: the operator stops the node for good."""
        if node_id in self.removed:
            return
        self.removed.add(node_id)
        self.log(f"node {node_id} removed and stopped")
        self.nodes[node_id].crash()

    def restart_all(self) -> None:
        """Every crashed member comes back now."""
        self.restart_at.clear()
        for node_id in self.nodes:
            self.restart(node_id)

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.raw is None and node_id not in self.removed:
            self.log(f"restart {node_id}")
            node.start()

    def crash_point(self, node: SimNode, where: str) -> bool:
        if self.crash_probability and self.rng.random() < self.crash_probability:
            self.log(f"crash {node.node_id} at {where}")
            self.stats.crashes += 1
            node.crash()
            self.restart_at[node.node_id] = self.now + self.rng.randint(1, 60)
            return True
        return False

    # -- clients --------------------------------------------------------------

    def add_client(self, ops: int, give_up_after: int = 1 << 30) -> SimClient:
        client_id = len(self.clients) + 1
        client = SimClient(
            client_id, ops, random.Random(self.rng.randrange(1 << 30)), give_up_after=give_up_after
        )
        self.clients[client_id] = client
        return client

    def _new_op(self, client: SimClient) -> ClientOp:
        rng = client.rng
        client.seq += 1
        key = f"k{rng.randrange(self.key_count)}"
        roll = rng.random()
        value = f"{client.client_id}.{client.seq}"
        if roll < 0.4:
            return ClientOp("put", key, value, None, client.seq, self.now)
        if roll < 0.8:
            return ClientOp(
                "get", key, None, None, client.seq, self.now, via_log=rng.random() < 0.2
            )
        # Expect a value that is plausibly current: absent, or another client's.
        other = rng.randrange(1, len(self.clients) + 1)
        expected = None if rng.random() < 0.3 else f"{other}.{rng.randrange(1, client.seq + 3)}"
        return ClientOp("cas", key, value, expected, client.seq, self.now)

    key_count = 3
    request_timeout = 40
    accepting_new_ops = True

    def _drive_client(self, client: SimClient) -> None:
        if client.op is None:
            if client.ops_left <= 0 or not self.accepting_new_ops:
                return
            client.ops_left -= 1
            client.op = self._new_op(client)
        op = client.op
        if op.deadline and self.now < op.deadline:
            return
        if op.attempts >= client.give_up_after:
            self._finish(client, output=None, abandoned=True)
            return
        candidates = [node for node in self.running_nodes() if node.node_id not in self.removed]
        if not candidates:
            op.deadline = self.now + 1
            return
        target = self.nodes.get(client.leader_hint)
        if target is None or target.raw is None or client.rng.random() < 0.1:
            target = client.rng.choice(candidates)
        assert target.raw is not None
        op.attempts += 1
        try:
            if op.kind == "get" and not op.via_log:
                context = f"{client.client_id}:{op.seq}:{op.attempts}".encode()
                target.reads[context] = PendingRead(client.client_id, op.seq, op.key)
                try:
                    target.raw.read_index(context)
                except ProposalDropped:
                    del target.reads[context]
                    raise
            else:
                command = Command(client.client_id, op.seq, op.kind, op.key, op.value, op.expected)
                target.raw.propose(command.encode())
                target.waiting.add((client.client_id, op.seq))
        except ProposalDropped as dropped:
            client.leader_hint = dropped.leader_id
            op.deadline = self.now + 1
            return
        client.leader_hint = target.node_id
        op.deadline = self.now + self.request_timeout

    def respond(self, client_id: int, seq: int, result: Any) -> None:
        client = self.clients.get(client_id)
        if client is None or client.op is None or client.op.seq != seq:
            return
        self._finish(client, result, abandoned=False)

    def _finish(self, client: SimClient, output: Any, abandoned: bool) -> None:
        op = client.op
        assert op is not None
        client.op = None
        encoded_output: object = output
        if op.kind == "get" and output is not None:
            encoded_output = output.encode()
        self.history.append(
            Operation(
                client_id=client.client_id,
                kind=op.kind,
                key=op.key.encode(),
                value=op.value.encode() if op.value is not None else None,
                expected=op.expected.encode() if op.expected is not None else None,
                output=None if abandoned and op.kind != "get" else encoded_output,
                call=float(op.call),
                ret=None if abandoned else float(self.now),
            )
        )
        if abandoned:
            self.stats.abandoned_ops += 1
        else:
            self.stats.completed_ops += 1

    def converged(self) -> bool:
        """A leader of the newest term, clients idle, every member applied all it committed."""
        leader = self.leader()
        if leader is None or leader.raw is None or not self.clients_idle():
            return False
        raft = leader.raw.raft
        if raft.role != Role.LEADER or raft.log.term(raft.log.committed) != raft.term:
            return False
        committed = raft.log.committed
        for node_id in raft.voters | raft.learners:
            node = self.nodes.get(node_id)
            if node is None or node.raw is None or node.applied < committed:
                return False
        return True

    def clients_idle(self) -> bool:
        return all(client.op is None for client in self.clients.values())

    # -- invariants ------------------------------------------------------------

    def fail(self, what: str) -> None:
        raise SafetyViolation(what)

    def check_roles(self, node: SimNode) -> None:
        """§5.2 election safety: at most one leader per term."""
        assert node.raw is not None
        raft = node.raw.raft
        if raft.role != Role.LEADER:
            return
        known = self.leader_of_term.get(raft.term)
        if known is None:
            self.leader_of_term[raft.term] = node.node_id
            self.stats.leaders += 1
            self.log(f"node {node.node_id} leads term {raft.term}")
            self.check_leader_completeness(node)
        elif known != node.node_id:
            self.fail(f"two leaders in term {raft.term}: {known} and {node.node_id}")

    def check_leader_completeness(self, node: SimNode) -> None:
        """§5.4.1: a new leader holds every entry committed before its term."""
        assert node.raw is not None
        log = node.raw.raft.log
        first = log.first_index()
        for index, entry in self.applied_log.items():
            if index < first:
                continue
            term = log.term(index)
            if term != entry.term:
                self.fail(
                    f"leader {node.node_id} of term {node.raw.raft.term} lacks committed "
                    f"entry {index} (term {entry.term}); it has term {term}"
                )

    def check_apply(self, node: SimNode, entry: Entry) -> None:
        """§5.4.3 state machine safety: one entry per index, everywhere."""
        if entry.index != node.applied + 1:
            self.fail(f"node {node.node_id} applies {entry.index} after {node.applied}")
        known = self.applied_log.get(entry.index)
        if known is None:
            self.applied_log[entry.index] = entry
        elif known != entry:
            self.fail(
                f"node {node.node_id} applies {entry} at {entry.index}, another applied {known}"
            )

    def check_snapshot(self, node: SimNode, index: int, term: int) -> None:
        known = self.applied_log.get(index)
        if known is not None and known.term != term:
            self.fail(
                f"node {node.node_id} installs a snapshot at {index} of term {term}, "
                f"but {index} committed in term {known.term}"
            )
        if index < node.applied:
            self.fail(
                f"node {node.node_id} installs a snapshot at {index} behind applied {node.applied}"
            )
        self.stats.snapshots_installed += 1

    def check_log_matching(self) -> None:
        """§5.3 log matching: same (index, term) means identical logs up to there."""
        logs = {node.node_id: node.log_terms() for node in self.nodes.values()}
        ids = sorted(logs)
        for position, a in enumerate(ids):
            for b in ids[position + 1 :]:
                common = set(logs[a]) & set(logs[b])
                matched = False
                for index in sorted(common, reverse=True):
                    same = logs[a][index] == logs[b][index]
                    if matched and not same:
                        self.fail(
                            f"logs of {a} and {b} match at a later index but differ at {index}"
                        )
                    matched = matched or same
