"""The router in front of real node processes: routing, bad input, routers and nodes going away.

Each test starts 3 ``shardkv-node`` processes and one or two
``shardkv-router`` processes (tests/integration/routers.py) and talks to the
routers over gRPC, as the client library does.
"""

from __future__ import annotations

import signal
import time

import grpc
import pytest

from shardkv.limits import MAX_KEY_BYTES, MAX_OPERATIONS, MAX_VALUE_BYTES
from shardkv.v1 import kv_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import Cluster, wait_until
from tests.integration.routers import RouterProcess, wait_ready

pytestmark = pytest.mark.integration

DEADLINE = 15.0


def put_many(stub: router_pb2_grpc.RouterStub, items: dict[bytes, bytes]) -> None:
    request = router_pb2.PutManyRequest(
        items=[kv_pb2.KeyValue(key=key, value=value) for key, value in items.items()]
    )
    response = stub.PutMany(request, timeout=DEADLINE)
    assert response.written == len(items)


def scan_all(stub: router_pb2_grpc.RouterStub, **bounds: bytes) -> list[tuple[bytes, bytes]]:
    found: list[tuple[bytes, bytes]] = []
    continuation = b""
    for _ in range(1000):
        page = stub.ScanKeys(
            router_pb2.ScanKeysRequest(limit=97, continuation=continuation, **bounds),
            timeout=DEADLINE,
        )
        found.extend((kv.key, kv.value) for kv in page.kvs)
        continuation = page.continuation
        if not continuation:
            return found
    raise AssertionError("the scan did not end")


def test_keys_spread_over_every_group_and_read_back_every_way(
    routed: tuple[Cluster, RouterProcess],
) -> None:
    cluster, router = routed
    stub = router.stub()
    items = {b"user/%05d" % number: b"value-%d" % number for number in range(2000)}
    put_many(stub, items)
    status = wait_ready(stub, cluster.group_ids)
    counts = {
        group.group_id: group.key_count
        for node in status.nodes
        for group in node.status.groups
        if group.role == "leader" and group.group_id in cluster.group_ids
    }
    assert set(counts) == set(cluster.group_ids)
    assert all(count > 200 for count in counts.values()), counts
    assert sum(counts.values()) == 2000
    assert sum(share.share for share in status.shares) == pytest.approx(1.0)

    for key in (b"user/00000", b"user/01234", b"user/01999"):
        assert stub.Get(router_pb2.GetRequest(key=key), timeout=DEADLINE).kv.value == items[key]
    assert not stub.Get(router_pb2.GetRequest(key=b"user/missing"), timeout=DEADLINE).HasField("kv")
    many = stub.GetMany(
        router_pb2.GetManyRequest(keys=[*list(items)[:500], b"nope"]), timeout=DEADLINE
    )
    assert [(kv.key, kv.value) for kv in many.kvs] == list(items.items())[:500]
    assert scan_all(stub) == sorted(items.items())
    assert scan_all(stub, prefix=b"user/01") == sorted(
        (key, value) for key, value in items.items() if key.startswith(b"user/01")
    )
    assert scan_all(stub, start=b"user/00100", end=b"user/00200") == sorted(
        (key, value) for key, value in items.items() if b"user/00100" <= key < b"user/00200"
    )

    # Single-key writes, with their answers.
    put = stub.Put(router_pb2.PutRequest(key=b"user/00000", value=b"new"), timeout=DEADLINE)
    assert (put.kv.version, put.kv.value) == (2, b"new")
    assert stub.Delete(router_pb2.DeleteRequest(key=b"user/00001"), timeout=DEADLINE).deleted
    assert not stub.Delete(router_pb2.DeleteRequest(key=b"user/00001"), timeout=DEADLINE).deleted
    absent = router_pb2.CompareAndSetRequest(key=b"fresh", value=b"1")
    assert stub.CompareAndSet(absent, timeout=DEADLINE).succeeded
    assert not stub.CompareAndSet(absent, timeout=DEADLINE).succeeded
    swap = router_pb2.CompareAndSetRequest(key=b"fresh", expected=b"1", value=b"2")
    assert stub.CompareAndSet(swap, timeout=DEADLINE).succeeded


def test_a_retried_write_applies_once(routed: tuple[Cluster, RouterProcess]) -> None:
    _, router = routed
    stub = router.stub()
    session = router_pb2.Session(client_id=77, seq=1)
    request = router_pb2.PutRequest(key=b"counted", value=b"x", session=session)
    first = stub.Put(request, timeout=DEADLINE)
    again = stub.Put(request, timeout=DEADLINE)
    assert first.kv.version == again.kv.version == 1
    later = router_pb2.PutRequest(
        key=b"counted", value=b"y", session=router_pb2.Session(client_id=77, seq=2, acked_seq=1)
    )
    assert stub.Put(later, timeout=DEADLINE).kv.version == 2
    assert stub.Get(router_pb2.GetRequest(key=b"counted"), timeout=DEADLINE).kv.version == 2


def test_bad_input_to_every_rpc_is_invalid_argument_and_nothing_falls_over(
    routed: tuple[Cluster, RouterProcess],
) -> None:
    cluster, router = routed
    stub = router.stub()
    big_key = b"k" * (MAX_KEY_BYTES + 1)
    big_value = b"v" * (MAX_VALUE_BYTES + 1)
    too_many = [kv_pb2.KeyValue(key=b"k%d" % n, value=b"") for n in range(MAX_OPERATIONS + 1)]
    calls = [
        (stub.Get, router_pb2.GetRequest(key=b""), "empty"),
        (stub.Get, router_pb2.GetRequest(key=big_key), "at most"),
        (stub.Put, router_pb2.PutRequest(key=b"", value=b"v"), "empty"),
        (stub.Put, router_pb2.PutRequest(key=b"k", value=big_value), "split it"),
        (stub.Put, router_pb2.PutRequest(key=big_key, value=b"v"), "at most"),
        (
            stub.Put,
            router_pb2.PutRequest(
                key=b"k", value=b"v", session=router_pb2.Session(client_id=1, seq=3, acked_seq=3)
            ),
            "acked_seq",
        ),
        (stub.Delete, router_pb2.DeleteRequest(key=b""), "empty"),
        (stub.CompareAndSet, router_pb2.CompareAndSetRequest(key=b"", value=b"v"), "empty"),
        (
            stub.CompareAndSet,
            router_pb2.CompareAndSetRequest(key=b"k", expected=big_value, value=b"v"),
            "split it",
        ),
        (stub.PutMany, router_pb2.PutManyRequest(items=too_many), "at most"),
        (
            stub.PutMany,
            router_pb2.PutManyRequest(items=[kv_pb2.KeyValue(key=b"", value=b"v")]),
            "empty",
        ),
        (stub.GetMany, router_pb2.GetManyRequest(keys=[b"fine", b""]), "empty"),
        (stub.ScanKeys, router_pb2.ScanKeysRequest(limit=1_000_000), "page size"),
        (
            stub.ScanKeys,
            router_pb2.ScanKeysRequest(prefix=b"a/", continuation=b"b/x"),
            "continuation",
        ),
    ]
    for method, request, reason in calls:
        with pytest.raises(grpc.RpcError) as refused:
            method(request, timeout=DEADLINE)
        error = refused.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, error)  # type: ignore[attr-defined]
        assert reason in (error.details() or ""), (request, error.details())  # type: ignore[attr-defined]
    # Garbage bytes where a message should be: refused, and the router lives on.
    channel = grpc.insecure_channel(router.address)
    raw = channel.unary_unary("/shardkv.v1.Router/Put")
    with pytest.raises(grpc.RpcError):
        raw(b"\xff\xff\xff not a protobuf", timeout=DEADLINE)
    channel.close()
    assert router.alive()
    stub.Put(router_pb2.PutRequest(key=b"after", value=b"fine"), timeout=DEADLINE)
    for node_id in cluster.running():
        assert cluster.status(node_id) is not None
        assert cluster.processes[node_id].poll() is None


def test_two_routers_and_a_router_restart(routed: tuple[Cluster, RouterProcess]) -> None:
    cluster, first = routed
    second = RouterProcess(cluster, "router-2")
    try:
        second.start()
        first.stub().Put(router_pb2.PutRequest(key=b"shared", value=b"1"), timeout=DEADLINE)
        seen = second.stub().Get(router_pb2.GetRequest(key=b"shared"), timeout=DEADLINE)
        assert seen.kv.value == b"1"
        second.stub().Put(router_pb2.PutRequest(key=b"shared", value=b"2"), timeout=DEADLINE)
        first.kill()
        first.start()
        # The restarted router learnt the cluster anew; nothing was kept.
        seen = first.stub().Get(router_pb2.GetRequest(key=b"shared"), timeout=DEADLINE)
        assert (seen.kv.value, seen.kv.version) == (b"2", 2)
    finally:
        second.close()


def test_a_node_killed_and_back(routed: tuple[Cluster, RouterProcess]) -> None:
    cluster, router = routed
    stub = router.stub()
    leaders = cluster.wait_leaders()
    victim = leaders[1]
    acknowledged: dict[bytes, bytes] = {}
    for number in range(150):
        if number == 50:
            cluster.kill(victim)
        key = b"w/%04d" % number
        stub.Put(router_pb2.PutRequest(key=key, value=key), timeout=DEADLINE)
        acknowledged[key] = key
    many = stub.GetMany(router_pb2.GetManyRequest(keys=list(acknowledged)), timeout=DEADLINE)
    assert {kv.key: kv.value for kv in many.kvs} == acknowledged
    cluster.start(victim)

    def victim_report() -> router_pb2.NodeReport | None:
        status = wait_ready(stub, cluster.group_ids)
        report = next(report for report in status.nodes if report.node_id == victim)
        # The router redials a node that was down after a backoff of up to a second.
        return report if not report.error else None

    report = wait_until(f"the router to reach node {victim} again", victim_report)
    assert {group.group_id for group in report.status.groups} == {0, *cluster.group_ids}


def test_a_batch_answers_each_request_as_if_sent_alone(
    routed: tuple[Cluster, RouterProcess],
) -> None:
    _, router = routed
    stub = router.stub()
    session = router_pb2.Session(client_id=91, seq=1)
    requests = [
        router_pb2.Request(put=router_pb2.PutRequest(key=b"b/1", value=b"one", session=session)),
        router_pb2.Request(put=router_pb2.PutRequest(key=b"b/2", value=b"two")),
        router_pb2.Request(get=router_pb2.GetRequest(key=b"b/missing")),
        router_pb2.Request(put=router_pb2.PutRequest(key=b"", value=b"bad")),
        router_pb2.Request(
            compare_and_set=router_pb2.CompareAndSetRequest(key=b"b/3", value=b"three")
        ),
        router_pb2.Request(delete=router_pb2.DeleteRequest(key=b"b/missing")),
        router_pb2.Request(),
    ]
    response = stub.Batch(router_pb2.BatchRequest(requests=requests), timeout=DEADLINE)
    codes = [item.code for item in response.responses]
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert codes == [0, 0, 0, invalid, 0, 0, invalid]
    assert "empty" in response.responses[3].message
    assert response.responses[0].put.kv.version == 1
    assert not response.responses[2].get.HasField("kv")
    assert response.responses[4].compare_and_set.succeeded
    assert not response.responses[5].delete.deleted
    # The same session again: answered from it, not applied twice.
    again = stub.Batch(router_pb2.BatchRequest(requests=requests[:1]), timeout=DEADLINE)
    assert again.responses[0].put.kv.version == 1
    reads = stub.Batch(
        router_pb2.BatchRequest(
            requests=[
                router_pb2.Request(get=router_pb2.GetRequest(key=key))
                for key in (b"b/1", b"b/2", b"b/3")
            ]
        ),
        timeout=DEADLINE,
    )
    assert [item.get.kv.value for item in reads.responses] == [b"one", b"two", b"three"]


def test_a_group_without_quorum_is_unavailable_with_what_was_tried(
    routed: tuple[Cluster, RouterProcess],
) -> None:
    cluster, router = routed
    stub = router.stub()
    stub.Put(router_pb2.PutRequest(key=b"before", value=b"1"), timeout=DEADLINE)
    survivor, *others = cluster.running()
    for node_id in others:
        cluster.kill(node_id)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Put(router_pb2.PutRequest(key=b"k", value=b"v"), timeout=3.0)
    error = refused.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    assert "no reachable leader" in details and "tried" in details, details
    assert router.alive() and cluster.processes[survivor].poll() is None


def test_a_paused_leader_stalls_writes_no_longer_than_one_attempt(
    routed: tuple[Cluster, RouterProcess],
) -> None:
    cluster, router = routed
    stub = router.stub()
    victim = cluster.wait_leaders()[1]
    process = cluster.processes[victim]
    worst = 0.0
    acknowledged: dict[bytes, bytes] = {}
    try:
        for number in range(60):
            if number == 10:
                process.send_signal(signal.SIGSTOP)
                paused_at = time.monotonic()
            if number > 10 and time.monotonic() - paused_at > 4.0:
                process.send_signal(signal.SIGCONT)
            key = b"paused/%03d" % number
            started = time.monotonic()
            stub.Put(router_pb2.PutRequest(key=key, value=key), timeout=DEADLINE)
            worst = max(worst, time.monotonic() - started)
            acknowledged[key] = key
    finally:
        process.send_signal(signal.SIGCONT)
    assert worst < 4.0, f"a write waited {worst:.1f} s behind a paused leader"
    many = stub.GetMany(router_pb2.GetManyRequest(keys=list(acknowledged)), timeout=DEADLINE)
    assert {kv.key: kv.value for kv in many.kvs} == acknowledged
