"""A harness for clusters of real ``shardkv-node`` processes on 127.0.0.1.

``Cluster`` writes one TOML file for all its nodes, starts each node as a
subprocess (``python -m shardkv.node.main``) with its own data directory and
log file under the test's ``tmp_path``, and kills, stops and restarts them.
``ClusterClient`` is a minimal router: it finds a group's leader through
``Status`` and follows ``NOT_LEADER`` hints, retrying a write with the same
``(client_id, seq)`` on UNAVAILABLE or a missed deadline.

These tests wait on real processes, so they poll (every 50 ms); every loop is
bounded in time, and the ``cluster`` fixture kills every process it started,
whatever the test did.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import pytest

from shardkv.ring import KeyRing, map_order
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, node_pb2_grpc
from tests.ports import free_ports

POLL = 0.05
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
RPC_TIMEOUT = 2.0
_T = TypeVar("_T")
_Response = TypeVar("_Response", node_pb2.WriteResponse, node_pb2.ReadResponse)


def wait_until(what: str, check: Callable[[], _T | None], timeout: float = READY_TIMEOUT) -> _T:
    """Poll ``check`` until it returns neither None nor False; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


def put_command(client_id: int, seq: int, key: bytes, value: bytes) -> kv_pb2.Command:
    return kv_pb2.Command(
        client_id=client_id,
        seq=seq,
        operations=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))],
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """The settings every node of a test cluster shares."""

    nodes: int = 3
    groups: int = 16
    tick_interval_ms: int = 30
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    snapshot_interval_entries: int = 10_000
    cluster_id: str = "itest"

    def toml(self, addresses: dict[int, str]) -> str:
        node_ids = ", ".join(str(node_id) for node_id in sorted(addresses))
        lines = [
            f'cluster_id = "{self.cluster_id}"',
            f"tick_interval_ms = {self.tick_interval_ms}",
            f"election_ticks = {self.election_ticks}",
            f"heartbeat_ticks = {self.heartbeat_ticks}",
            f"snapshot_interval_entries = {self.snapshot_interval_entries}",
            'log_level = "INFO"',
            "",
            "[initial_cluster]",
            *(f'{node_id} = "{address}"' for node_id, address in sorted(addresses.items())),
            "",
            "[groups]",
            *(f"{group_id} = [{node_ids}]" for group_id in range(self.groups + 1)),
            "",
        ]
        return "\n".join(lines)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def node_command(*arguments: str) -> list[str]:
    """The command line of one node process."""
    return [sys.executable, "-m", "shardkv.node.main", *arguments]


def clean_environment() -> dict[str, str]:
    """This process's environment without any SHARDKV_* setting that could leak in."""
    return {name: value for name, value in os.environ.items() if not name.startswith("SHARDKV_")}


class Cluster:
    """Node processes of one test cluster; all files live under ``root``."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        node_ids = range(1, settings.nodes + 1)
        ports = free_ports(settings.nodes)
        self.addresses = {
            node_id: f"127.0.0.1:{port}" for node_id, port in zip(node_ids, ports, strict=True)
        }
        self.group_ids = tuple(range(1, settings.groups + 1))
        # The ring the nodes bootstrap (every data group, weight 1).
        self.ring = KeyRing(1, dict.fromkeys(self.group_ids, 1))
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(settings.toml(self.addresses))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        # Flags of nodes that join instead of being in the initial cluster.
        self.joiners: dict[int, list[str]] = {}
        self._starts = itertools.count(1)
        self._channels: dict[int, grpc.Channel] = {}
        # Added to every node's environment when it starts; node_env to one node's.
        self.env: dict[str, str] = {}
        self.node_env: dict[int, dict[str, str]] = {}

    def key(self, group_id: int, name: str) -> bytes:
        """A key named after ``name`` that the cluster's ring gives ``group_id``."""
        for suffix in itertools.count():
            key = f"{name}#{suffix}".encode()
            if self.ring.group_for(key) == group_id:
                return key
        raise AssertionError("unreachable")

    # -- files ------------------------------------------------------------------------

    def data_dir(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}"

    def log_path(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}.log"

    def log_tail(self, node_id: int, lines: int = 30) -> str:
        return tail(self.log_path(node_id), lines)

    def node_arguments(self, node_id: int) -> list[str]:
        """The flags a node of this cluster starts with."""
        return [
            "--config",
            str(self.config_path),
            "--node-id",
            str(node_id),
            "--data-dir",
            str(self.data_dir(node_id)),
            *self.joiners.get(node_id, []),
        ]

    def add_joiner(self, node_id: int, via: int) -> None:
        """A node outside the initial cluster that joins through node ``via``."""
        (port,) = free_ports(1)
        self.addresses[node_id] = f"127.0.0.1:{port}"
        self.joiners[node_id] = ["--listen", self.addresses[node_id], "--join", self.addresses[via]]

    # -- processes ---------------------------------------------------------------------

    def start(self, node_id: int, wait: bool = True) -> None:
        """Start the node (appending to its log); with ``wait``, until it answers Status."""
        assert node_id not in self.processes, f"node {node_id} is already running"
        with self.log_path(node_id).open("ab") as log:
            log.write(f"---- start {next(self._starts)} ----\n".encode())
            log.flush()
            self.processes[node_id] = subprocess.Popen(
                node_command(*self.node_arguments(node_id)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**clean_environment(), **self.env, **self.node_env.get(node_id, {})},
                cwd=self.root,
            )
        if wait:
            self.wait_serving(node_id)

    def start_all(self) -> None:
        for node_id in self.addresses:
            self.start(node_id, wait=False)
        for node_id in self.addresses:
            self.wait_serving(node_id)

    def running(self) -> list[int]:
        return sorted(self.processes)

    def kill(self, node_id: int) -> None:
        """SIGKILL: a crash."""
        process = self.processes.pop(node_id)
        process.kill()
        process.wait(STOP_TIMEOUT)

    def stop(self, node_id: int) -> None:
        """SIGTERM, and check the node stopped cleanly (exit status 0)."""
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
            pytest.fail(f"node {node_id} did not stop within {STOP_TIMEOUT} s of SIGTERM")
        assert status == 0, f"node {node_id} exited with {status}:\n{self.log_tail(node_id)}"

    def kill_all(self) -> list[int]:
        """SIGKILL to every node before waiting on any: they crash at the same instant.

        Returns the nodes killed."""
        processes = list(self.processes.items())
        self.processes.clear()
        for _, process in processes:
            process.kill()
        for _, process in processes:
            process.wait(STOP_TIMEOUT)
        return [node_id for node_id, _ in processes]

    def stop_all(self) -> None:
        """SIGTERM to every node at once, then check each stopped cleanly (exit status 0)."""
        processes = list(self.processes.items())
        self.processes.clear()
        for _, process in processes:
            process.send_signal(signal.SIGTERM)
        for node_id, process in processes:
            status = process.wait(STOP_TIMEOUT)
            assert status == 0, f"node {node_id} exited with {status}:\n{self.log_tail(node_id)}"

    def wipe(self, node_id: int) -> None:
        """Delete the data directory of a stopped node."""
        assert node_id not in self.processes
        shutil.rmtree(self.data_dir(node_id))

    def close(self) -> None:
        """Kill every process still running, and close the client channels."""
        for node_id in list(self.processes):
            self.kill(node_id)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    # -- talking to nodes -----------------------------------------------------------

    def newest_map(self) -> cluster_pb2.ClusterMap | None:
        """The newest cluster map any running node knows (the meta leader's is the newest)."""
        newest: cluster_pb2.ClusterMap | None = None
        for node_id in self.running():
            try:
                response = self.stub(node_id).GetClusterMap(
                    node_pb2.GetClusterMapRequest(), timeout=RPC_TIMEOUT
                )
            except grpc.RpcError:
                continue
            if response.HasField("map") and (
                newest is None or map_order(response.map) > map_order(newest)
            ):
                newest = response.map
        return newest

    def stub(self, node_id: int) -> node_pb2_grpc.NodeStub:
        channel = self._channels.get(node_id)
        if channel is None:
            channel = grpc.insecure_channel(self.addresses[node_id])
            self._channels[node_id] = channel
        # The generated stub carries no type hints.
        return node_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]

    def status(self, node_id: int) -> node_pb2.StatusResponse | None:
        """The node's Status, or None if it does not answer."""
        try:
            response: node_pb2.StatusResponse = self.stub(node_id).Status(
                node_pb2.StatusRequest(), timeout=RPC_TIMEOUT
            )
        except grpc.RpcError:
            return None
        return response

    def group_statuses(self, node_id: int) -> dict[int, node_pb2.GroupStatus] | None:
        status = self.status(node_id)
        return None if status is None else {group.group_id: group for group in status.groups}

    def wait_serving(self, node_id: int) -> None:
        def answers() -> bool:
            process = self.processes[node_id]
            if process.poll() is not None:
                pytest.fail(
                    f"node {node_id} exited with {process.returncode} while starting:\n"
                    f"{self.log_tail(node_id)}"
                )
            return self.status(node_id) is not None

        wait_until(f"node {node_id} to answer Status", answers)

    def leader_claims(self, skip: Collection[int] = ()) -> dict[int, int]:
        """Group id -> the node that claims to lead it at the highest term, by the running
        nodes' own word (nodes in ``skip`` not asked), for the groups that have one."""
        claims: dict[int, tuple[int, int]] = {}
        for node_id in self.running():
            if node_id in skip:
                continue
            statuses = self.group_statuses(node_id)
            for group_id, group in (statuses or {}).items():
                if group.role == "leader" and group.term > claims.get(group_id, (-1, 0))[0]:
                    claims[group_id] = (group.term, node_id)
        return {group_id: node_id for group_id, (_, node_id) in claims.items()}

    def leaders(self) -> dict[int, int] | None:
        """Group id -> the node that leads it (by the running nodes' own word), if all have one."""
        claims = self.leader_claims()
        if any(group_id not in claims for group_id in (0, *self.group_ids)):
            return None
        return claims

    def wait_leaders(self, timeout: float = READY_TIMEOUT) -> dict[int, int]:
        return wait_until("a leader in every group", self.leaders, timeout)

    def caught_up(self, node_id: int) -> bool:
        """True if, in every group, ``node_id`` applied what the leader applied, same keys."""
        leaders = self.leaders()
        mine = self.group_statuses(node_id)
        if leaders is None or mine is None:
            return False
        by_leader = {leader: self.group_statuses(leader) for leader in set(leaders.values())}
        for group_id, leader in leaders.items():
            theirs = (by_leader[leader] or {}).get(group_id)
            if theirs is None or group_id not in mine:
                return False
            if (mine[group_id].applied, mine[group_id].key_count) != (
                theirs.applied,
                theirs.key_count,
            ):
                return False
        return True


class ClusterClient:
    """Writes and reads addressed to groups, as a router would send them.

    Each call goes to the group's cached leader, or tries the nodes in turn;
    it follows NOT_LEADER hints, and on UNAVAILABLE or DEADLINE_EXCEEDED it
    moves to another node and retries the SAME request (a write keeps its
    ``(client_id, seq)``, so it applies at most once). Bounded by ``timeout``.
    """

    def __init__(self, cluster: Cluster, client_id: int, timeout: float = 15.0) -> None:
        self.cluster = cluster
        self.client_id = client_id
        self.timeout = timeout
        self._seq = itertools.count(1)
        self._leaders: dict[int, int] = {}
        self.retries = 0

    def next_seq(self) -> int:
        return next(self._seq)

    def put(self, group_id: int, key: bytes, value: bytes) -> kv_pb2.CommandResult:
        """Write one key with the next seq; returns once it is acknowledged."""
        return self.write(group_id, put_command(self.client_id, self.next_seq(), key, value))

    def write(self, group_id: int, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        request = node_pb2.WriteRequest(group_id=group_id, command=command)

        def call(stub: node_pb2_grpc.NodeStub) -> node_pb2.WriteResponse:
            response: node_pb2.WriteResponse = stub.Write(request, timeout=RPC_TIMEOUT)
            return response

        response = self._call(group_id, call)
        assert not response.result.HasField("wrong_group"), response.result
        return response.result

    def read(self, group_id: int, keys: Sequence[bytes]) -> dict[bytes, kv_pb2.KeyValue]:
        request = node_pb2.ReadRequest(group_id=group_id, keys=list(keys))

        def call(stub: node_pb2_grpc.NodeStub) -> node_pb2.ReadResponse:
            response: node_pb2.ReadResponse = stub.Read(request, timeout=RPC_TIMEOUT)
            return response

        response = self._call(group_id, call)
        return {kv.key: kv for kv in response.kvs}

    def _call(
        self,
        group_id: int,
        call: Callable[[node_pb2_grpc.NodeStub], _Response],
    ) -> _Response:
        nodes = sorted(self.cluster.addresses)
        deadline = time.monotonic() + self.timeout
        target = self._leaders.get(group_id, nodes[group_id % len(nodes)])
        last_problem = "no attempt"
        for attempt in range(1000):
            if attempt and time.monotonic() > deadline:
                break
            try:
                response = call(self.cluster.stub(target))
            except grpc.RpcError as error:
                code = error.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last_problem = f"node {target}: {code.name} {error.details()}"
                self._leaders.pop(group_id, None)
                target = nodes[(nodes.index(target) + 1) % len(nodes)]
                self.retries += 1
                time.sleep(POLL)
                continue
            if response.error.HasField("not_leader"):
                hint = response.error.not_leader.leader_id
                last_problem = f"node {target}: not leader (hint {hint})"
                self._leaders.pop(group_id, None)
                self.retries += 1
                if hint and hint != target:
                    target = hint
                else:
                    target = nodes[(nodes.index(target) + 1) % len(nodes)]
                    time.sleep(POLL)
                continue
            assert not response.error.HasField("unknown_group"), response.error
            self._leaders[group_id] = target
            return response
        pytest.fail(f"group {group_id}: no answer within {self.timeout} s; last: {last_problem}")


# What the make_cluster fixture gives a test: build a cluster with these settings.
MakeCluster = Callable[[Settings], Cluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """Build clusters under ``tmp_path``; every process is killed at teardown."""
    clusters: list[Cluster] = []

    def make(settings: Settings) -> Cluster:
        root = tmp_path / f"cluster-{len(clusters) + 1}"
        root.mkdir()
        cluster = Cluster(root, settings)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()


if TYPE_CHECKING:
    from tests.integration.routers import RouterProcess


@pytest.fixture
def routed(make_cluster: MakeCluster) -> Iterator[tuple[Cluster, RouterProcess]]:
    """Three nodes of four groups and one router process before them."""
    # Here, not at the top: tests.integration.routers imports this module.
    from tests.integration.routers import RouterProcess

    cluster = make_cluster(Settings(nodes=3, groups=4))
    cluster.start_all()
    router = RouterProcess(cluster, "router-1")
    try:
        router.start()
        yield cluster, router
    finally:
        router.close()
