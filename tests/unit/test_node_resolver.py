"""The node's transaction resolver, on in-process nodes (real loop, short tick).

Each node hosts single-replica groups behind the real gRPC service on a real
socket, so ``NodeGroupCalls`` takes its local path for groups the node leads
and its gRPC path for the others. Prepares are proposed straight into the
groups' logs with deadlines already past (or far ahead), and the tests drive
the resolver's passes themselves (``step``), so no test waits for a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest

from shardkv import failpoints
from shardkv.errors import OutcomeUnknown
from shardkv.node import resolver as resolver_module
from shardkv.node.peer import Peer, PeerOptions
from shardkv.node.resolver import NodeGroupCalls, TxnResolver
from shardkv.node.runtime import NodeRuntime
from shardkv.node.service import NodeService
from shardkv.node.transport_memory import MemoryNetwork, MemoryTransport
from shardkv.raft import Role
from shardkv.ring import build_ring, ring_of
from shardkv.storage import GroupStorage, MemoryEngine
from shardkv.txn_protocol import now_ms
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, node_pb2_grpc

CLIENT = 77
_seqs = itertools.count(1)


@dataclass
class Node:
    node_id: int
    runtime: NodeRuntime
    address: str


@contextlib.asynccontextmanager
async def node(node_id: int, groups: Iterable[int]) -> AsyncIterator[Node]:
    """A node hosting single-replica ``groups``, its service on a real socket."""
    engine = MemoryEngine()
    for group_id in groups:
        GroupStorage(engine, group_id).bootstrap((node_id,))
    options = PeerOptions(election_ticks=3, heartbeat_ticks=1)
    peers = {group_id: Peer(engine, group_id, node_id, options) for group_id in groups}
    transport = MemoryTransport(node_id, MemoryNetwork())
    runtime = NodeRuntime(node_id, engine, transport, peers, tick_interval=0.005)
    loop_task = asyncio.create_task(runtime.run())
    server = grpc.aio.server()
    # The generated registration function carries no type hints.
    node_pb2_grpc.add_NodeServicer_to_server(NodeService(runtime, {}), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with asyncio.timeout(5):
            while not all(peer.role == Role.LEADER for peer in peers.values()):
                await asyncio.sleep(0.005)
        yield Node(node_id, runtime, f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
        runtime.stop()
        await loop_task
        await transport.close()
        engine.close()


def cluster_map(placement: dict[int, Node]) -> cluster_pb2.ClusterMap:
    """The map of data groups ``placement`` puts on single nodes, all on the ring."""
    nodes = {member.node_id: member.address for member in placement.values()}
    return cluster_pb2.ClusterMap(
        cluster_id="unit",
        version=1,
        ring=ring_of(1, dict.fromkeys(placement, 1)),
        nodes=[cluster_pb2.NodeInfo(node_id=n, address=a) for n, a in sorted(nodes.items())],
        groups=[
            cluster_pb2.GroupInfo(group_id=g, replicas=[member.node_id], weight=1)
            for g, member in sorted(placement.items())
        ],
    )


def key_of(the_map: cluster_pb2.ClusterMap, group_id: int, name: str) -> bytes:
    ring = build_ring(the_map.ring)
    for suffix in itertools.count():
        key = f"{name}#{suffix}".encode()
        if ring.group_for(key) == group_id:
            return key
    raise AssertionError("unreachable")


def put(key: bytes, value: bytes) -> kv_pb2.Operation:
    return kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))


async def prepare(
    runtime: NodeRuntime,
    group_id: int,
    seq: int,
    key: bytes,
    primary_key: bytes,
    deadline_ms: int,
    participant_keys: list[bytes] | None = None,
) -> kv_pb2.CommandResult:
    step = kv_pb2.TxnPrepare(
        primary_key=primary_key,
        deadline_ms=deadline_ms,
        then_ops=[put(key, b"staged")],
        participant_keys=participant_keys or [],
    )
    command = kv_pb2.Command(client_id=CLIENT, seq=seq, txn=kv_pb2.TxnStep(prepare=step))
    return await runtime.propose(group_id, command)


async def two_groups_prepared(
    at: dict[int, Node], the_map: cluster_pb2.ClusterMap, deadline_ms: int
) -> tuple[kv_pb2.TxnRef, bytes, bytes]:
    """One transaction prepared in groups 1 (the primary) and 2: its ref and keys."""
    seq = next(_seqs)
    primary_key, other_key = key_of(the_map, 1, f"p{seq}"), key_of(the_map, 2, f"s{seq}")
    await prepare(
        at[1].runtime, 1, seq, primary_key, primary_key, deadline_ms, [primary_key, other_key]
    )
    await prepare(at[2].runtime, 2, seq, other_key, primary_key, deadline_ms)
    return kv_pb2.TxnRef(client_id=CLIENT, seq=seq), primary_key, other_key


async def run_passes(resolver: TxnResolver, passes: int = 3) -> None:
    for _ in range(passes):
        await asyncio.gather(*resolver.step())


def record_of(runtime: NodeRuntime, group_id: int, txn: kv_pb2.TxnRef) -> kv_pb2.TxnRecord | None:
    return runtime.peer(group_id).machine.txns.find(txn)[1]


def value_of(runtime: NodeRuntime, group_id: int, key: bytes) -> bytes | None:
    found = runtime.peer(group_id).machine.get(key)
    return found.value if found is not None else None


@pytest.fixture
async def one_node() -> AsyncIterator[tuple[Node, cluster_pb2.ClusterMap]]:
    async with node(1, (1, 2)) as only:
        yield only, cluster_map({1: only, 2: only})


async def test_an_expired_undecided_transaction_is_aborted_everywhere(
    one_node: tuple[Node, cluster_pb2.ClusterMap],
) -> None:
    only, the_map = one_node
    resolver = TxnResolver(only.runtime, lambda: the_map)
    txn, primary_key, other_key = await two_groups_prepared(
        {1: only, 2: only}, the_map, now_ms() - 1
    )
    try:
        await run_passes(resolver)
        for group_id in (1, 2):
            assert only.runtime.peer(group_id).machine.txns.locks == {}
            assert only.runtime.peer(group_id).machine.txns.prepared() == []
        record = record_of(only.runtime, 1, txn)
        assert record is not None
        assert (record.state, record.finished) == (kv_pb2.TXN_ABORTED, True)
        assert value_of(only.runtime, 1, primary_key) is None
        assert value_of(only.runtime, 2, other_key) is None
    finally:
        await resolver.stop()


async def test_a_commit_recorded_at_the_primary_only_is_finished_in_the_other_group(
    one_node: tuple[Node, cluster_pb2.ClusterMap],
) -> None:
    only, the_map = one_node
    resolver = TxnResolver(only.runtime, lambda: the_map)
    txn, primary_key, other_key = await two_groups_prepared(
        {1: only, 2: only}, the_map, now_ms() - 1
    )
    decide = kv_pb2.TxnDecide(txn=txn, commit=True, then_branch=True)
    decided = await only.runtime.propose(1, kv_pb2.Command(txn=kv_pb2.TxnStep(decide=decide)))
    assert decided.txn.record.state == kv_pb2.TXN_COMMITTED
    try:
        await run_passes(resolver)
        assert value_of(only.runtime, 1, primary_key) == b"staged"
        assert value_of(only.runtime, 2, other_key) == b"staged"
        assert only.runtime.peer(2).machine.txns.locks == {}
        record = record_of(only.runtime, 1, txn)
        assert record is not None
        assert (record.state, record.finished) == (kv_pb2.TXN_COMMITTED, True)
    finally:
        await resolver.stop()


async def test_a_transaction_before_its_deadline_is_left_alone(
    one_node: tuple[Node, cluster_pb2.ClusterMap],
) -> None:
    only, the_map = one_node
    resolver = TxnResolver(only.runtime, lambda: the_map)
    txn, _, _ = await two_groups_prepared({1: only, 2: only}, the_map, now_ms() + 60_000)
    try:
        assert resolver.step() == []
        assert len(only.runtime.peer(2).machine.txns.locks) == 1
        assert record_of(only.runtime, 1, txn) is None
    finally:
        await resolver.stop()


async def test_no_map_no_pass(one_node: tuple[Node, cluster_pb2.ClusterMap]) -> None:
    only, the_map = one_node
    resolver = TxnResolver(only.runtime, lambda: None)
    await two_groups_prepared({1: only, 2: only}, the_map, now_ms() - 1)
    try:
        assert resolver.step() == []
    finally:
        await resolver.stop()


async def test_one_transaction_is_resolved_by_one_task_at_a_time(
    one_node: tuple[Node, cluster_pb2.ClusterMap],
) -> None:
    only, the_map = one_node
    resolver = TxnResolver(only.runtime, lambda: the_map, max_in_flight=2)
    refs = [
        (await two_groups_prepared({1: only, 2: only}, the_map, now_ms() - 1))[0] for _ in range(3)
    ]
    try:
        first = resolver.step()
        again = resolver.step()  # the first two are still in flight; the bound is reached
        assert (len(first), again) == (2, [])
        await asyncio.gather(*first)
        await run_passes(resolver)
        for txn in refs:
            record = record_of(only.runtime, 1, txn)
            assert record is not None and record.finished
    finally:
        await resolver.stop()


async def test_a_failing_transaction_does_not_stop_the_others(
    one_node: tuple[Node, cluster_pb2.ClusterMap], caplog: pytest.LogCaptureFixture
) -> None:
    only, the_map = one_node
    # Group 3 is on the ring but its only replica (node 9) does not answer.
    broken = cluster_pb2.ClusterMap()
    broken.CopyFrom(the_map)
    broken.ring.CopyFrom(ring_of(1, {1: 1, 2: 1, 3: 1}))
    broken.nodes.add(node_id=9, address="127.0.0.1:1")
    broken.groups.add(group_id=3, replicas=[9], weight=1)
    calls = NodeGroupCalls(only.runtime, lambda: broken, timeout=0.3)
    resolver = TxnResolver(only.runtime, lambda: broken, calls=calls)
    seq = next(_seqs)
    lost_primary = key_of(broken, 3, "lost")
    stuck_key = key_of(broken, 2, "stuck")
    await prepare(only.runtime, 2, seq, stuck_key, lost_primary, now_ms() - 1)
    txn, _, _ = await two_groups_prepared({1: only, 2: only}, broken, now_ms() - 1)
    try:
        await run_passes(resolver, passes=2)
        # The healthy transaction finished; the stuck one waits for its back-off.
        record = record_of(only.runtime, 1, txn)
        assert record is not None and record.finished
        assert [lock.key for lock in only.runtime.peer(2).machine.txns.locks.values()] == [
            stuck_key
        ]
        assert "resolving transaction" in caplog.text and "OutcomeUnknown" in caplog.text
        assert resolver.step() == []  # backing off
    finally:
        await resolver.stop()


async def test_calls_reach_a_group_led_by_another_node_over_grpc() -> None:
    async with node(1, (1,)) as first, node(2, (2,)) as second:
        the_map = cluster_map({1: first, 2: second})
        resolver = TxnResolver(first.runtime, lambda: the_map)
        other = TxnResolver(second.runtime, lambda: the_map)
        txn, _, other_key = await two_groups_prepared({1: first, 2: second}, the_map, now_ms() - 1)
        decide = kv_pb2.TxnDecide(txn=txn, commit=True, then_branch=True)
        await first.runtime.propose(1, kv_pb2.Command(txn=kv_pb2.TxnStep(decide=decide)))
        try:
            # Node 1 leads only the primary: finishing everywhere reaches node 2 by gRPC.
            await run_passes(resolver)
            assert value_of(second.runtime, 2, other_key) == b"staged"
            assert second.runtime.peer(2).machine.txns.locks == {}
            record = record_of(first.runtime, 1, txn)
            assert record is not None and record.finished
            # And node 2 reads the primary's record on node 1 (find) by gRPC.
            found = await other.calls.find(1, txn)
            assert [r.state for r in found.records] == [kv_pb2.TXN_COMMITTED]
        finally:
            await resolver.stop()
            await other.stop()


async def test_a_group_nobody_answers_for_is_outcome_unknown_within_the_timeout(
    one_node: tuple[Node, cluster_pb2.ClusterMap],
) -> None:
    only, the_map = one_node
    lonely = cluster_pb2.ClusterMap()
    lonely.CopyFrom(the_map)
    lonely.nodes.add(node_id=9, address="127.0.0.1:1")
    lonely.groups.add(group_id=3, replicas=[9])
    calls = NodeGroupCalls(only.runtime, lambda: lonely, timeout=0.3)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(OutcomeUnknown, match="group 3: no leader answered"):
            await calls.find(3, kv_pb2.TxnRef(client_id=1, seq=1))
        assert loop.time() - started < 2.0
    finally:
        await calls.close()
        await calls.close()  # twice is harmless


async def _group_3_served_by(
    servicer: node_pb2_grpc.NodeServicer, the_map: cluster_pb2.ClusterMap
) -> tuple[grpc.aio.Server, cluster_pb2.ClusterMap]:
    """A started server of ``servicer``, and ``the_map`` with group 3 on it alone (node 9)."""
    server = grpc.aio.server()
    node_pb2_grpc.add_NodeServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    elsewhere = cluster_pb2.ClusterMap()
    elsewhere.CopyFrom(the_map)
    elsewhere.nodes.add(node_id=9, address=f"127.0.0.1:{port}")
    elsewhere.groups.add(group_id=3, replicas=[9])
    return server, elsewhere


class _BrokenExports(node_pb2_grpc.NodeServicer):
    """A node whose exports send one chunk, then fail as a replica that left would."""

    def __init__(self) -> None:
        self.exports = 0

    async def Export(
        self,
        request: node_pb2.ExportRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[node_pb2.ExportChunk]:
        self.exports += 1
        yield node_pb2.ExportChunk(data=kv_pb2.MigrateImport(keys=[b"k"]), revision=5)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the group left this node")


async def test_an_export_that_fails_after_its_first_chunk_is_the_callers_to_handle(
    one_node: tuple[Node, cluster_pb2.ClusterMap],
) -> None:
    """Not started over at another replica: the caller has taken chunks of this stream
    already (its revision, its keys) and starts its step over instead."""
    only, the_map = one_node
    broken = _BrokenExports()
    server, elsewhere = await _group_3_served_by(broken, the_map)
    calls = NodeGroupCalls(only.runtime, lambda: elsewhere, timeout=5.0)
    taken: list[node_pb2.ExportChunk] = []
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for chunk in calls.export(node_pb2.ExportRequest(group_id=3, target=1)):
                taken.append(chunk)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert [list(chunk.data.keys) for chunk in taken] == [[b"k"]]
        assert broken.exports == 1
    finally:
        await calls.close()
        await server.stop(None)


class _SilentExports(node_pb2_grpc.NodeServicer):
    """A node whose exports send ``sent`` chunks, then nothing (paused, or cut off)."""

    def __init__(self, sent: int) -> None:
        self.sent = sent

    async def Export(
        self,
        request: node_pb2.ExportRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[node_pb2.ExportChunk]:
        for _ in range(self.sent):
            yield node_pb2.ExportChunk(data=kv_pb2.MigrateImport(keys=[b"k"]), revision=5)
        await asyncio.Event().wait()


@pytest.mark.parametrize("sent", [0, 1])
async def test_an_export_that_goes_silent_fails_rather_than_waits(
    one_node: tuple[Node, cluster_pb2.ClusterMap], monkeypatch: pytest.MonkeyPatch, sent: int
) -> None:
    """A stream open to a source that sends nothing (a paused process, a dropping
    firewall) would hold the driver's step for ever: past ``_CHUNK_TIMEOUT``
    without a chunk (a scanning source sends empty ones), it fails."""
    monkeypatch.setattr(resolver_module, "_CHUNK_TIMEOUT", 0.3)
    only, the_map = one_node
    silent = _SilentExports(sent)
    server, elsewhere = await _group_3_served_by(silent, the_map)
    calls = NodeGroupCalls(only.runtime, lambda: elsewhere, timeout=1.0)
    taken: list[node_pb2.ExportChunk] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(OutcomeUnknown) as failed:
            async for chunk in calls.export(node_pb2.ExportRequest(group_id=3, target=1)):
                taken.append(chunk)
        assert len(taken) == sent
        expected = "sent nothing of its export for 0.3 s" if sent else "no chunk in 0.3 s"
        assert expected in str(failed.value)
        assert loop.time() - started < 3.0
    finally:
        await calls.close()
        await server.stop(None)


class _EagerExports(node_pb2_grpc.NodeServicer):
    """A node whose export sends ``chunks`` chunks of ``size`` bytes as fast as the
    stream takes them, counting what it produced (a source's scan)."""

    def __init__(self, chunks: int, size: int) -> None:
        self.chunks, self.size, self.produced = chunks, size, 0

    async def Export(
        self,
        request: node_pb2.ExportRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[node_pb2.ExportChunk]:
        for number in range(self.chunks):
            self.produced += 1
            record = number.to_bytes(4, "big") * (self.size // 4)
            yield node_pb2.ExportChunk(data=kv_pb2.MigrateImport(keys=[b"k"], records=[record]))


async def test_an_export_source_runs_only_a_little_ahead_of_a_slow_driver(
    one_node: tuple[Node, cluster_pb2.ClusterMap],
) -> None:
    """A paced driver takes a chunk now and then; the source's scan must not run
    megabytes ahead of it (gRPC's bandwidth-delay probing grew the stream's
    window so far that each source scanned 9-10 chunks of 0.6 MiB ahead)."""
    only, the_map = one_node
    eager = _EagerExports(chunks=40, size=600_000)
    server, elsewhere = await _group_3_served_by(eager, the_map)
    calls = NodeGroupCalls(only.runtime, lambda: elsewhere, timeout=5.0)
    taken, leads = 0, []
    try:
        async for chunk in calls.export(node_pb2.ExportRequest(group_id=3, target=1)):
            assert chunk.data.records[0][:4] == taken.to_bytes(4, "big")  # in order, whole
            taken += 1
            if taken == 12:
                break
            await asyncio.sleep(0.1)  # the driver paced
            leads.append(eager.produced - taken)
        assert max(leads) <= 3, leads
    finally:
        await calls.close()
        await server.stop(None)


async def test_the_resolver_failpoint_fires_after_the_record_before_finishing(
    one_node: tuple[Node, cluster_pb2.ClusterMap],
) -> None:
    only, the_map = one_node
    resolver = TxnResolver(only.runtime, lambda: the_map)
    txn, _, other_key = await two_groups_prepared({1: only, 2: only}, the_map, now_ms() - 1)
    failpoints.configure("txn.resolver=error")
    try:
        await run_passes(resolver, passes=1)
        # The lock met first (the primary's, group 1) was settled: ABORTED is
        # recorded, and the failpoint stopped the resolver before group 2.
        record = record_of(only.runtime, 1, txn)
        assert record is not None and record.state == kv_pb2.TXN_ABORTED
        assert other_key in only.runtime.peer(2).machine.txns.locks
    finally:
        failpoints.configure("")
        await resolver.stop()
