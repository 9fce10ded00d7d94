"""The router during a ring change: the routing it keeps, waiting for the next map, scans
that meet keys in transit, and ``ChangeRing`` and ``ChangePlacement`` forwarded to the meta
group.

The router's ``Topology`` is given maps by hand (no polling) and its node stubs
are swapped for ``FakeNode``, which answers from queues the test fills.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from router.groups import GroupUnavailable, Overloaded, Reroute
from router.service import RouterService
from router.topology import Topology
from shardkv.ring import ring_of
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, router_pb2, router_pb2_grpc


class FakeNode:
    """One node that hosts every group; each method answers with what the test queued."""

    def __init__(self) -> None:
        self.requests: dict[str, list[Any]] = defaultdict(list)
        # Method -> answers to give, first first (an exception is raised).
        self.answers: dict[str, list[Any]] = defaultdict(list)

    async def _answer(self, method: str, request: Any, default: Any) -> Any:
        self.requests[method].append(request)
        answer = self.answers[method].pop(0) if self.answers[method] else default
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def ChangeRing(self, request: Any, timeout: float) -> node_pb2.ChangeRingResponse:
        response: node_pb2.ChangeRingResponse = await self._answer(
            "ChangeRing", request, node_pb2.ChangeRingResponse()
        )
        return response

    async def ChangePlacement(
        self, request: Any, timeout: float
    ) -> node_pb2.ChangePlacementResponse:
        response: node_pb2.ChangePlacementResponse = await self._answer(
            "ChangePlacement", request, node_pb2.ChangePlacementResponse()
        )
        return response

    async def Scan(self, request: Any, timeout: float) -> node_pb2.ScanResponse:
        default = node_pb2.ScanResponse(
            kvs=[kv_pb2.KeyValue(key=b"key-%d" % request.group_id, value=b"v")]
        )
        response: node_pb2.ScanResponse = await self._answer("Scan", request, default)
        return response


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


def cluster_map(version: int, *, migrating: bool = False) -> cluster_pb2.ClusterMap:
    """Groups 1 and 2 on the ring of epoch 1; with ``migrating``, a move to group 3."""
    the_map = cluster_pb2.ClusterMap(
        cluster_id="test", version=version, ring=ring_of(1, {1: 1, 2: 1})
    )
    the_map.nodes.add(node_id=1, address="fake:1", state="up")
    for group_id in (0, 1, 2, 3):
        the_map.groups.add(group_id=group_id, replicas=[1], weight=1 if group_id else 0)
    if migrating:
        the_map.migration.target.CopyFrom(ring_of(2, {1: 1, 2: 1, 3: 1}))
        the_map.migration.moves.add(source=1, target=3, phase=cluster_pb2.MOVE_COPYING)
        the_map.migration.reason = "add-group 3"
    return the_map


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
async def service(node: FakeNode) -> AsyncIterator[RouterService]:
    topology = Topology(["fake:1"])
    topology.stub = lambda node_id: node  # type: ignore[assignment,method-assign,return-value]
    topology.learn(cluster_map(5))
    service = RouterService(topology)
    yield service
    await service.close()


def _deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_the_routing_is_the_maps_and_changed_wakes_on_a_newer_map() -> None:
    topology = Topology(["fake:1"])
    topology.learn(cluster_map(5, migrating=True))
    assert topology.ring is not None and topology.current_ring() is topology.ring
    assert (topology.epoch, topology.version, topology.ring.groups) == (1, 5, (1, 2, 3))
    assert not await topology.changed(0.01)
    loop = asyncio.get_running_loop()
    # An older map is not taken and wakes no one; the newer one does.
    loop.call_later(0.01, topology.learn, cluster_map(4))
    loop.call_later(0.03, topology.learn, cluster_map(6))
    started = loop.time()
    assert await topology.changed(5.0)
    assert 0.02 < loop.time() - started < 1.0
    assert topology.version == 6
    assert topology.ring.groups == (1, 2), "the migration is over in version 6"


async def test_a_move_a_source_said_it_sealed_stays_routed_to_its_target_across_maps() -> None:
    """Once a source answered ``moved_to``, a newer map of the migration that does not
    show the move active yet (any move's progress bumps the version) keeps sending
    the keys to the target, not back to the source that refuses them."""
    topology = Topology(["fake:1"])
    topology.learn(cluster_map(5, migrating=True))
    assert topology.moved(1, 3, 2)
    assert topology.current_ring().active == {(1, 3)}
    topology.learn(cluster_map(6, migrating=True))
    assert topology.version == 6
    assert topology.current_ring().active == {(1, 3)}
    topology.learn(cluster_map(7))  # the migration is over: the ring says it all
    assert topology.current_ring().active == frozenset()


async def test_a_key_whose_move_is_switching_goes_to_its_target_alone(
    service: RouterService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in the group's batch: the target holds a call of such keys until it serves
    them, and would hold every write of a batch with it."""
    topology = service.topology
    topology.learn(cluster_map(6, migrating=True))
    assert topology.moved(1, 3, 2)
    ring = topology.current_ring()
    key = next(k for k in (b"key-%d" % n for n in range(1000)) if ring.route(k) == (3, True))
    sent: list[tuple[str, int, int]] = []

    async def write_batch(
        group_id: int, commands: list[kv_pb2.Command], deadline: float
    ) -> list[kv_pb2.CommandResult]:
        sent.append(("write", group_id, len(commands)))
        return [kv_pb2.CommandResult(revision=7)]

    async def read_batch(
        group_id: int, keys: list[bytes], deadline: float
    ) -> list[kv_pb2.KeyValue | None]:
        sent.append(("read", group_id, len(keys)))
        return [kv_pb2.KeyValue(key=keys[0], value=b"v")]

    class NoBatcher:
        """The group's batcher: asked only whether it is full, never given the key."""

        def __init__(self, full: Overloaded | None) -> None:
            self.full = full

        def overloaded(self) -> Overloaded | None:
            return self.full

        async def call(self, item: object, deadline: float) -> None:
            raise AssertionError("a switching key went into its group's batch")

    batcher = NoBatcher(None)
    monkeypatch.setattr(service, "_write_batch", write_batch)
    monkeypatch.setattr(service, "_read_batch", read_batch)
    monkeypatch.setattr(service, "_writer", lambda group_id: batcher)
    monkeypatch.setattr(service, "_reader", lambda group_id: batcher)
    command = kv_pb2.Command(operations=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=b"v"))])
    assert (await service._write_key(key, command, _deadline())).revision == 7
    assert (await service._read_key(key, _deadline())) == kv_pb2.KeyValue(key=key, value=b"v")
    assert sent == [("write", 3, 1), ("read", 3, 1)]

    # Alone or not, a group with too much waiting at the router refuses at once.
    batcher.full = Overloaded("group 3 has 4096 requests waiting")
    with pytest.raises(Overloaded):
        await service._write_key(key, command, _deadline())
    with pytest.raises(Overloaded):
        await service._read_key(key, _deadline())
    assert len(sent) == 2


async def test_a_sealed_source_of_another_migration_moves_nothing() -> None:
    """A ``moved_to`` answered in the migration to another epoch than the one our map
    shows (a map behind, or ahead of, that group) routes nothing on its word."""
    topology = Topology(["fake:1"])
    topology.learn(cluster_map(5, migrating=True))
    assert not topology.moved(1, 3, 3)
    assert topology.current_ring().active == frozenset()
    topology.learn(cluster_map(6))  # no migration at all
    assert not topology.moved(1, 3, 2)


async def test_after_a_reroute_the_router_asks_for_the_map_and_goes_on_when_it_arrives(
    service: RouterService,
) -> None:
    topology = service.topology
    refusal = Reroute(kv_pb2.WrongGroup(group_id=1, epoch=2))
    loop = asyncio.get_running_loop()
    # A move advanced: the map's version rises, its epoch does not.
    loop.call_later(0.02, topology.learn, cluster_map(6, migrating=True))
    started = loop.time()
    await service._after_reroute(refusal, attempt=20)
    assert loop.time() - started < 0.4, "woken by the map, not the 0.5 s backoff"
    assert topology._poke.is_set(), "a poll for the map was asked for"
    # With no newer map, the backoff: 0.01 s doubled per attempt.
    started = loop.time()
    await service._after_reroute(refusal, attempt=2)
    assert 0.03 < loop.time() - started < 0.3


async def test_a_moved_to_of_another_migration_waits_for_the_map(
    service: RouterService,
) -> None:
    """The refusal's own epoch is what ``moved`` checks: a source sealed in a migration
    to epoch 3 says nothing about ours (to epoch 2), so the router backs off."""
    topology = service.topology
    topology.learn(cluster_map(6, migrating=True))
    other = Reroute(kv_pb2.WrongGroup(group_id=1, epoch=3, moved_to=3))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await service._after_reroute(other, attempt=0)
    assert loop.time() - started >= 0.009, "a backoff, not at once"
    assert topology.current_ring().active == frozenset()
    ours = Reroute(kv_pb2.WrongGroup(group_id=1, epoch=2, moved_to=3))
    started = loop.time()
    await service._after_reroute(ours, attempt=0)
    assert loop.time() - started < 0.009
    assert topology.current_ring().active == {(1, 3)}


async def test_a_scan_goes_to_the_migrations_targets_and_retries_a_wrong_group(
    service: RouterService, node: FakeNode
) -> None:
    service.topology.learn(cluster_map(6, migrating=True))
    node.answers["Scan"] = [
        node_pb2.ScanResponse(
            error=node_pb2.GroupError(wrong_group=kv_pb2.WrongGroup(group_id=1, epoch=2))
        )
    ]
    page = await service.scan(b"", None, 10, _deadline())
    assert [kv.key for kv in page.kvs] == [b"key-1", b"key-2", b"key-3"]
    asked = [request.group_id for request in node.requests["Scan"]]
    assert sorted(asked[:3]) == [1, 2, 3] and sorted(asked[3:]) == [1, 2, 3]


async def test_a_scan_that_keeps_meeting_keys_in_transit_runs_into_its_deadline(
    service: RouterService, node: FakeNode
) -> None:
    wrong = node_pb2.ScanResponse(
        error=node_pb2.GroupError(wrong_group=kv_pb2.WrongGroup(group_id=1, epoch=2))
    )
    node.answers["Scan"] = [wrong] * 1000
    started = asyncio.get_running_loop().time()
    # The outer timeout only guards the test: the scan's own deadline must end it.
    with pytest.raises(GroupUnavailable, match="group"):
        async with asyncio.timeout(5):
            await service.scan(b"", None, 10, _deadline(0.3))
    assert asyncio.get_running_loop().time() - started < 2.0


async def _serve(service: RouterService) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


# Each admin change: its method, response type, a dry run, and a change.
_CHANGES = {
    "ChangeRing": (
        node_pb2.ChangeRingResponse,
        node_pb2.ChangeRingRequest(add_group=node_pb2.AddGroup(weight=1), dry_run=True),
        node_pb2.ChangeRingRequest(remove_group=2),
    ),
    "ChangePlacement": (
        node_pb2.ChangePlacementResponse,
        node_pb2.ChangePlacementRequest(rebalance=True, dry_run=True),
        node_pb2.ChangePlacementRequest(remove_node=1),
    ),
}


@pytest.mark.parametrize("method", sorted(_CHANGES))
async def test_changes_go_to_the_meta_groups_leader_and_keep_their_refusals(
    service: RouterService, node: FakeNode, method: str
) -> None:
    response_type, dry_run, change = _CHANGES[method]
    planned = cluster_map(6, migrating=True)
    node.answers[method] = [
        response_type(error=node_pb2.GroupError(not_leader=node_pb2.NotLeader(leader_id=1))),
        response_type(map=planned),
        _RpcError(grpc.StatusCode.FAILED_PRECONDITION, "a change is under way"),
        _RpcError(grpc.StatusCode.INVALID_ARGUMENT, "the request names no change"),
        response_type(map=planned),
    ]
    server, address = await _serve(service)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = getattr(router_pb2_grpc.RouterStub(channel), method)  # type: ignore[no-untyped-call]
            answer = await call(dry_run, timeout=5)
            assert answer.map == planned
            assert service.topology.version == 5, "a plan is never taken as the map"
            assert not service.topology._poke.is_set(), "nor does it make the router poll"
            for code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(change, timeout=5)
                assert refused.value.code() is code
            await call(change, timeout=5)
            assert service.topology._poke.is_set(), "a change started: the router polls the map"
    finally:
        await server.stop(None)
    assert len(node.requests[method]) == 5, "refusals are not retried"
    assert node.requests[method][1] == dry_run


async def test_cluster_status_shares_count_active_moves_at_their_target(
    service: RouterService,
) -> None:
    moved = cluster_map(7, migrating=True)
    moved.migration.moves[0].phase = cluster_pb2.MOVE_ACTIVE
    service.topology.learn(moved)
    server, address = await _serve(service)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            # The fake node has no Status: its report is an error, the shares stand.
            service.topology.stub_at = lambda address: _NoStatus()  # type: ignore[assignment,method-assign,return-value]
            status = await stub.ClusterStatus(router_pb2.ClusterStatusRequest(), timeout=5)
    finally:
        await server.stop(None)
    shares = {share.group_id: share.share for share in status.shares}
    assert set(shares) == {1, 2, 3} and shares[3] > 0
    assert sum(shares.values()) == pytest.approx(1.0)
    assert status.map.migration.moves[0].phase == cluster_pb2.MOVE_ACTIVE


class _NoStatus:
    async def Status(self, request: Any, timeout: float) -> node_pb2.StatusResponse:
        raise _RpcError(grpc.StatusCode.UNAVAILABLE, "no node here")
