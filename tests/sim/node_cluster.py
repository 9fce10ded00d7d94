"""Nodes of the real stack in one event loop, on a virtual clock: the harness of ``node_sim``.

``NodeCluster`` runs a ``NodeRuntime`` per node, each hosting a ``Peer`` of
every group placed on it (real ``GroupStorage`` and ``KeyValueStateMachine``
on a ``CrashEngine``), over one ``MemoryNetwork`` that serializes every
message. It starts nodes, crashes them (a power loss: see ``crash_engine``)
and restarts them on the same disk with new peers and a new transport of
the same id.

Time is a step counter, ``VirtualClock``: the network's delays and the
clients' timers run on it, never on the wall clock. One ``step()``: the
clock advances (firing what is due), every live node ticks once, then
``rounds_per_tick`` times every node with work runs ``round()`` (in a
seeded order) and the event loop is drained so that deliveries and the
callers of settled futures run. The event loop only moves through those
awaits, so a seed gives the same run every time.

Checked at every step: at most one leader per group and term (Raft §5.2).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shardkv.fsm.snapshot import build_snapshot_data
from shardkv.node.peer import Peer, PeerOptions
from shardkv.node.runtime import NodeRuntime
from shardkv.node.transport_memory import MemoryNetwork, MemoryTransport
from shardkv.raft import Message, MessageType, Role
from shardkv.storage import GroupStorage
from tests.sim.crash_engine import CrashDisk, CrashEngine

__all__ = ["NodeCluster", "SimNode", "SimulationError", "VirtualClock"]

# Event-loop passes after each sub-round: enough for a delivery, a settled
# future and the client that awaited it to run (each is one call_soon hop).
_DRAIN_PASSES = 4


class SimulationError(AssertionError):
    """A check failed; the message says which and how."""


# -- time ---------------------------------------------------------------------------


# The wall clock's time at step 0 (2026-01-01T00:00:00Z): proposals' stamps.
SIM_WALL_CLOCK_START = 1_767_225_600.0


class VirtualClock:
    """Steps and the callbacks due at them: the network's scheduler and the clients' timers."""

    def __init__(self) -> None:
        self.now = 0
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._sequence = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        """Run ``callback`` ``delay`` steps from now (at least the next step)."""
        due = self.now + max(1, math.ceil(delay))
        heapq.heappush(self._timers, (due, next(self._sequence), callback))
        return None

    def sleep(self, steps: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        self.call_later(steps, wake)
        return future

    def advance(self) -> None:
        self.now += 1
        timers = self._timers
        while timers and timers[0][0] <= self.now:
            heapq.heappop(timers)[2]()


# -- nodes ----------------------------------------------------------------------------


@dataclass(eq=False)
class SimNode:
    node_id: int
    groups: tuple[int, ...]
    disk: CrashDisk = field(default_factory=CrashDisk)
    engine: CrashEngine | None = None
    transport: MemoryTransport | None = None
    runtime: NodeRuntime | None = None
    # Bumped by every start: a reply from an older incarnation never left the node.
    incarnation: int = 0

    @property
    def live(self) -> bool:
        return self.runtime is not None


class NodeCluster:
    """Nodes on one ``MemoryNetwork`` and ``VirtualClock``: start, crash, step, inspect.

    ``placement`` maps each group to the nodes with a replica of it.
    Usable on its own by scripted tests; ``run_node_seed`` adds clients, a
    nemesis and the checks.
    """

    def __init__(
        self,
        placement: dict[int, tuple[int, ...]],
        options: PeerOptions,
        *,
        seed: int = 0,
        rounds_per_tick: int = 1,
    ) -> None:
        self.rng = random.Random(seed)
        self.placement = placement
        self.rounds_per_tick = rounds_per_tick
        self.clock = VirtualClock()
        # Proposals are stamped on the virtual clock (a step a millisecond), so a
        # seed's revisions are the same in every run.
        self.options = dataclasses.replace(options, clock=self._wall_clock)
        self.network = MemoryNetwork(
            rng=random.Random(self.rng.randrange(1 << 30)), scheduler=self.clock.call_later
        )
        node_ids = sorted({node_id for nodes in placement.values() for node_id in nodes})
        self.nodes = {
            node_id: SimNode(
                node_id,
                tuple(sorted(g for g, nodes in placement.items() if node_id in nodes)),
            )
            for node_id in node_ids
        }
        self.trace: deque[str] = deque(maxlen=80)
        self._digest = hashlib.sha256()
        self.crashes = 0
        self.lost_batches = 0
        self.snapshots_installed = 0
        self.snapshot_chunks = 0
        self.leaders_elected = 0
        self._leader_of_term: dict[tuple[int, int], int] = {}
        self._machine_of: dict[Peer, object] = {}
        # First of the network's filters: counts, never drops.
        self.network.drop(self._count)

    # -- bookkeeping -----------------------------------------------------------------

    def _wall_clock(self) -> float:
        return SIM_WALL_CLOCK_START + self.clock.now / 1000

    def log(self, text: str) -> None:
        line = f"[{self.clock.now}] {text}"
        self.trace.append(line)
        self._digest.update(line.encode() + b"\n")

    def digest(self) -> str:
        """A hash of every event logged so far: equal runs have equal digests."""
        return self._digest.hexdigest()

    def _count(self, from_node: int, to_node: int, group_id: int, message: Message) -> bool:
        if message.type == MessageType.SNAPSHOT:
            self.snapshot_chunks += 1
        return False

    # -- lifecycle -------------------------------------------------------------------

    def start(self, node_id: int) -> SimNode:
        node = self.nodes[node_id]
        assert not node.live, f"node {node_id} is already running"
        engine = CrashEngine(node.disk)
        if node.incarnation == 0:
            for group_id in node.groups:
                GroupStorage(engine, group_id).bootstrap(self.placement[group_id])
        peers = {
            group_id: Peer(
                engine, group_id, node_id, self.options, seed=self.rng.randrange(1 << 30)
            )
            for group_id in node.groups
        }
        transport = MemoryTransport(node_id, self.network)
        transport.update_peers({other: f"node-{other}" for other in self.nodes})
        node.engine, node.transport = engine, transport
        node.runtime = NodeRuntime(node_id, engine, transport, peers)
        node.incarnation += 1
        self.log(f"start node {node_id} (incarnation {node.incarnation})")
        return node

    async def crash(self, node_id: int, keep_unsynced: int | None = None) -> None:
        """Power loss of one node: keep only the first ``keep_unsynced`` unsynced batches.

        None keeps them all (a process crash: the OS still has the WAL).
        """
        node = self.nodes[node_id]
        runtime, transport, engine = node.runtime, node.transport, node.engine
        assert runtime is not None and transport is not None and engine is not None
        node.runtime = node.transport = node.engine = None
        for peer in runtime.peers.values():
            self._machine_of.pop(peer, None)
        runtime.stop()
        await transport.close()
        engine.close()
        unsynced = node.disk.unsynced_batches
        keep = unsynced if keep_unsynced is None else min(keep_unsynced, unsynced)
        lost = node.disk.lose_unsynced(keep)
        self.crashes += 1
        self.lost_batches += lost
        self.log(f"crash node {node_id}: lost {lost} of {unsynced} unsynced batches")

    def live_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes.values() if node.live]

    # -- driving ----------------------------------------------------------------------

    async def step(self, count: int = 1) -> None:
        for _ in range(count):
            await self._step()

    async def _step(self) -> None:
        self.clock.advance()
        for node in self.live_nodes():
            assert node.runtime is not None
            node.runtime.tick()
        for _ in range(self.rounds_per_tick):
            order = self.live_nodes()
            self.rng.shuffle(order)
            for node in order:
                runtime = node.runtime
                assert runtime is not None, "nodes crash between steps only"
                if runtime.has_work():
                    await runtime.round()
            await _drain()
        self._observe()

    def _observe(self) -> None:
        """Election safety, and the counters that need a look at every peer."""
        for node in self.live_nodes():
            assert node.runtime is not None
            for group_id, peer in node.runtime.peers.items():
                machine = self._machine_of.get(peer)
                if machine is not None and machine is not peer.machine:
                    self.snapshots_installed += 1
                    self.log(f"node {node.node_id} group {group_id} installed a snapshot")
                self._machine_of[peer] = peer.machine
                raft = peer.raw.raft
                if raft.role != Role.LEADER:
                    continue
                known = self._leader_of_term.get((group_id, raft.term))
                if known is None:
                    self._leader_of_term[(group_id, raft.term)] = node.node_id
                    self.leaders_elected += 1
                    self.log(f"node {node.node_id} leads group {group_id} in term {raft.term}")
                elif known != node.node_id:
                    raise SimulationError(
                        f"group {group_id} has two leaders in term {raft.term}: "
                        f"nodes {known} and {node.node_id}"
                    )

    # -- inspecting -------------------------------------------------------------------

    def peers(self, group_id: int) -> list[tuple[SimNode, Peer]]:
        """The live replicas of a group."""
        found = []
        for node_id in self.placement[group_id]:
            node = self.nodes[node_id]
            if node.runtime is not None:
                found.append((node, node.runtime.peers[group_id]))
        return found

    def leader(self, group_id: int) -> tuple[SimNode, Peer] | None:
        """The live leader of the group's newest term that committed an entry of its term."""
        best: tuple[SimNode, Peer] | None = None
        for node, peer in self.peers(group_id):
            raft = peer.raw.raft
            if raft.role != Role.LEADER or raft.log.term(raft.log.committed) != raft.term:
                continue
            if best is None or raft.term > best[1].raw.raft.term:
                best = (node, peer)
        return best

    def converged(self, group_id: int) -> bool:
        """A leader, and every replica live and applied up to its commit index."""
        leader = self.leader(group_id)
        if leader is None:
            return False
        committed = leader[1].raw.raft.log.committed
        replicas = self.peers(group_id)
        return len(replicas) == len(self.placement[group_id]) and all(
            peer.applied == committed for _, peer in replicas
        )

    def replicas_differ(self, group_id: int) -> list[str]:
        """Why the live replicas of a group do not hold the same applied index and image."""
        replicas = self.peers(group_id)
        images = set()
        for node, peer in replicas:
            assert node.engine is not None
            images.add((peer.applied, build_snapshot_data(node.engine, group_id)))
        if len(images) <= 1:
            return []
        lines = [f"group {group_id}: the replicas differ"]
        for node, peer in replicas:
            keys = [(kv.key, kv.value, kv.version) for kv in peer.machine.scan()]
            lines.append(
                f"  node {node.node_id}: applied {peer.applied}, "
                f"revision {peer.machine.revision}, keys {keys}"
            )
        return lines

    async def run_until(self, done: Callable[[], bool], bound: int) -> bool:
        """Step until ``done()`` holds, at most ``bound`` steps; whether it held."""
        for _ in range(bound):
            if done():
                return True
            await self.step()
        return done()


async def _drain() -> None:
    """Let the event loop run what the last round scheduled (see ``_DRAIN_PASSES``)."""
    for _ in range(_DRAIN_PASSES):
        await asyncio.sleep(0)
