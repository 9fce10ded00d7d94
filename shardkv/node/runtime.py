"""The multi-raft runtime: every group of this node through one round at a time.

``NodeRuntime`` hosts the node's ``Peer`` objects over one storage engine and
one transport. One round (TiKV's raftstore loop, in one asyncio task):

1. Step every message that arrived since the last round into its group.
2. Tick every group whose tick is due (a tick of an idle group is a few
   attribute updates: many groups per node stay cheap).
3. Take every group's Ready and stage all of it into ONE batch, written with
   ONE fsync (only if some group needs it: entries, a vote, a term, a
   snapshot). A leader's messages leave before the fsync (``send_early``),
   so the followers persist while the leader does.
4. Hand every other message to the transport and flush it: one batch per
   peer node, however many groups.
5. Apply every group's committed entries into ONE more batch (state machine
   writes and applied indexes together, so a crash never applies twice).
   It is not synced: if it is lost, the synced log replays it.
6. Advance every group and answer the callers the round settled; report
   unreachable peers to every group they host.

Callers (the gRPC service) propose and read between rounds, on the same event
loop; ``propose`` and ``read_barrier`` wake the loop so that a write does not
wait for the next tick. ``run()`` is the production loop on a wall-clock
tick; tests call ``tick()`` and ``await round()`` themselves, so time there
is whatever the test says.

A failed write of the synced batch ends the runtime (``run`` raises): Raft
cannot continue past a log it could not persist, as in etcd.

The round observes its ``NodeMetrics`` (``shardkv.metrics``) as it goes: the
age of each of its own proposals when a Ready hands it out committed, the
fsync and what the synced write carried, the time applying took. All by the
loop's clock, so a test's clock is the metrics' clock too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shardkv.errors import UnknownGroup
from shardkv.failpoints import failpoint
from shardkv.metrics import NodeMetrics
from shardkv.node.peer import Peer
from shardkv.node.transport import Transport
from shardkv.raft import ConfChange, Message, Ready
from shardkv.storage import ColumnFamily, StorageEngine, keys
from shardkv.v1 import kv_pb2

__all__ = ["NodeRuntime", "RoundStats"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class RoundStats:
    """Counters since start; they only grow."""

    rounds: int = 0
    ticks: int = 0
    readies: int = 0
    synced_writes: int = 0
    unsynced_writes: int = 0
    messages_stepped: int = 0
    messages_sent: int = 0
    entries_applied: int = 0


class NodeRuntime:
    def __init__(
        self,
        node_id: int,
        engine: StorageEngine,
        transport: Transport,
        peers: Mapping[int, Peer],
        *,
        tick_interval: float = 0.1,
        gather_window: float = 0.001,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.node_id = node_id
        self.engine = engine
        self.transport = transport
        self.peers = dict(peers)
        self.tick_interval = tick_interval
        # How long run() lets requests gather before a round, when requests
        # contend (the previous round carried more than one; see run()).
        # Measured with bench/node.py (1 group, 64 writers): 0 -> 375
        # writes/s, p50 170 ms; 0.5 ms -> 815, 77 ms; 2 ms -> 1,379, 43 ms.
        self.gather_window = gather_window
        # Proposals and reads since the last round, and in the last round.
        self._requests = 0
        self._last_round_requests = 0
        self.stats = RoundStats()
        self.metrics = metrics if metrics is not None else NodeMetrics()
        self._inbox: list[tuple[int, int, Message]] = []
        self._ticks_due = 0
        self._wake = asyncio.Event()
        self._stopping = False
        # Groups removed since the last round, whose storage the next round drops.
        self._dropping: set[int] = set()
        # Called after a round in which the group applied entries or a snapshot (on_applied).
        self._applied_listeners: dict[int, list[Callable[[], None]]] = {}
        transport.set_handler(self._receive)

    # -- callers ----------------------------------------------------------------

    def peer(self, group_id: int) -> Peer:
        peer = self.peers.get(group_id)
        if peer is None:
            raise UnknownGroup(group_id)
        return peer

    def on_applied(self, group_id: int, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every round in which ``group_id`` applied entries
        or a snapshot here (the cluster agent learns a new map at once)."""
        self._applied_listeners.setdefault(group_id, []).append(listener)

    def add_peer(self, peer: Peer) -> None:
        """Host one more group (created while the node runs: a ring change added it)."""
        if peer.group_id in self.peers:
            raise ValueError(f"group {peer.group_id} is hosted already")
        if peer.group_id in self._dropping:
            raise ValueError(f"group {peer.group_id} is being dropped: try after the next round")
        self.peers[peer.group_id] = peer
        self._wake.set()

    def remove_peer(self, group_id: int) -> None:
        """Stop hosting a group (its replica moved away, or the group retired); the
        next round drops everything of it this node stored, leaving a mark that it
        was dropped on purpose (a restart must not take the missing state for a lost
        disk). Not here: a round suspended in its fsync may still write the group's
        Raft state and applied entries, which the drop must come after."""
        peer = self.peers.pop(group_id, None)
        if peer is None:
            return
        peer.stop()
        self._dropping.add(group_id)
        self._wake.set()

    async def _drop_removed(self) -> None:
        dropping, self._dropping = self._dropping, set()
        batch = self.engine.new_batch()
        for group_id in sorted(dropping):
            low, high = keys.group_range(group_id)
            if high is None:
                raise ValueError(f"group {group_id} has no bounded key range")
            for cf in ColumnFamily:
                batch.delete_range(cf, low, high)
            batch.put(ColumnFamily.META, keys.dropped_group_key(group_id), b"")
        self.engine.write(batch, sync=False)
        await self.engine.sync()

    def propose_conf_change(
        self, group_id: int, change: ConfChange
    ) -> asyncio.Future[kv_pb2.CommandResult]:
        future = self.peer(group_id).propose_conf_change(change)
        self._wake.set()
        return future

    def propose(
        self, group_id: int, command: kv_pb2.Command
    ) -> asyncio.Future[kv_pb2.CommandResult]:
        future = self.peer(group_id).propose(command)
        self._requests += 1
        self._wake.set()
        return future

    def propose_many(
        self, group_id: int, commands: Sequence[kv_pb2.Command]
    ) -> list[asyncio.Future[kv_pb2.CommandResult]]:
        """Several commands in as few log entries as fit (``Peer.propose_many``)."""
        futures = self.peer(group_id).propose_many(commands)
        self._requests += 1  # already a batch: one request for gathering
        self._wake.set()
        return futures

    def transfer_leadership(self, group_id: int, to_node: int) -> None:
        self.peer(group_id).raw.transfer_leadership(to_node)
        self._wake.set()

    def read_barrier(self, group_id: int) -> asyncio.Future[None]:
        future = self.peer(group_id).read_barrier()
        self._requests += 1
        self._wake.set()
        return future

    def _receive(self, from_node: int, group_id: int, message: Message) -> None:
        self._inbox.append((from_node, group_id, message))
        self._wake.set()

    # -- the round ------------------------------------------------------------------

    def tick(self) -> None:
        """Make one tick due; the next round applies it to every group."""
        self._ticks_due += 1
        self._wake.set()

    async def round(self) -> None:
        if self._dropping:
            await self._drop_removed()
        stats = self.stats
        stats.rounds += 1
        self._last_round_requests, self._requests = self._requests, 0
        inbox, self._inbox = self._inbox, []
        for _, group_id, message in inbox:
            peer = self.peers.get(group_id)
            if peer is not None:
                peer.raw.step(message)
        stats.messages_stepped += len(inbox)
        ticks, self._ticks_due = self._ticks_due, 0
        if ticks:
            stats.ticks += ticks
            for peer in self.peers.values():
                for _ in range(ticks):
                    peer.raw.tick()

        loop = asyncio.get_running_loop()
        raft_batch = self.engine.new_batch()
        readies: list[tuple[Peer, Ready]] = []
        must_sync = False
        now = loop.time()
        for peer in self.peers.values():
            ready = peer.take_ready(raft_batch)
            if ready is not None:
                readies.append((peer, ready))
                must_sync = must_sync or ready.must_sync
                if ready.committed_entries:
                    self.metrics.observe_commits(peer.proposal_ages(ready.committed_entries, now))
        # Leaders' appends leave now, to be persisted by the followers while
        # this node persists them too (Ready.send_early); the rest after the
        # fsync. The next round steps the answers only once this one is
        # durable, so a leader never counts an entry of its own not on disk.
        early = [(peer, ready) for peer, ready in readies if ready.send_early]
        if early:
            self._send(early)
            await self.transport.flush()
        # Written whenever it holds anything: a snapshot a peer took this
        # round is in it even when no group has a Ready. The fsync runs in a
        # worker thread: meanwhile the loop takes in messages and requests,
        # which the next round then carries (Raft may take proposals between
        # Ready and advance). Nothing of this round is sent or applied before
        # it is durable.
        if len(raft_batch):
            failpoint("raft.before_persist")
            self.engine.write(raft_batch, sync=False)
            if must_sync:
                started = loop.time()
                await self.engine.sync()
                stats.synced_writes += 1
                self._observe_sync(loop.time() - started, readies)
            failpoint("raft.after_persist")
        else:
            raft_batch.discard()
        if not readies:
            self._report_unreachable()
            return
        stats.readies += len(readies)

        self._send([(peer, ready) for peer, ready in readies if not ready.send_early])
        await self.transport.flush()

        started = loop.time()
        applied = stats.entries_applied
        apply_batch = self.engine.new_batch()
        for peer, ready in readies:
            peer.apply(ready, apply_batch)
            stats.entries_applied += len(ready.committed_entries)
        if len(apply_batch):
            failpoint("fsm.before_apply")
            self.engine.write(apply_batch, sync=False)
            stats.unsynced_writes += 1
            failpoint("fsm.after_apply")
        else:
            apply_batch.discard()
        if stats.entries_applied > applied:
            self.metrics.apply_seconds.observe(loop.time() - started)
        for peer, ready in readies:
            peer.finish(ready)
        self._report_unreachable()
        for peer, ready in readies:
            if ready.committed_entries or ready.snapshot is not None:
                self._call_applied_listeners(peer.group_id)

    def _call_applied_listeners(self, group_id: int) -> None:
        for listener in self._applied_listeners.get(group_id, ()):
            try:
                listener()
            except Exception:  # a listener's bug must not end the node's rounds
                _log.exception(
                    "node %d: a listener of group %d's applied entries failed",
                    self.node_id,
                    group_id,
                )

    def _observe_sync(self, seconds: float, readies: list[tuple[Peer, Ready]]) -> None:
        entries = [entry for _, ready in readies for entry in ready.entries]
        self.metrics.observe_sync(
            seconds,
            entries=len(entries),
            entry_bytes=sum(len(entry.data) for entry in entries),
            groups=sum(1 for _, ready in readies if ready.must_sync),
        )

    def _send(self, readies: list[tuple[Peer, Ready]]) -> None:
        for peer, ready in readies:
            for message in ready.messages:
                self.transport.send(message.to, peer.group_id, message)
            self.stats.messages_sent += len(ready.messages)

    def _report_unreachable(self) -> None:
        unreachable = self.transport.unreachable()
        if not unreachable:
            return
        for peer in self.peers.values():
            for node_id in unreachable:
                peer.raw.report_unreachable(node_id)

    def has_work(self) -> bool:
        return bool(self._inbox or self._ticks_due or self._dropping) or any(
            peer.raw.has_ready() for peer in self.peers.values()
        )

    # -- the production loop -----------------------------------------------------------

    async def run(self) -> None:
        """Rounds until ``stop()``: on every wake-up, and a tick every ``tick_interval``."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.tick_interval
        while not self._stopping:
            timeout = max(0.0, next_tick - loop.time())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that races with its result.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            now = loop.time()
            if now >= next_tick:
                # Ticks lost to a long round are not made up: elections must
                # not fire in a burst after a stall.
                self._ticks_due += 1
                next_tick = now + self.tick_interval
            while not self._stopping:
                # Gather first when requests contend: let the ones arriving
                # now add their proposals, or every request costs its own
                # fsync and flush (group commit needs a group). A lone request,
                # or a round only for Raft messages (a follower appending, a
                # leader counting acks), goes at once: waiting would only add
                # latency to every hop.
                contended = self._last_round_requests > 1 or self._requests > 1
                await asyncio.sleep(self.gather_window if contended else 0)
                if not self.has_work():
                    break
                await self.round()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for peer in self.peers.values():
            peer.stop()
