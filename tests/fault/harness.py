"""A cluster to break: node and router processes, with every fault the nemesis throws.

``FaultCluster`` owns a ``tests.integration`` ``Cluster`` (node processes)
and its routers, and gives the nemesis its moves: kill -9 and restart,
SIGSTOP and SIGCONT, network cuts, loss and delay through each node's
fault file (``shardkv.node.netfaults``), leader transfers, and ring and
placement changes through a router's admin calls. ``heal`` undoes every
fault; ``check_processes`` restarts a node that a failpoint killed and
reports one that died any other way (a bug, always: a failpoint's exit is
told by the "failpoint ... fires" line it logs first).

Placement: with more than ``replicas`` nodes, group ``g``'s replicas are
``replicas`` consecutive nodes starting at ``g``, so every node lacks some
group and a replica can move. The meta group is on the first ``replicas``
nodes. Snapshots are taken every few hundred entries, so a node that was
down or cut off catches up by snapshot as often as by log.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shardkv.node.netfaults import ENV as NET_FAULTS_ENV
from shardkv.v1 import cluster_pb2, router_pb2
from tests.integration.conftest import Cluster, Settings, tail
from tests.integration.routers import RouterProcess

__all__ = ["FaultCluster", "FaultSettings"]

RPC_TIMEOUT = 2.0
MAX_CRASH_RESTARTS = 3


@dataclass(frozen=True, slots=True)
class FaultSettings(Settings):
    """``Settings`` with ``replicas`` per group spread over the nodes (see the module docstring)."""

    nodes: int = 3
    groups: int = 4
    replicas: int = 3
    snapshot_interval_entries: int = 400
    cluster_id: str = "fault"

    def placement(self, group_id: int) -> list[int]:
        if group_id == 0 or self.nodes <= self.replicas:
            return list(range(1, self.replicas + 1))
        return [(group_id + offset - 1) % self.nodes + 1 for offset in range(self.replicas)]

    def toml(self, addresses: dict[int, str]) -> str:
        text = Settings.toml(self, addresses)
        head, _, _ = text.partition("[groups]")
        groups = [
            f"{group_id} = [{', '.join(str(node) for node in sorted(self.placement(group_id)))}]"
            for group_id in range(self.groups + 1)
        ]
        return head + "[groups]\n" + "\n".join(groups) + "\n"


@dataclass(slots=True)
class ProcessEvents:
    """What happened to processes outside the nemesis' own moves."""

    failpoint_exits: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)


class FaultCluster:
    def __init__(self, root: Path, settings: FaultSettings, routers: int = 2) -> None:
        self.settings = settings
        self.nodes = Cluster(root, settings)
        for node_id in self.nodes.addresses:
            self.nodes.node_env[node_id] = {NET_FAULTS_ENV: str(self.faults_path(node_id))}
        self.routers = [RouterProcess(self.nodes, f"router-{n + 1}") for n in range(routers)]
        self.paused: set[int] = set()
        self.events = ProcessEvents()
        # Processes the nemesis killed on purpose, to restart when the fault ends.
        self.down: set[int] = set()
        self.routers_down: set[int] = set()
        # Crashes per node not caused by the nemesis or a failpoint.
        self.crashed: dict[int, int] = {}

    @property
    def root(self) -> Path:
        return self.nodes.root

    @property
    def addresses(self) -> list[str]:
        return [router.address for router in self.routers]

    def node_ids(self) -> list[int]:
        return sorted(self.nodes.addresses)

    # -- life cycle ----------------------------------------------------------------------

    def start(self, *, restart_clean: bool = False) -> None:
        """Start every process; ``restart_clean`` stops the nodes once (SIGTERM) and starts
        them again first, so that RocksDB has flushed what bootstrapping wrote (for runs
        with durability switched off, whose kill -9 must lose data, not the cluster)."""
        self.nodes.start_all()
        self.nodes.wait_leaders(timeout=30)
        if restart_clean:
            for node_id in self.node_ids():
                self.nodes.stop(node_id)
            self.nodes.start_all()
            self.nodes.wait_leaders(timeout=30)
        for router in self.routers:
            router.start()

    def close(self) -> None:
        for node_id in list(self.paused):
            self._signal_node(node_id, signal.SIGCONT)
        for router in self.routers:
            router.close()
        self.nodes.close()

    def set_failpoint(self, node_id: int, spec: str) -> None:
        """Start ``node_id`` with ``SHARDKV_FAILPOINTS=spec`` (its next start only)."""
        self.nodes.node_env[node_id]["SHARDKV_FAILPOINTS"] = spec

    def set_router_failpoint(self, spec: str) -> None:
        for router in self.routers:
            router.env["SHARDKV_FAILPOINTS"] = spec

    # -- process faults --------------------------------------------------------------

    def kill_node(self, node_id: int) -> None:
        self.check_processes()  # a node that died by itself is a finding, not our kill
        if node_id in self.nodes.processes:
            self.resume_node(node_id)
            self.nodes.kill(node_id)
        self.down.add(node_id)

    def kill_all_nodes(self) -> None:
        """SIGKILL to every node before waiting for any: they all die at the same instant."""
        self.check_processes()  # a node that died by itself is a finding, not our kill
        for node_id in list(self.paused):
            self.resume_node(node_id)
        self.down.update(self.nodes.kill_all())

    def start_all_nodes(self) -> None:
        for node_id in sorted(self.down):
            self.start_node(node_id)

    def start_node(self, node_id: int) -> None:
        """Start a node the nemesis killed (a failpoint not fired yet stays armed)."""
        self.down.discard(node_id)
        if node_id not in self.nodes.processes:
            self.nodes.start(node_id, wait=False)

    def pause_node(self, node_id: int) -> None:
        if node_id in self.nodes.processes and node_id not in self.paused:
            self._signal_node(node_id, signal.SIGSTOP)
            self.paused.add(node_id)

    def resume_node(self, node_id: int) -> None:
        if node_id in self.paused:
            self.paused.discard(node_id)
            self._signal_node(node_id, signal.SIGCONT)

    def kill_router(self, index: int) -> None:
        router = self.routers[index]
        if router.process is not None:
            router.kill()
        self.routers_down.add(index)

    def start_router(self, index: int) -> None:
        self.routers_down.discard(index)
        router = self.routers[index]
        if router.process is None:
            router.start(wait=False)

    def _signal_node(self, node_id: int, signum: signal.Signals) -> None:
        process = self.nodes.processes.get(node_id)
        if process is not None and process.poll() is None:
            process.send_signal(signum)

    def _start_without_failpoint(self, node_id: int) -> None:
        # A failpoint fires once per run: the process it killed restarts clean.
        self.nodes.node_env[node_id].pop("SHARDKV_FAILPOINTS", None)
        self.nodes.start(node_id, wait=False)

    def check_processes(self) -> None:
        """Restart what a failpoint killed; record anything else that died (a crash: a bug)."""
        for node_id, process in list(self.nodes.processes.items()):
            status = process.poll()
            if status is None:
                continue
            del self.nodes.processes[node_id]
            self.paused.discard(node_id)
            what = f"node {node_id} exited with status {status}"
            if status == -signal.SIGKILL and _failpoint_fired(self.nodes.log_path(node_id)):
                self.events.failpoint_exits.append(what)
            else:
                self.events.crashes.append(f"{what}:\n{self.nodes.log_tail(node_id)}")
                self.crashed[node_id] = self.crashed.get(node_id, 0) + 1
            # A node that keeps crashing stays down: its first crashes are the report.
            if node_id not in self.down and self.crashed.get(node_id, 0) <= MAX_CRASH_RESTARTS:
                self._start_without_failpoint(node_id)
        for index, router in enumerate(self.routers):
            if router.process is None or router.process.poll() is None:
                continue
            status = router.process.returncode
            router.close()
            what = f"{router.name} exited with status {status}"
            if status == -signal.SIGKILL and _failpoint_fired(router.log_path):
                self.events.failpoint_exits.append(what)
            else:
                self.events.crashes.append(f"{what}:\n{tail(router.log_path)}")
            if index not in self.routers_down:
                router.env.pop("SHARDKV_FAILPOINTS", None)
                router.start(wait=False)

    # -- network faults (at each node's receiving end) -----------------------------

    def faults_path(self, node_id: int) -> Path:
        return self.root / f"net-faults-{node_id}.json"

    def set_network(
        self,
        node_id: int,
        *,
        cut: set[int] | frozenset[int] = frozenset(),
        loss: float = 0.0,
        delay_ms: tuple[int, int] = (0, 0),
    ) -> None:
        rules = {"cut": sorted(cut), "loss": loss, "delay_ms": list(delay_ms)}
        path = self.faults_path(node_id)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(rules))
        os.replace(temporary, path)

    def partition(self, sides: list[set[int]]) -> None:
        """No Raft message crosses between the given sides (nodes in no side keep talking)."""
        for side in sides:
            others = set().union(*(other for other in sides if other is not side))
            for node_id in side:
                self.set_network(node_id, cut=others)

    def cut_one_way(self, sender: int, receiver: int) -> None:
        """``receiver`` hears nothing from ``sender``; the other direction works."""
        self.set_network(receiver, cut={sender})

    def heal_network(self) -> None:
        for node_id in self.node_ids():
            self.set_network(node_id)

    def heal(self) -> None:
        """Undo every fault: network, pauses, killed processes."""
        self.heal_network()
        for node_id in list(self.paused):
            self.resume_node(node_id)
        self.check_processes()
        for node_id in list(self.down):
            self.start_node(node_id)
        for index in list(self.routers_down):
            self.start_router(index)

    # -- what the cluster says ---------------------------------------------------

    def leaders(self) -> dict[int, int]:
        """Group id -> the node that claims to lead it at the highest term (paused nodes
        not asked: they would not answer), for the groups that have one."""
        return self.nodes.leader_claims(skip=self.paused)

    def cluster_map(self) -> cluster_pb2.ClusterMap | None:
        return self.nodes.newest_map()

    def wait_healthy(self, timeout: float = 60.0) -> router_pb2.ClusterStatusResponse:
        """Until some router answers with the meta group led and every group on its ring led
        at the ring's epoch."""
        deadline = time.monotonic() + timeout
        problem = "no answer"
        for _ in range(int(timeout / 0.2) + 1):
            if time.monotonic() > deadline:
                break
            self.check_processes()
            for router in self.routers:
                if router.process is None:
                    continue
                try:
                    status: router_pb2.ClusterStatusResponse = router.stub().ClusterStatus(
                        router_pb2.ClusterStatusRequest(), timeout=RPC_TIMEOUT
                    )
                except grpc.RpcError as error:
                    problem = f"{router.name}: {error.code().name} {error.details()}"
                    continue
                ring = {weight.group_id for weight in status.map.ring.groups}
                leaders = [
                    group
                    for node in status.nodes
                    for group in node.status.groups
                    if group.role == "leader"
                ]
                led = {g.group_id for g in leaders if g.epoch == status.map.ring.epoch}
                meta_led = any(group.group_id == 0 for group in leaders)
                if ring and ring <= led and meta_led:
                    return status
                problem = (
                    f"{router.name}: groups led {sorted(led)} of {sorted(ring)}, "
                    f"meta group {'led' if meta_led else 'leaderless'}"
                )
            time.sleep(0.2)
        raise AssertionError(f"the cluster did not become healthy in {timeout} s: {problem}")


def _failpoint_fired(log: Path) -> bool:
    """Whether the process's last start logged a failpoint firing (shardkv.failpoints)."""
    if not log.exists():
        return False
    last_start = log.read_text(errors="replace").rsplit("---- start", 1)[-1]
    return "failpoint " in last_start and " fires: exit" in last_start
