"""A small asyncio client for etcd's v3 KV API, over one grpc.aio channel to one member.

``EtcdClient(endpoint)`` owns the channel: use it as an async context manager
(or call ``close``; closing twice is harmless, a call after close raises
``EtcdError``). Every call carries a deadline (``timeout``, seconds).

- ``put(key, value)``: one ``KV.Put``.
- ``get(key)``: one linearizable ``KV.Range`` for the key (etcd's default read).
- ``put_many(items)``: ONE ``KV.Txn`` with no compares and a ``Put`` per item
  in ``success``: one Raft entry, one fsync, all-or-nothing. etcd refuses a
  txn with more than ``--max-txn-ops`` operations (128 by default).

Any member takes every call: a follower forwards a proposal to the leader and
asks it for a read index. ``find_leader`` picks the leader's endpoint from the
members' ``Maintenance.Status``, which saves that hop.

gRPC errors become ``EtcdRequestError`` here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import grpc

from bench.etcd.errors import EtcdClusterError, EtcdError, EtcdRequestError
from shardkv.etcd import rpc_pb2, rpc_pb2_grpc

__all__ = ["EtcdClient", "find_leader"]

DEFAULT_TIMEOUT = 5.0

_Response = TypeVar("_Response")


class EtcdClient:
    """One member's KV and Maintenance services over one channel."""

    def __init__(self, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel: grpc.aio.Channel | None = grpc.aio.insecure_channel(endpoint)
        # The generated stubs are untyped; each call below states its response type.
        self._kv = rpc_pb2_grpc.KVStub(self._channel)  # type: ignore[no-untyped-call]
        self._maintenance = rpc_pb2_grpc.MaintenanceStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; harmless when already closed."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(None)

    async def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` at ``key`` (one committed Raft entry)."""
        await self._call("Put", self._kv.Put, rpc_pb2.PutRequest(key=key, value=value))

    async def get(self, key: bytes) -> bytes | None:
        """The value at ``key``, or None; linearizable (the leader confirms its lease)."""
        response: rpc_pb2.RangeResponse = await self._call(
            "Range", self._kv.Range, rpc_pb2.RangeRequest(key=key)
        )
        return response.kvs[0].value if response.kvs else None

    async def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Store every item in one Txn: one Raft entry for the whole batch."""
        request = rpc_pb2.TxnRequest(
            success=[
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))
                for key, value in items
            ]
        )
        response: rpc_pb2.TxnResponse = await self._call("Txn", self._kv.Txn, request)
        if not response.succeeded:
            # A txn with no compares always takes the success branch.
            raise EtcdError(f"etcd Txn with no compares did not succeed: {response}")

    async def status(self) -> rpc_pb2.StatusResponse:
        """This member's ``Maintenance.Status``: its ID, the leader it knows, its version."""
        response: rpc_pb2.StatusResponse = await self._call(
            "Status", self._maintenance.Status, rpc_pb2.StatusRequest()
        )
        return response

    async def _call(
        self,
        method: str,
        rpc: grpc.aio.UnaryUnaryMultiCallable[object, _Response],
        request: object,
    ) -> _Response:
        if self._channel is None:
            raise EtcdError(f"etcd client for {self.endpoint} is closed")
        pending: Awaitable[_Response] = rpc(request, timeout=self.timeout)
        try:
            return await pending
        except grpc.aio.AioRpcError as exc:
            raise EtcdRequestError(method, exc.code(), exc.details() or "") from exc


async def find_leader(endpoints: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """The endpoint of the member the others agree leads; raises EtcdClusterError if none."""
    member_endpoints: dict[int, str] = {}
    leaders: set[int] = set()
    for endpoint in endpoints:
        async with EtcdClient(endpoint, timeout=timeout) as client:
            try:
                status = await client.status()
            except EtcdRequestError:
                continue
        member_endpoints[status.header.member_id] = endpoint
        if status.leader:
            leaders.add(status.leader)
    if len(leaders) == 1 and (leader := leaders.pop()) in member_endpoints:
        return member_endpoints[leader]
    raise EtcdClusterError(f"no single leader among {list(endpoints)}: members report {leaders}")
