"""Durability: kill -9 of every node at once, mid-load, loses no acknowledged write.

The scenario (``crash_under_load``), on 3 node processes with 4 data groups
and one router:

1. Start the cluster, stop every node cleanly and start them again, so that
   the bootstrapped state is on disk even in the unsafe mode below (a clean
   close flushes RocksDB's memtables; a kill does not).
2. ``WRITERS`` tasks put unique keys ``d/<writer>/<n>`` with unique values
   through the router, one put at a time each, and record every put the
   router acknowledged, and separately every put whose outcome is unknown
   (it failed or was cut off: it may or may not have applied).
3. ``LOAD_SECONDS`` into the load, once at least ``MIN_ACKNOWLEDGED`` puts
   are acknowledged and puts are still being acknowledged, SIGKILL goes to
   every node before any is waited on: they all crash at the same instant.
   The writers are stopped; their calls in flight fail (outcome unknown).
4. Restart every node, wait for a leader in every group and for the router
   to see them, then read back every key put through the router.

``check`` then counts acknowledged puts that are missing or hold another
value (``lost``), unknown ones that are present with another value
(``garbage``), and keys under ``d/`` that no writer ever put.

The positive test runs the scenario as is and requires nothing lost. The
negative control runs the same scenario with ``SHARDKV_UNSAFE_NO_FSYNC=1``
in the nodes' environment (``shardkv.storage.engine``: RocksDB writes with
its log disabled, so a kill -9 loses what a power loss would lose). It is
*caught* when the cluster comes back, serves every read, and the check
finds at least one acknowledged put lost; if it is not, the durability test
is not testing anything, and the negative control fails saying so.

Snapshots are kept out of the run (``snapshot_interval_entries`` far above
what it writes), and a few thousand small puts are far below RocksDB's
64 MiB memtable, so nothing the load writes reaches an SST file by a flush.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

import pytest

from router.client import AsyncClient
from router.errors import ClientError
from shardkv.storage.engine import UNSAFE_NO_FSYNC_ENV
from tests.integration import conftest as harness
from tests.integration.conftest import Cluster, MakeCluster, Settings
from tests.integration.routers import RouterProcess, wait_ready

pytestmark = [pytest.mark.fault, pytest.mark.integration]

# The integration harness's fixture, made visible here (tests/integration's
# conftest does not reach tests/fault).
make_cluster = harness.make_cluster

SETTINGS = Settings(nodes=3, groups=4, snapshot_interval_entries=1_000_000)
WRITERS = 8
# Seconds of load before the kill, at the least.
LOAD_SECONDS = 3.0
# Acknowledged puts before the kill, at the least: the load is really flowing.
MIN_ACKNOWLEDGED = 100
# The kill waits (up to KILL_PATIENCE s past LOAD_SECONDS) for a put
# acknowledged within the last FLOWING seconds.
FLOWING = 0.2
KILL_PATIENCE = 10.0
PUT_TIMEOUT = 3.0
READ_TIMEOUT = 20.0
# What shardkv.storage.engine logs when the unsafe mode is on.
UNSAFE_WARNING = f"{UNSAFE_NO_FSYNC_ENV}=1: TEST-ONLY UNSAFE MODE"


@dataclass
class Load:
    """What the writers did: acknowledged puts, and puts of unknown outcome."""

    acknowledged: dict[bytes, bytes] = field(default_factory=dict)
    unknown: dict[bytes, bytes] = field(default_factory=dict)
    last_ack: float = 0.0
    # Puts out when the nodes were killed, and seconds of load before it.
    in_flight_at_kill: int = 0
    killed_after: float = 0.0


@dataclass
class Outcome:
    """What reading back after the restart found."""

    load: Load
    # Keys read back after the restart: every one put, acknowledged or not.
    checked: int
    # Acknowledged puts missing or holding another value after the restart.
    lost: dict[bytes, bytes | None]
    # Puts of unknown outcome present with another value (never acceptable).
    garbage: dict[bytes, bytes]
    unknown_present: int
    # Keys under d/ that no writer put.
    strangers: list[bytes]
    # Seconds each phase of the scenario took.
    phases: dict[str, float]
    # Nodes whose log has the engine's warning of the unsafe mode.
    unsafe_nodes: list[int]

    def summary(self) -> str:
        return (
            f"acknowledged {len(self.load.acknowledged)}, unknown {len(self.load.unknown)} "
            f"({self.unknown_present} present), checked {self.checked}, "
            f"lost {len(self.lost)}, garbage {len(self.garbage)}, strangers {len(self.strangers)}; "
            f"killed {self.load.killed_after:.1f} s into the load with "
            f"{self.load.in_flight_at_kill} puts in flight; phases (s): "
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.phases.items())
        )


async def write_until_killed(address: str, cluster: Cluster, load: Load) -> None:
    """Run the writers, kill every node mid-load, then stop the writers."""
    token = secrets.token_hex(4)
    in_flight: set[bytes] = set()

    async def writer(number: int) -> None:
        for n in range(1_000_000):
            key = f"d/{number}/{n}".encode()
            value = f"{token}/{number}/{n}".encode()
            in_flight.add(key)
            try:
                await client.put(key, value, timeout=PUT_TIMEOUT)
            except asyncio.CancelledError:
                load.unknown[key] = value
                raise
            except ClientError:
                # DeadlineExceeded, Unavailable, ...: it may or may not have applied.
                load.unknown[key] = value
            else:
                load.acknowledged[key] = value
                load.last_ack = time.monotonic()
            finally:
                in_flight.discard(key)

    async with AsyncClient(address, timeout=PUT_TIMEOUT) as client:
        started = time.monotonic()
        writers = [asyncio.create_task(writer(number)) for number in range(WRITERS)]
        try:
            await asyncio.sleep(LOAD_SECONDS)
            deadline = time.monotonic() + KILL_PATIENCE
            flowing = False
            for _ in range(int(KILL_PATIENCE / 0.01) + 1):
                flowing = (
                    len(load.acknowledged) >= MIN_ACKNOWLEDGED
                    and time.monotonic() - load.last_ack <= FLOWING
                    and bool(in_flight)
                )
                if flowing or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
            if not flowing:
                pytest.fail(
                    f"the load is not flowing: {len(load.acknowledged)} puts acknowledged, "
                    f"the last {time.monotonic() - load.last_ack:.1f} s ago"
                )
            # Synchronous on purpose: no writer runs between the check and the kill.
            load.in_flight_at_kill = len(in_flight)
            load.killed_after = time.monotonic() - started
            cluster.kill_all()
            # Let the writers see their calls fail for a moment, then stop them.
            await asyncio.sleep(0.5)
        finally:
            for task in writers:
                task.cancel()
            ended = await asyncio.gather(*writers, return_exceptions=True)
        failed = [
            error
            for error in ended
            if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError)
        ]
        assert not failed, f"writers failed: {failed!r}"


async def read_back(address: str, keys: list[bytes]) -> tuple[dict[bytes, bytes], list[bytes]]:
    """The values of ``keys`` that exist, and every key under ``d/``."""
    async with AsyncClient(address, timeout=READ_TIMEOUT) as client:
        found = await client.get_many(keys, timeout=READ_TIMEOUT)
        every = [key async for key, _ in client.scan(prefix=b"d/", timeout=READ_TIMEOUT)]
    return found, every


def crash_under_load(make_cluster: MakeCluster, env: dict[str, str]) -> Outcome:
    """The scenario of the module docstring, with ``env`` added to every node's environment."""
    cluster = make_cluster(SETTINGS)
    cluster.env = dict(env)
    phases: dict[str, float] = {}
    began = time.monotonic()

    def phase(name: str) -> None:
        nonlocal began
        now = time.monotonic()
        phases[name] = now - began
        began = now

    cluster.start_all()
    cluster.wait_leaders()
    phase("start")
    # A clean stop flushes the memtables: the bootstrap survives the kill in any mode.
    cluster.stop_all()
    cluster.start_all()
    phase("clean restart")
    router = RouterProcess(cluster, "router")
    load = Load()
    try:
        router.start()
        phase("router")
        asyncio.run(write_until_killed(router.address, cluster, load))
        phase("load")
        cluster.start_all()
        cluster.wait_leaders()
        wait_ready(router.stub(), cluster.group_ids)
        phase("restart")
        checked = [*load.acknowledged, *load.unknown]
        found, every = asyncio.run(read_back(router.address, checked))
        phase("read back")
    finally:
        router.close()
    lost = {
        key: found.get(key) for key, value in load.acknowledged.items() if found.get(key) != value
    }
    garbage = {
        key: found[key] for key, value in load.unknown.items() if found.get(key, value) != value
    }
    put = load.acknowledged.keys() | load.unknown.keys()
    return Outcome(
        load=load,
        checked=len(checked),
        lost=lost,
        garbage=garbage,
        unknown_present=sum(1 for key in load.unknown if key in found),
        strangers=[key for key in every if key not in put],
        phases=phases,
        unsafe_nodes=[
            node_id
            for node_id in sorted(cluster.addresses)
            if UNSAFE_WARNING in cluster.log_path(node_id).read_text(errors="replace")
        ],
    )


def sample(keys: dict[bytes, bytes | None]) -> list[tuple[bytes, bytes | None]]:
    return sorted(keys.items())[:5]


def test_kill_9_of_every_node_mid_load_loses_no_acknowledged_write(
    make_cluster: MakeCluster,
) -> None:
    outcome = crash_under_load(make_cluster, {})
    print(f"durability: {outcome.summary()}")
    assert not outcome.unsafe_nodes, "the nodes ran in the unsafe mode"
    assert len(outcome.load.acknowledged) >= MIN_ACKNOWLEDGED
    assert not outcome.lost, (
        f"{len(outcome.lost)} acknowledged puts lost after kill -9 of every node "
        f"(key: value read back), e.g. {sample(outcome.lost)}; {outcome.summary()}"
    )
    assert not outcome.garbage, f"puts of unknown outcome hold other values: {outcome.garbage}"
    assert not outcome.strangers, f"keys nobody put: {outcome.strangers[:5]}"


def test_negative_control_without_fsync_the_check_catches_lost_writes(
    make_cluster: MakeCluster,
) -> None:
    outcome = crash_under_load(make_cluster, {UNSAFE_NO_FSYNC_ENV: "1"})
    print(f"negative control: {outcome.summary()}")
    assert outcome.unsafe_nodes == [1, 2, 3], "the nodes did not all run in the unsafe mode"
    assert len(outcome.load.acknowledged) >= MIN_ACKNOWLEDGED
    if not outcome.lost:
        pytest.fail(
            "the durability check is not testing anything: with the nodes' fsync off "
            f"(RocksDB's log disabled) it found no acknowledged write lost; {outcome.summary()}"
        )
