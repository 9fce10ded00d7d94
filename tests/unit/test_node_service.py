"""The node's gRPC service over a real socket, on a one-node runtime.

The runtime runs its real loop on a short tick; what is under test here is
the gRPC face: status codes, routing errors in the body, paging, retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from shardkv.node import export as export_module
from shardkv.node import service as service_module
from shardkv.node.cluster import CLUSTER_MAP_KEY, META_GROUP, ClusterAgent, initial_map
from shardkv.node.config import NodeConfig
from shardkv.node.peer import Peer, PeerOptions
from shardkv.node.runtime import NodeRuntime
from shardkv.node.service import IMPORT_HOLD, NodeService
from shardkv.node.transport_memory import MemoryNetwork, MemoryTransport
from shardkv.raft import Role
from shardkv.ring import build_ring, ring_of
from shardkv.storage import GroupStorage, MemoryEngine
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, node_pb2_grpc
from tests.unit.engines import replayed

GROUPS = (1, 2)


@dataclass
class OneNode:
    stub: node_pb2_grpc.NodeStub
    runtime: NodeRuntime
    agent: ClusterAgent | None


@contextlib.asynccontextmanager
async def one_node(
    groups: tuple[int, ...], *, with_agent: bool = False, agent_interval: float = 0.01
) -> AsyncIterator[OneNode]:
    """A one-node runtime hosting ``groups`` behind the service on a real socket; the
    agent's first pass runs once every group has its leader."""
    engine = MemoryEngine()
    for group_id in groups:
        GroupStorage(engine, group_id).bootstrap((1,))
    options = PeerOptions(election_ticks=3, heartbeat_ticks=1)
    peers = {group_id: Peer(engine, group_id, 1, options) for group_id in groups}
    transport = MemoryTransport(1, MemoryNetwork())
    runtime = NodeRuntime(1, engine, transport, peers, tick_interval=0.005)
    loop_task = asyncio.create_task(runtime.run())
    agent = None
    if with_agent:
        config = NodeConfig(
            node_id=1,
            listen="127.0.0.1:1",
            advertise="127.0.0.1:1",
            data_dir=Path("unused"),
            initial_cluster={1: "127.0.0.1:1"},
            groups={group_id: (1,) for group_id in groups},
        )
        agent = ClusterAgent(runtime, initial_map(config), {}, interval=agent_interval)
    server = grpc.aio.server()
    node_pb2_grpc.add_NodeServicer_to_server(NodeService(runtime, {1: "self"}, agent), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with asyncio.timeout(5):
        while not all(peer.raw.raft.role == Role.LEADER for peer in peers.values()):
            await asyncio.sleep(0.005)
    agent_task = asyncio.create_task(agent.run()) if agent is not None else None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield OneNode(node_pb2_grpc.NodeStub(channel), runtime, agent)
    finally:
        if agent is not None and agent_task is not None:
            await agent.stop()
            await agent_task
        await channel.close()
        await server.stop(None)
        runtime.stop()
        await loop_task
        await transport.close()
        engine.close()


@pytest.fixture
async def stub() -> AsyncIterator[node_pb2_grpc.NodeStub]:
    async with one_node(GROUPS) as node:
        yield node.stub


def put(key: bytes, value: bytes, seq: int) -> kv_pb2.Command:
    return kv_pb2.Command(
        client_id=42, seq=seq, operations=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))]
    )


async def test_write_then_read_and_exactly_once_retry(stub: node_pb2_grpc.NodeStub) -> None:
    first = await stub.Write(node_pb2.WriteRequest(group_id=1, command=put(b"k", b"v", 1)))
    assert not first.HasField("error")
    retried = await stub.Write(node_pb2.WriteRequest(group_id=1, command=put(b"k", b"v", 1)))
    assert retried.result == replayed(first.result)
    read = await stub.Read(node_pb2.ReadRequest(group_id=1, keys=[b"k", b"missing"]))
    assert [(kv.key, kv.value, kv.version) for kv in read.kvs] == [(b"k", b"v", 1)]


async def test_bad_input_is_invalid_argument_and_says_why(stub: node_pb2_grpc.NodeStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.Write(node_pb2.WriteRequest(group_id=1, command=put(b"", b"v", 1)))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in (empty.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as huge:
        await stub.Read(node_pb2.ReadRequest(group_id=1, keys=[b"k" * 5000]))
    assert huge.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most" in (huge.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as no_ops:
        await stub.Write(node_pb2.WriteRequest(group_id=1, command=kv_pb2.Command()))
    assert no_ops.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_group_is_a_routing_error(stub: node_pb2_grpc.NodeStub) -> None:
    response = await stub.Write(node_pb2.WriteRequest(group_id=99, command=put(b"k", b"v", 1)))
    assert response.error.unknown_group.group_id == 99
    read = await stub.Read(node_pb2.ReadRequest(group_id=99, keys=[b"k"]))
    assert read.error.HasField("unknown_group")


async def test_scan_pages_by_range_and_prefix(stub: node_pb2_grpc.NodeStub) -> None:
    for seq, key in enumerate((b"a1", b"a2", b"a3", b"b1", b"c1"), start=1):
        await stub.Write(node_pb2.WriteRequest(group_id=2, command=put(key, key, seq)))
    page = await stub.Scan(node_pb2.ScanRequest(group_id=2, limit=2))
    assert [kv.key for kv in page.kvs] == [b"a1", b"a2"] and page.more
    rest = await stub.Scan(node_pb2.ScanRequest(group_id=2, start=b"a2\x00", limit=10))
    assert [kv.key for kv in rest.kvs] == [b"a3", b"b1", b"c1"] and not rest.more
    prefixed = await stub.Scan(node_pb2.ScanRequest(group_id=2, prefix=b"a"))
    assert [kv.key for kv in prefixed.kvs] == [b"a1", b"a2", b"a3"]
    bounded = await stub.Scan(node_pb2.ScanRequest(group_id=2, start=b"a2", end=b"b1"))
    assert [kv.key for kv in bounded.kvs] == [b"a2", b"a3"]
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await stub.Scan(node_pb2.ScanRequest(group_id=2, limit=1_000_000))
    assert too_big.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_status_reports_every_group(stub: node_pb2_grpc.NodeStub) -> None:
    await stub.Write(node_pb2.WriteRequest(group_id=1, command=put(b"x", b"1", 1)))
    status = await stub.Status(node_pb2.StatusRequest())
    assert status.node_id == 1
    assert [group.group_id for group in status.groups] == list(GROUPS)
    first = status.groups[0]
    assert first.role == "leader" and first.leader_id == 1 and first.key_count == 1
    assert list(first.voters) == [1] and first.applied >= first.commit - 1
    assert status.counters.synced_writes >= 1 and status.counters.entries_applied >= 1


async def test_write_batch_answers_each_command_in_order(stub: node_pb2_grpc.NodeStub) -> None:
    commands = [put(b"b%d" % n, b"v%d" % n, n) for n in range(1, 51)]
    before = (await stub.Status(node_pb2.StatusRequest())).groups[0].last_index
    response = await stub.WriteBatch(node_pb2.WriteBatchRequest(group_id=1, commands=commands))
    assert not response.HasField("error")
    after = (await stub.Status(node_pb2.StatusRequest())).groups[0].last_index
    assert after == before + 1, "fifty commands, one log entry"
    assert [outcome.code for outcome in response.outcomes] == [0] * 50
    revisions = [outcome.result.revision for outcome in response.outcomes]
    assert revisions == sorted(revisions) and len(set(revisions)) == 50
    # The same batch again: every command answered from its session, nothing applied twice.
    again = await stub.WriteBatch(node_pb2.WriteBatchRequest(group_id=1, commands=commands))
    assert [outcome.result for outcome in again.outcomes] == [
        replayed(o.result) for o in response.outcomes
    ]
    read = await stub.Read(node_pb2.ReadRequest(group_id=1, keys=[b"b1", b"b50"]))
    assert [kv.version for kv in read.kvs] == [1, 1]


async def test_write_batch_refuses_bad_commands_before_proposing_any(
    stub: node_pb2_grpc.NodeStub,
) -> None:
    commands = [put(b"ok", b"v", 1), put(b"", b"v", 2)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.WriteBatch(node_pb2.WriteBatchRequest(group_id=1, commands=commands))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    read = await stub.Read(node_pb2.ReadRequest(group_id=1, keys=[b"ok"]))
    assert list(read.kvs) == []
    unknown = await stub.WriteBatch(
        node_pb2.WriteBatchRequest(group_id=99, commands=[put(b"k", b"v", 3)])
    )
    assert unknown.error.HasField("unknown_group")


async def test_a_caller_cannot_send_a_ring_or_a_batch(stub: node_pb2_grpc.NodeStub) -> None:
    ring = kv_pb2.Command(ring=ring_of(7, {1: 1}))
    batch = kv_pb2.Command(batch=[put(b"k", b"v", 1)])
    for call in (
        stub.Write(node_pb2.WriteRequest(group_id=1, command=ring)),
        stub.WriteBatch(node_pb2.WriteBatchRequest(group_id=1, commands=[ring])),
        stub.Write(node_pb2.WriteRequest(group_id=1, command=batch)),
        stub.WriteBatch(node_pb2.WriteBatchRequest(group_id=1, commands=[batch])),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node's own" in (refused.value.details() or "")


async def test_a_caller_cannot_write_the_meta_group() -> None:
    # Found by tests/fault/test_fuzz.py: a put of garbage under the map's key
    # left every admin call failing on a map no node could read.
    async with one_node((0, 1)) as node:
        garbage = kv_pb2.Command(
            operations=[kv_pb2.Operation(put=kv_pb2.Put(key=CLUSTER_MAP_KEY, value=b"\xff"))]
        )
        for call in (
            node.stub.Write(node_pb2.WriteRequest(group_id=0, command=garbage)),
            node.stub.WriteBatch(node_pb2.WriteBatchRequest(group_id=0, commands=[garbage])),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "meta group" in (refused.value.details() or "")
        assert node.runtime.peer(0).machine.get(CLUSTER_MAP_KEY) is None


async def test_a_prepare_whose_locks_would_never_expire_is_refused() -> None:
    # Found by tests/fault/test_fuzz.py: deadline_ms = 2**64 - 1 locked a key for good.
    async with one_node((0, 1)) as node:
        prepare = kv_pb2.Command(
            client_id=7,
            seq=1,
            txn=kv_pb2.TxnStep(
                prepare=kv_pb2.TxnPrepare(
                    primary_key=b"k",
                    deadline_ms=2**64 - 1,
                    then_ops=[kv_pb2.Operation(put=kv_pb2.Put(key=b"k", value=b"v"))],
                )
            ),
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await node.stub.Write(node_pb2.WriteRequest(group_id=1, command=prepare))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "deadline_ms" in (refused.value.details() or "")
        assert not node.runtime.peer(1).machine.txns.locks


async def test_an_export_ends_with_an_error_once_its_group_left_the_node() -> None:
    """A catch-up reads each changed key as it is when its chunk is cut: once the
    replica was removed (its keys are dropped in the next round), every key
    would read as deleted, so the stream ends with an error instead."""
    async with one_node(GROUPS) as node:
        runtime = node.runtime
        await runtime.propose(1, kv_pb2.Command(ring=ring_of(1, {1: 1, 2: 1})))
        target_ring = ring_of(2, {1: 1, 2: 3})
        begin = kv_pb2.MigrateStep(epoch=2, source=1, target=2, driver=1, begin=target_ring)
        began = await runtime.propose(1, kv_pb2.Command(migrate=begin))
        assert began.migrate.applied, began
        old, new = build_ring(ring_of(1, {1: 1, 2: 1})), build_ring(target_ring)
        candidates = (b"key-%d" % n for n in range(2000))
        moving = [key for key in candidates if old.group_for(key) == 1 and new.group_for(key) == 2]
        moving = moving[:50]  # more chunks than the stream runs ahead of its reader
        assert len(moving) == 50
        for seq, key in enumerate(moving, 1):
            await runtime.propose(1, put(key, b"v", seq))  # marked: the catch-up's keys
        stream = node.stub.Export(
            node_pb2.ExportRequest(
                group_id=1, epoch=2, target=2, kind=node_pb2.EXPORT_CHANGES, chunk_keys=1
            )
        )
        chunks = stream.__aiter__()
        first = await anext(chunks)
        assert list(first.data.keys) == [min(moving)]
        runtime.remove_peer(1)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for chunk in chunks:
                assert not chunk.data.deleted, "a key of a dropped replica read as deleted"
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "left node 1" in (ended.value.details() or "")


@pytest.mark.parametrize("heartbeat", [0.0, 1.0])
async def test_a_long_scan_that_finds_nothing_sends_empty_chunks(
    heartbeat: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that the driver can tell a source that scans from one paused or cut off
    (``NodeGroupCalls.export``): past ``EXPORT_HEARTBEAT`` without a chunk, the
    scan sends an empty one, of the export's moment like the others."""
    monkeypatch.setattr(service_module, "EXPORT_HEARTBEAT", heartbeat)
    monkeypatch.setattr(export_module, "PAUSE_KEYS", 4)
    async with one_node(GROUPS) as node:
        runtime = node.runtime
        await runtime.propose(1, kv_pb2.Command(ring=ring_of(1, {1: 1, 2: 1})))
        target_ring = ring_of(2, {1: 1, 2: 3})
        old, new = build_ring(ring_of(1, {1: 1, 2: 1})), build_ring(target_ring)
        ours = [key for key in (b"key-%d" % n for n in range(400)) if old.group_for(key) == 1]
        staying = [key for key in ours if new.group_for(key) == 1][:40]
        moving = [key for key in ours if new.group_for(key) == 2][:3]
        for seq, key in enumerate([*staying, *moving], 1):
            await runtime.propose(1, put(key, b"v", seq))
        begin = kv_pb2.MigrateStep(epoch=2, source=1, target=2, driver=1, begin=target_ring)
        assert (await runtime.propose(1, kv_pb2.Command(migrate=begin))).migrate.applied
        request = node_pb2.ExportRequest(
            group_id=1, epoch=2, target=2, kind=node_pb2.EXPORT_KEYS, chunk_keys=1000
        )
        chunks = [chunk async for chunk in node.stub.Export(request)]
        assert sorted(key for chunk in chunks for key in chunk.data.keys) == sorted(moving)
        empty = [chunk for chunk in chunks if not chunk.HasField("data")]
        if heartbeat:
            assert not empty, "a scan as short as this one sends no empty chunk"
        else:
            assert len(empty) >= 10, "one per list of 4 keys scanned"
        assert len({(chunk.revision, chunk.key_count) for chunk in chunks}) == 1


async def test_an_export_says_whether_its_source_is_frozen() -> None:
    """So that the driver never holds a switch's copies back by the migration's limit,
    also a switch resumed as a copy after a crash lost its record."""
    async with one_node(GROUPS) as node:
        runtime = node.runtime
        await runtime.propose(1, kv_pb2.Command(ring=ring_of(1, {1: 1, 2: 1})))
        begin = kv_pb2.MigrateStep(
            epoch=2, source=1, target=2, driver=1, begin=ring_of(2, {1: 1, 2: 3})
        )
        assert (await runtime.propose(1, kv_pb2.Command(migrate=begin))).migrate.applied

        async def exported() -> list[bool]:
            request = node_pb2.ExportRequest(
                group_id=1, epoch=2, target=2, kind=node_pb2.EXPORT_CHANGES
            )
            return [chunk.frozen async for chunk in node.stub.Export(request)]

        assert await exported() == [False]
        freeze = kv_pb2.MigrateStep(epoch=2, source=1, target=2, driver=1, freeze=True)
        assert (await runtime.propose(1, kv_pb2.Command(migrate=freeze))).migrate.applied
        assert await exported() == [True]


async def importing_keys(runtime: NodeRuntime) -> list[bytes]:
    """Group 2 takes copies of group 1's keys moving to it and does not serve them
    yet (ARC_IN_IMPORTING); two of those keys."""
    ring, target_ring = ring_of(1, {1: 1, 2: 1}), ring_of(2, {1: 1, 2: 3})
    await runtime.propose(2, kv_pb2.Command(ring=ring))
    begin = kv_pb2.MigrateStep(epoch=2, source=1, target=2, driver=1, begin=target_ring)
    assert (await runtime.propose(2, kv_pb2.Command(migrate=begin))).migrate.applied
    old, new = build_ring(ring), build_ring(target_ring)
    candidates = (b"key-%d" % n for n in range(1000))
    found = [key for key in candidates if old.group_for(key) == 1 and new.group_for(key) == 2]
    return found[:2]


async def importing_key(runtime: NodeRuntime) -> bytes:
    return (await importing_keys(runtime))[0]


async def activate_after(runtime: NodeRuntime, seconds: float) -> None:
    await asyncio.sleep(seconds)
    activate = kv_pb2.MigrateStep(epoch=2, source=1, target=2, driver=1, activate=True)
    assert (await runtime.propose(2, kv_pb2.Command(migrate=activate))).migrate.applied


@pytest.fixture
def woken_by_entries_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A held request looks again when its group applies entries, and not on its own
    (as it does every 0.1 s, to see a lead lost), so a test sees the wake-up."""
    monkeypatch.setattr("shardkv.node.service._HOLD_RECHECK", 60.0)


@pytest.mark.usefixtures("woken_by_entries_only")
async def test_a_leader_holds_a_write_of_keys_it_imports_until_it_serves_them() -> None:
    """Writes that reach the target during their keys' switch (the source sealed them
    and named the target) wait there for the activation and are applied, rather
    than refused and sent again by the router."""
    async with one_node(GROUPS) as node:
        runtime = node.runtime
        keys = await importing_keys(runtime)
        loop = asyncio.get_running_loop()
        started = loop.time()
        activating = asyncio.create_task(activate_after(runtime, 0.3))
        answer = await node.stub.WriteBatch(
            node_pb2.WriteBatchRequest(
                group_id=2, commands=[put(key, b"v", seq) for seq, key in enumerate(keys, 1)]
            ),
            timeout=5,
        )
        held = loop.time() - started
        await activating
        assert 0.3 <= held < IMPORT_HOLD, "woken by the activation, not the hold's end"
        for outcome in answer.outcomes:
            assert outcome.code == 0 and outcome.result.results[0].succeeded, outcome
        assert [runtime.peer(2).machine.get(key).value for key in keys] == [b"v", b"v"]


async def test_a_batch_that_also_writes_keys_served_now_is_not_held() -> None:
    """Holding it would hold the answers of its other writes too: its moving key is
    refused as before, at once, and the router sends it again."""
    async with one_node(GROUPS) as node:
        runtime = node.runtime
        key = await importing_key(runtime)
        ring = build_ring(ring_of(1, {1: 1, 2: 1}))
        served = next(k for k in (b"other-%d" % n for n in range(1000)) if ring.group_for(k) == 2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        activating = asyncio.create_task(activate_after(runtime, 0.5))
        answer = await node.stub.WriteBatch(
            node_pb2.WriteBatchRequest(
                group_id=2, commands=[put(key, b"v", 1), put(served, b"w", 2)]
            ),
            timeout=5,
        )
        assert loop.time() - started < 0.5
        moving, other = answer.outcomes
        assert moving.result.wrong_group.key == key
        assert other.result.results[0].succeeded
        await activating


@pytest.mark.usefixtures("woken_by_entries_only")
@pytest.mark.parametrize("call", ["read", "write"])
async def test_reads_and_single_writes_are_held_the_same_way(call: str) -> None:
    async with one_node(GROUPS) as node:
        runtime = node.runtime
        key = await importing_key(runtime)
        loop = asyncio.get_running_loop()
        started = loop.time()
        activating = asyncio.create_task(activate_after(runtime, 0.3))
        if call == "read":
            read = await node.stub.Read(node_pb2.ReadRequest(group_id=2, keys=[key]), timeout=5)
            assert not read.HasField("error"), read
            assert list(read.kvs) == []
        else:
            written = await node.stub.Write(
                node_pb2.WriteRequest(group_id=2, command=put(key, b"v", 1)), timeout=5
            )
            assert written.result.results[0].succeeded, written
        held = loop.time() - started
        await activating
        assert 0.3 <= held < IMPORT_HOLD, "woken by the activation, not the hold's end"


async def test_a_held_write_is_refused_as_before_when_the_move_does_not_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hold is short and bounded: without the activation, the key is refused with
    WRONG_GROUP after it, and a read of it too; the router goes on from there."""
    monkeypatch.setattr("shardkv.node.service.IMPORT_HOLD", 0.2)
    async with one_node(GROUPS) as node:
        runtime = node.runtime
        key = await importing_key(runtime)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await node.stub.WriteBatch(
            node_pb2.WriteBatchRequest(group_id=2, commands=[put(key, b"v", 1)]), timeout=5
        )
        held = loop.time() - started
        assert 0.2 <= held < 1.0, held
        assert answer.outcomes[0].result.wrong_group.key == key
        single = await node.stub.Write(
            node_pb2.WriteRequest(group_id=2, command=put(key, b"v", 2)), timeout=5
        )
        assert single.result.wrong_group.key == key
        started = loop.time()
        read = await node.stub.Read(node_pb2.ReadRequest(group_id=2, keys=[key]), timeout=5)
        assert loop.time() - started >= 0.2
        assert read.error.wrong_group.key == key
        assert runtime.peer(2).machine.get(key) is None


async def test_a_hold_never_outlasts_the_callers_deadline() -> None:
    async with one_node(GROUPS) as node:
        key = await importing_key(node.runtime)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await node.stub.Write(
            node_pb2.WriteRequest(group_id=2, command=put(key, b"v", 1)), timeout=0.3
        )
        assert loop.time() - started < 0.3
        assert answer.result.wrong_group.key == key


async def test_a_hold_ends_soon_after_the_lead_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with no entry applied: the held request looks at the lead again every
    0.1 s, and goes on (to be refused) once this node no longer leads."""
    monkeypatch.setattr("shardkv.node.service.IMPORT_HOLD", 30.0)
    async with one_node(GROUPS) as node:
        key = await importing_key(node.runtime)
        loop = asyncio.get_running_loop()
        started = loop.time()
        write = asyncio.ensure_future(
            node.stub.Write(
                node_pb2.WriteRequest(group_id=2, command=put(key, b"v", 1)), timeout=60
            )
        )
        await asyncio.sleep(0.3)
        assert not write.done(), "held"
        # As a round that steps down sets it (and nothing applies meanwhile).
        monkeypatch.setattr(node.runtime.peer(2), "role", Role.FOLLOWER)
        await write
        assert loop.time() - started < 1.0


async def test_a_write_of_keys_it_would_hold_is_checked_first() -> None:
    """An invalid write is refused at once, not after the hold."""
    async with one_node(GROUPS) as node:
        key = await importing_key(node.runtime)
        # Every key of it is held, and its session is impossible.
        invalid = kv_pb2.Command(
            client_id=42,
            seq=1,
            acked_seq=1,
            operations=[kv_pb2.Operation(put=kv_pb2.Put(key=key))],
        )
        loop = asyncio.get_running_loop()
        calls = (
            lambda: node.stub.WriteBatch(
                node_pb2.WriteBatchRequest(group_id=2, commands=[invalid]), timeout=5
            ),
            lambda: node.stub.Write(node_pb2.WriteRequest(group_id=2, command=invalid), timeout=5),
        )
        for call in calls:
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert loop.time() - started < IMPORT_HOLD / 2


async def test_the_agent_bootstraps_the_map_and_puts_every_group_on_its_ring() -> None:
    async with one_node((0, 1, 2), with_agent=True) as node:
        async with asyncio.timeout(5):
            while True:
                status = await node.stub.Status(node_pb2.StatusRequest())
                if all(group.epoch == 1 for group in status.groups if group.group_id != 0):
                    break
                await asyncio.sleep(0.01)
        answer = await node.stub.GetClusterMap(node_pb2.GetClusterMapRequest())
        assert answer.map.ring == ring_of(1, {1: 1, 2: 1})
        assert answer.map.version == 1
        assert [group.group_id for group in answer.map.groups] == [0, 1, 2]
        assert [n.address for n in answer.map.nodes] == ["127.0.0.1:1"]
        ring = build_ring(answer.map.ring)
        keys = [b"key-%d" % n for n in range(20)]
        mine = next(key for key in keys if ring.group_for(key) == 1)
        theirs = next(key for key in keys if ring.group_for(key) == 2)
        written = await node.stub.Write(
            node_pb2.WriteRequest(group_id=1, command=put(theirs, b"v", 1))
        )
        assert written.result.wrong_group == kv_pb2.WrongGroup(group_id=1, epoch=1, key=theirs)
        read = await node.stub.Read(node_pb2.ReadRequest(group_id=1, keys=[mine, theirs]))
        assert read.error.wrong_group.key == theirs
        written = await node.stub.Write(
            node_pb2.WriteRequest(group_id=1, command=put(mine, b"v", 2))
        )
        assert written.result.results[0].succeeded


async def test_the_agent_learns_a_map_its_meta_replica_applied_without_waiting_its_interval() -> (
    None
):
    # An interval no test waits for: only the entries applied wake the agent.
    async with one_node((META_GROUP,), with_agent=True, agent_interval=3600) as node:
        agent = node.agent
        assert agent is not None
        async with asyncio.timeout(5):
            while agent.map is None:  # its first pass writes the initial map
                await asyncio.sleep(0.005)
        stored = agent.map.SerializeToString()
        newer = cluster_pb2.ClusterMap.FromString(stored)
        newer.version += 1
        # What a driver registers: told of each new map, once it is taken (a
        # listener that fails keeps neither the map nor the others from it).
        told: list[int] = []

        def failing() -> None:
            raise RuntimeError("a listener's bug")

        agent.on_learn(failing)
        agent.on_learn(lambda: told.append(agent.map.version if agent.map else 0))
        # Written past the agent (as the meta leader of another node would).
        cas = kv_pb2.CompareAndSet(
            key=CLUSTER_MAP_KEY, expected=stored, value=newer.SerializeToString()
        )
        result = await node.runtime.propose(
            META_GROUP, kv_pb2.Command(operations=[kv_pb2.Operation(compare_and_set=cas)])
        )
        assert result.results[0].succeeded, result
        async with asyncio.timeout(2):
            while agent.map.version != newer.version:
                await asyncio.sleep(0.005)
        assert told == [newer.version]
        agent.learn(newer)  # the same map again, or an older one: nobody is told
        agent.learn(cluster_pb2.ClusterMap.FromString(stored))
        assert told == [newer.version]
