"""The owner group's leader keeps its leases' deadlines and expires them (``shardkv.leases``).

``LeaseDeadlines`` is the leader's memory of when each lease of a group
ends, on the event loop's clock. It is kept per leadership: when this node
becomes a group's leader again (another term, seen through the peer's count
of leader changes), the table starts empty, and every alive lease found in
the group starts at its full TTL. A keep-alive (``Node.Lease`` with
``renew``) sets a lease's deadline to now plus its TTL. Nothing of this is
replicated: a lease outlives its TTL by a failover, and never ends early.

``LeaseKeeper`` runs every ``interval`` seconds on each node: for each data
group this node leads, it reads the lease records the group serves (a
local scan of ``LEASE_PREFIX``: arcs in transit are skipped), gives new
ones their deadline, forgets those gone, and for each alive lease past its
deadline proposes a compare-and-set of its record from ALIVE to EXPIRED.
That entry is the expiry: it commits only at a leader with a quorum; a
revoke, or a grant again of the same id (another record: its grant time
differs), that got there first makes it fail, as does a transaction holding
the record's lock (then the next pass tries again). A keep-alive only moves
the deadline in memory. Deleting the keys attached to an ended
lease is the routers' work (``router.leases``): it needs a transaction
across groups.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from shardkv.leases import LEASE_PREFIX, LeaseRecord, LeaseState, lease_id_of
from shardkv.node.cluster import META_GROUP
from shardkv.node.passes import Passes
from shardkv.node.peer import Peer
from shardkv.node.runtime import NodeRuntime
from shardkv.raft import Role
from shardkv.v1 import kv_pb2

__all__ = ["DEFAULT_INTERVAL", "LeaseDeadlines", "LeaseKeeper"]

_log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.25


class LeaseDeadlines:
    """Deadlines of the leases of the groups this node leads; see the module docstring."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock
        # group -> (the leadership they were set under,
        #           lease id -> (the lease's record, its deadline))
        self._groups: dict[int, tuple[tuple[int, int], dict[int, tuple[bytes, float]]]] = {}

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def of(self, peer: Peer) -> dict[int, tuple[bytes, float]]:
        """The deadlines of ``peer``'s group under its current leadership."""
        leadership = (id(peer), peer.leader_changes)
        held = self._groups.get(peer.group_id)
        if held is None or held[0] != leadership:
            held = self._groups[peer.group_id] = (leadership, {})
        return held[1]

    def deadline(self, peer: Peer, lease_id: int, record: bytes, ttl: int) -> float:
        """The lease's deadline: the one set for this very record, or now plus its
        TTL (first seen under this leadership, or granted again since)."""
        table = self.of(peer)
        held = table.get(lease_id)
        if held is None or held[0] != record:
            held = table[lease_id] = (record, self.now() + ttl)
        return held[1]

    def touch(
        self, peer: Peer, lease_id: int, record: bytes, ttl: int, renew: bool
    ) -> float | None:
        """Seconds left of the lease (renewed first if ``renew``); None once its
        deadline passed (its expiry is on the way: too late to renew)."""
        now = self.now()
        deadline = self.deadline(peer, lease_id, record, ttl)
        if deadline <= now:
            return None
        if renew:
            deadline = now + ttl
            self.of(peer)[lease_id] = (record, deadline)
        return deadline - now

    def drop(self, group_id: int) -> None:
        self._groups.pop(group_id, None)


class LeaseKeeper(Passes):
    """Expires the leases of the groups this node leads; see the module docstring."""

    def __init__(
        self,
        runtime: NodeRuntime,
        deadlines: LeaseDeadlines,
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        super().__init__(interval)
        self.runtime = runtime
        self.deadlines = deadlines
        self._expiring: dict[tuple[int, int], asyncio.Task[None]] = {}

    def describe(self) -> str:
        return f"node {self.runtime.node_id}: lease keeper"

    async def stop(self) -> None:
        self.halt()
        running = list(self._expiring.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def step(self) -> list[asyncio.Task[None]]:
        """One pass; the expiries it started (for tests)."""
        started = []
        for group_id, peer in sorted(self.runtime.peers.items()):
            if group_id == META_GROUP:
                continue
            if peer.role != Role.LEADER:
                self.deadlines.drop(group_id)
                continue
            table = self.deadlines.of(peer)
            now = self.deadlines.now()
            alive: set[int] = set()
            for kv in peer.machine.scan(prefix=LEASE_PREFIX):
                try:
                    lease_id, record = lease_id_of(kv.key), LeaseRecord.decode(kv.value)
                except ValueError:
                    continue  # not ours to judge (written through the native API)
                if record.state != LeaseState.ALIVE:
                    continue
                alive.add(lease_id)
                deadline = self.deadlines.deadline(peer, lease_id, kv.value, record.ttl)
                key = (group_id, lease_id)
                if now >= deadline and key not in self._expiring:
                    task = asyncio.create_task(
                        self._expire(group_id, kv.key, record),
                        name=f"node-{self.runtime.node_id}-expire-{lease_id:x}",
                    )
                    self._expiring[key] = task
                    task.add_done_callback(functools.partial(self._done, key))
                    started.append(task)
            for gone in table.keys() - alive:
                del table[gone]
        return started

    def _done(self, key: tuple[int, int], _: asyncio.Task[None]) -> None:
        self._expiring.pop(key, None)

    async def _expire(self, group_id: int, key: bytes, record: LeaseRecord) -> None:
        expire = kv_pb2.CompareAndSet(
            key=key, expected=record.encode(), value=record.ended(LeaseState.EXPIRED).encode()
        )
        command = kv_pb2.Command(operations=[kv_pb2.Operation(compare_and_set=expire)])
        try:
            result = await self.runtime.propose(group_id, command)
        except Exception as error:  # the next pass tries again
            _log.debug("group %d: expiring lease %x failed: %s", group_id, lease_id_of(key), error)
            return
        if result.results and result.results[0].succeeded:
            _log.info("group %d: lease %x expired", group_id, lease_id_of(key))
