"""Clients of ``node_sim``: put, get, cas and delete through the runtimes, and their history.

Each logical client is one task issuing one operation at a time on a small
key set spread over the groups. It calls the runtime as ``NodeService``
does, without gRPC:

- a write is ``runtime.propose(group_id, Command)`` with the client's
  ``(client_id, seq)``, so that a retry is exactly-once;
- a read is ``runtime.read_barrier(group_id)``, then
  ``runtime.peer(group_id).machine.get(key)`` (an answer from a node that
  crashed before the client ran again never left it: the client retries).

A client looks for a group's leader by trying nodes (it knows no placement)
and following ``NotLeader`` hints. A request it stops waiting for
(``request_timeout`` steps), or that ended in ``OutcomeUnknown`` (a crash of
the node, a snapshot past it), is retried with the SAME ``seq``; after
``patience`` such attempts, during the faults only, the client gives up and
records the outcome as unknown. ``ProposalFailed`` is retried at once, or,
when it answered the only attempt, may end the operation as never applied:
it is then left out of the history, so if it did apply, the checks see a
value nobody wrote.

Times in the history are a counter of the clients' calls and returns, in
the order the single event loop saw them: real-time order, finer than steps.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardkv.errors import NotLeader, OutcomeUnknown, ProposalFailed, UnknownGroup
from shardkv.v1 import kv_pb2
from tests.checkers import Operation
from tests.sim.node_cluster import NodeCluster, SimNode, SimulationError

__all__ = ["Workload"]


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned future's exception as seen (asyncio logs it otherwise)."""
    if not future.cancelled():
        future.exception()


@dataclass(slots=True)
class _Client:
    client_id: int
    rng: random.Random
    ops_left: int
    seq: int = 0
    leader_hints: dict[int, int] = field(default_factory=dict)
    # The latest value this client saw per key: a cas expects it.
    seen: dict[bytes, bytes | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Request:
    kind: str  # put | get | cas | delete
    key: bytes
    group_id: int
    value: bytes | None = None
    expected: bytes | None = None
    seq: int = 0

    def command(self, client_id: int) -> kv_pb2.Command:
        if self.kind == "put":
            operation = kv_pb2.Operation(put=kv_pb2.Put(key=self.key, value=self.value))
        elif self.kind == "delete":
            operation = kv_pb2.Operation(delete=kv_pb2.Delete(key=self.key))
        else:
            cas = kv_pb2.CompareAndSet(key=self.key, value=self.value)
            if self.expected is not None:
                cas.expected = self.expected
            operation = kv_pb2.Operation(compare_and_set=cas)
        return kv_pb2.Command(client_id=client_id, seq=self.seq, operations=[operation])


class _GaveUp(Exception):
    """The client stopped trying; ``withdrawn`` if the write certainly never applied."""

    def __init__(self, withdrawn: bool) -> None:
        super().__init__("gave up")
        self.withdrawn = withdrawn


@dataclass(slots=True)
class _ProposalWatch:
    """A proposal future handed out by a node, to find futures nobody settles."""

    node: SimNode
    incarnation: int
    group_id: int
    index: int
    future: asyncio.Future[kv_pb2.CommandResult]


class Workload:
    """Clients issuing put/get/cas/delete through the runtimes, and their history."""

    def __init__(
        self,
        cluster: NodeCluster,
        group_of: dict[bytes, int],
        rng: random.Random,
        *,
        clients: int,
        ops_per_client: Callable[[], int],
        request_timeout: int,
        patience: int,
    ) -> None:
        self.cluster = cluster
        self.group_of = group_of
        self.keys = sorted(group_of)
        self.request_timeout = request_timeout
        # Attempts without an answer before a client gives up (during faults).
        self.patience = patience
        self.accepting = True
        self.history: list[Operation] = []
        self.errors: list[str] = []
        self.completed = 0
        self.unknown = 0
        self.withdrawn = 0
        self.abandoned_reads = 0
        self._events = itertools.count(1)
        self._watches: list[_ProposalWatch] = []
        self._clients = [
            _Client(client_id, random.Random(rng.randrange(1 << 30)), ops_per_client())
            for client_id in range(1, clients + 1)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for client in self._clients:
            self._tasks.append(asyncio.get_running_loop().create_task(self._run(client)))

    def idle(self) -> bool:
        return all(task.done() for task in self._tasks)

    def stop_faults(self) -> None:
        """No new operations, and no more giving up: what is in flight must finish."""
        self.accepting = False
        self.patience = 1 << 30

    def _now(self) -> float:
        return float(next(self._events))

    async def _run(self, client: _Client) -> None:
        try:
            while self.accepting and client.ops_left > 0:
                client.ops_left -= 1
                await self._one(client, self._new_request(client))
                pause = client.rng.choice((0, 0, 1, 3))
                if pause:
                    await self.cluster.clock.sleep(pause)
        except SimulationError as error:
            self.errors.append(str(error))
        except Exception:
            self.errors.append(f"client {client.client_id} crashed:\n{traceback.format_exc()}")

    def _new_request(self, client: _Client) -> _Request:
        rng = client.rng
        key = rng.choice(self.keys)
        group_id = self.group_of[key]
        roll = rng.random()
        if roll < 0.3:
            return _Request("get", key, group_id)
        client.seq += 1
        value = f"{client.client_id}.{client.seq}".encode()
        if roll < 0.6:
            return _Request("put", key, group_id, value=value, seq=client.seq)
        if roll < 0.8:
            return _Request("delete", key, group_id, seq=client.seq)
        guess = rng.random()
        if guess < 0.6:
            expected = client.seen.get(key)
        elif guess < 0.8:
            expected = None
        else:
            other = rng.randrange(1, len(self._clients) + 1)
            expected = f"{other}.{rng.randrange(1, client.seq + 2)}".encode()
        return _Request("cas", key, group_id, value=value, expected=expected, seq=client.seq)

    async def _one(self, client: _Client, request: _Request) -> None:
        call = self._now()
        try:
            if request.kind == "get":
                output: object = await self._read(client, request)
            else:
                output = await self._write(client, request)
        except _GaveUp as gave_up:
            self._give_up(client, request, call, gave_up.withdrawn)
            return
        ret = self._now()
        self.completed += 1
        self._record(client.client_id, request, output, call, ret)
        if request.kind == "get":
            assert output is None or isinstance(output, bytes)
            client.seen[request.key] = output
        elif output is not False:
            client.seen[request.key] = request.value if request.kind != "delete" else None

    def _give_up(self, client: _Client, request: _Request, call: float, withdrawn: bool) -> None:
        if request.kind == "get":
            # A read that never answered constrains nothing.
            self.abandoned_reads += 1
        elif withdrawn:
            self.withdrawn += 1
        else:
            self.unknown += 1
            self._record(client.client_id, request, None, call, None)
        self.cluster.log(
            f"client {client.client_id} gives up on {request.kind} {request.key!r} "
            f"seq {request.seq}{' (never applied)' if withdrawn else ''}"
        )

    def _record(
        self, client_id: int, request: _Request, output: object, call: float, ret: float | None
    ) -> None:
        self.history.append(
            Operation(
                client_id=client_id,
                kind=request.kind,
                key=request.key,
                value=request.value,
                expected=request.expected,
                output=output,
                call=call,
                ret=ret,
            )
        )
        if ret is not None:
            self.cluster.log(
                f"client {client_id} {request.kind} {request.key!r} "
                f"{request.value or request.expected or b''!r} -> {output!r}"
            )

    # -- one request, with retries --------------------------------------------------------

    def _target(self, client: _Client, group_id: int) -> SimNode:
        """The node to try: the hinted leader mostly, else any node (clients know no placement)."""
        hint = client.leader_hints.get(group_id, 0)
        if hint and client.rng.random() < 0.9:
            return self.cluster.nodes[hint]
        return client.rng.choice(list(self.cluster.nodes.values()))

    async def _refused(self, client: _Client, group_id: int, hint: int) -> None:
        client.leader_hints[group_id] = hint
        await self.cluster.clock.sleep(1)

    async def _write(self, client: _Client, request: _Request) -> object:
        command = request.command(client.client_id)
        group_id = request.group_id
        attempts = 0  # proposals appended to some leader's log
        unanswered = 0
        while True:
            node = self._target(client, group_id)
            runtime = node.runtime
            if runtime is None:
                await self._refused(client, group_id, 0)
                continue
            try:
                future = runtime.propose(group_id, command)
            except NotLeader as refused:
                await self._refused(client, group_id, refused.leader_id)
                continue
            except UnknownGroup:
                await self._refused(client, group_id, 0)
                continue
            future.add_done_callback(_retrieve)
            attempts += 1
            self._watch(node, group_id, future)
            client.leader_hints[group_id] = node.node_id
            await self._wait(future)
            if not future.done():
                outcome = "timed out"
            elif isinstance(future.exception(), ProposalFailed):
                # Never applied: retry, or give up on an operation that certainly had no effect.
                if attempts == 1 and unanswered == 0 and client.rng.random() < 0.3:
                    raise _GaveUp(withdrawn=True)
                continue
            elif isinstance(future.exception(), OutcomeUnknown):
                outcome = "outcome unknown"
            elif future.exception() is not None:
                raise SimulationError(
                    f"a proposal of client {client.client_id} failed with {future.exception()!r}"
                )
            else:
                return self._output(client, request, future.result())
            unanswered += 1
            client.leader_hints[group_id] = 0
            self.cluster.log(
                f"client {client.client_id} {request.kind} seq {request.seq} via node "
                f"{node.node_id}: {outcome}"
            )
            if unanswered >= self.patience:
                raise _GaveUp(withdrawn=False)

    def _output(self, client: _Client, request: _Request, result: kv_pb2.CommandResult) -> object:
        if len(result.results) != 1:
            raise SimulationError(
                f"client {client.client_id} seq {request.seq} ({request.kind} {request.key!r}) "
                f"got an answer with {len(result.results)} results (STALE?): {result}"
            )
        succeeded = result.results[0].succeeded
        if request.kind == "put":
            if not succeeded:
                raise SimulationError(f"a put answered succeeded=False: {result}")
            return None
        return succeeded

    async def _read(self, client: _Client, request: _Request) -> bytes | None:
        group_id = request.group_id
        unanswered = 0
        while True:
            node = self._target(client, group_id)
            runtime = node.runtime
            if runtime is None:
                await self._refused(client, group_id, 0)
                continue
            try:
                barrier = runtime.read_barrier(group_id)
            except NotLeader as refused:
                await self._refused(client, group_id, refused.leader_id)
                continue
            except UnknownGroup:
                await self._refused(client, group_id, 0)
                continue
            barrier.add_done_callback(_retrieve)
            incarnation = node.incarnation
            client.leader_hints[group_id] = node.node_id
            await self._wait(barrier)
            error = barrier.exception() if barrier.done() else None
            if isinstance(error, NotLeader):
                await self._refused(client, group_id, error.leader_id)
                continue
            if barrier.done() and error is None:
                if node.runtime is runtime and node.incarnation == incarnation:
                    # As NodeService.Read: the state machine of now, after the barrier.
                    kv = runtime.peer(group_id).machine.get(request.key)
                    return kv.value if kv is not None else None
                error = OutcomeUnknown("the node crashed before it answered")
            if error is not None and not isinstance(error, OutcomeUnknown):
                raise SimulationError(f"a read barrier failed with {error!r}")
            unanswered += 1
            client.leader_hints[group_id] = 0
            if unanswered >= self.patience:
                raise _GaveUp(withdrawn=False)

    async def _wait(self, future: asyncio.Future[Any]) -> None:
        """Until ``future`` settles or the request times out, whichever comes first."""
        timer = self.cluster.clock.sleep(self.request_timeout)
        waiting: list[asyncio.Future[Any]] = [future, timer]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)

    # -- orphaned proposals -------------------------------------------------------------

    def _watch(
        self, node: SimNode, group_id: int, future: asyncio.Future[kv_pb2.CommandResult]
    ) -> None:
        assert node.runtime is not None
        peer = node.runtime.peers[group_id]
        index = peer.raw.raft.log.last_index()
        self._watches.append(_ProposalWatch(node, node.incarnation, group_id, index, future))

    def orphaned_proposals(self) -> list[str]:
        """Proposals whose node applied past their index without answering them."""
        orphans = []
        for watch in self._watches:
            node = watch.node
            if watch.future.done() or node.incarnation != watch.incarnation:
                continue
            assert node.runtime is not None
            peer = node.runtime.peers[watch.group_id]
            if peer.applied >= watch.index:
                orphans.append(
                    f"node {node.node_id} group {watch.group_id}: the proposal at index "
                    f"{watch.index} is unanswered, though the node applied up to {peer.applied}"
                )
        return orphans

    async def final_reads(self) -> None:
        """Read every key once, linearizably, into the history."""
        reader = _Client(0, random.Random(0), 0)
        for key in self.keys:
            request = _Request("get", key, self.group_of[key])
            call = self._now()
            output = await self._read(reader, request)
            self._record(0, request, output, call, self._now())
