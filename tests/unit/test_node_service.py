"""The node's gRPC service over a real socket, on a one-node runtime.

The runtime runs its real loop on a short tick; what is under test here is
the gRPC face: status codes, routing errors in the body, paging, retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from shardkv.node.peer import Peer, PeerOptions
from shardkv.node.runtime import NodeRuntime
from shardkv.node.service import NodeService
from shardkv.node.transport_memory import MemoryNetwork, MemoryTransport
from shardkv.raft import Role
from shardkv.storage import GroupStorage, MemoryEngine
from shardkv.v1 import kv_pb2, node_pb2, node_pb2_grpc

GROUPS = (1, 2)


@pytest.fixture
async def stub() -> AsyncIterator[node_pb2_grpc.NodeStub]:
    engine = MemoryEngine()
    for group_id in GROUPS:
        GroupStorage(engine, group_id).bootstrap((1,))
    options = PeerOptions(election_ticks=3, heartbeat_ticks=1)
    peers = {group_id: Peer(engine, group_id, 1, options) for group_id in GROUPS}
    transport = MemoryTransport(1, MemoryNetwork())
    runtime = NodeRuntime(1, engine, transport, peers, tick_interval=0.005)
    loop_task = asyncio.create_task(runtime.run())
    server = grpc.aio.server()
    node_pb2_grpc.add_NodeServicer_to_server(NodeService(runtime, {1: "self"}), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with asyncio.timeout(5):
        while not all(peer.raw.raft.role == Role.LEADER for peer in peers.values()):
            await asyncio.sleep(0.005)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield node_pb2_grpc.NodeStub(channel)
    await channel.close()
    await server.stop(None)
    runtime.stop()
    await loop_task
    await transport.close()
    engine.close()


def put(key: bytes, value: bytes, seq: int) -> kv_pb2.Command:
    return kv_pb2.Command(
        client_id=42, seq=seq, operations=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))]
    )


async def test_write_then_read_and_exactly_once_retry(stub: node_pb2_grpc.NodeStub) -> None:
    first = await stub.Write(node_pb2.WriteRequest(group_id=1, command=put(b"k", b"v", 1)))
    assert not first.HasField("error")
    retried = await stub.Write(node_pb2.WriteRequest(group_id=1, command=put(b"k", b"v", 1)))
    assert retried.result == first.result
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
