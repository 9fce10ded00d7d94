"""When a router is healthy: it has a cluster map and every group on its ring has a leader.

``RouterHealthCheck`` is the router's check for ``shardkv.health.Health``.
The router's own leader cache is learnt lazily, from requests, so it cannot
say by itself whether an idle group is led; instead each check asks every
node of the map for its ``Status`` (all at once, each within
``rpc_timeout``) and counts a group as led when a node the router reaches
says it leads it. The check reports:

- no cluster map yet (the router has not reached any node);
- the serving groups that no reachable node leads, and the nodes that did
  not answer.

Only the groups that serve keys count: the ring's, and during a ring change
the groups it moves keys to (``Routing.groups``). The check only reads: it
does not touch the routing cache, so health probing never changes where
requests go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import grpc.aio

from router.topology import Topology
from shardkv.v1 import node_pb2

__all__ = ["RouterHealthCheck"]


class RouterHealthCheck:
    def __init__(self, topology: Topology, *, rpc_timeout: float = 1.0) -> None:
        self.topology = topology
        self.rpc_timeout = rpc_timeout

    async def __call__(self) -> Sequence[str]:
        topology = self.topology
        if topology.map is None or topology.ring is None:
            return ("no cluster map yet: no node in --nodes has answered",)
        nodes = sorted(topology.nodes.items())
        answers = await asyncio.gather(*(self._status(address) for _, address in nodes))
        led = {
            group.group_id
            for answer in answers
            if answer is not None
            for group in answer.groups
            if group.role == "leader"
        }
        leaderless = sorted(set(topology.ring.groups) - led)
        if not leaderless:
            return ()
        problems = [f"no reachable leader for {_some('group', leaderless)}"]
        silent = [
            node_id for (node_id, _), answer in zip(nodes, answers, strict=True) if answer is None
        ]
        if silent:
            problems.append(f"no answer from {_some('node', silent)}")
        return problems

    async def _status(self, address: str) -> node_pb2.StatusResponse | None:
        try:
            response: node_pb2.StatusResponse = await self.topology.stub_at(address).Status(
                node_pb2.StatusRequest(), timeout=self.rpc_timeout
            )
        except grpc.aio.AioRpcError:
            return None
        return response


def _some(noun: str, ids: Sequence[int]) -> str:
    """``group 3`` or ``groups 1, 2``."""
    return f"{noun}{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"
