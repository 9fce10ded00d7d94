"""Many concurrent clients through the router, with a node crash, checked for linearizability.

Three nodes, two routers; eight ``AsyncClient`` tasks (each its own client,
so each has its own session) run put, get, cas and delete on a handful of
keys, half through each router, while one node is killed and brought back.
Every call is recorded with its call and return times (``time.monotonic``);
a write whose outcome the client could not learn (DeadlineExceeded,
Unavailable) is recorded as pending. ``tests.checkers`` then decides whether
one atomic store could have produced the history.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import pytest

from router import AsyncClient, DeadlineExceeded, Unavailable
from tests.checkers.linearizability import Operation, check_history
from tests.fault.workloads import register_call, register_operation
from tests.integration.conftest import MakeCluster, Settings
from tests.integration.routers import RouterProcess

pytestmark = pytest.mark.integration

KEYS = [b"h/%d" % number for number in range(4)]
CLIENTS = 8
SECONDS = 8.0


async def run_client(
    number: int,
    address: str,
    history: list[Operation],
    stop_at: float,
    keys: Sequence[bytes] = KEYS,
) -> None:
    rng = random.Random(number)
    async with AsyncClient(address, timeout=4.0) as client:
        for step in range(10_000):
            if time.monotonic() >= stop_at:
                return
            key = rng.choice(keys)
            kind = rng.choice(("put", "get", "get", "cas", "delete"))
            value = b"c%d-%d" % (number, step)
            expected = rng.choice(
                (None, *[b"c%d-%d" % (rng.randrange(CLIENTS), rng.randrange(step + 1))])
            )
            call = time.monotonic()
            try:
                output = await register_call(client, kind, key, value, expected)
            except (DeadlineExceeded, Unavailable):
                if kind != "get":  # a write that may or may not have applied
                    history.append(
                        register_operation(number, kind, key, value, expected, None, call, None)
                    )
                continue
            ret = time.monotonic()
            done = register_operation(number, kind, key, value, expected, output, call, ret)
            history.append(done)


def test_concurrent_clients_through_two_routers_with_a_node_crash_are_linearizable(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(Settings(nodes=3, groups=2))
    cluster.start_all()
    routers = [RouterProcess(cluster, "router-1"), RouterProcess(cluster, "router-2")]
    try:
        for router in routers:
            router.start()
        history: list[Operation] = []

        async def scenario() -> None:
            stop_at = time.monotonic() + SECONDS
            clients = [
                asyncio.create_task(
                    run_client(number, routers[number % 2].address, history, stop_at)
                )
                for number in range(CLIENTS)
            ]
            await asyncio.sleep(SECONDS / 4)
            victim = (await asyncio.to_thread(cluster.wait_leaders))[1]
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.sleep(SECONDS / 4)
            await asyncio.to_thread(cluster.start, victim)
            await asyncio.gather(*clients)

        asyncio.run(scenario())
    finally:
        for router in routers:
            router.close()
    answered = [op for op in history if op.ret is not None]
    assert len(answered) > 200, f"only {len(answered)} operations were answered"
    assert {op.kind for op in answered} == {"put", "get", "cas", "delete"}
    print(f"{len(answered)} answered, {len(history) - len(answered)} of unknown outcome")
    result = check_history(history)
    assert result.ok, result.explanation
    assert not result.timed_out
