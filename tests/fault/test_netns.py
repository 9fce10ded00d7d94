"""The nemesis over a real network: partitions made of dropped packets, checked for linearizability.

Three node processes and one router, each in its own network namespace on a
bridge (``tests.fault.netns``), so the nodes talk over real TCP between real
interfaces, and a fault is what a network does: packets silently dropped by
nftables rules, connections left hanging, not refused. The router and the
workload (``tests.fault.netns_client``) run in a fourth namespace; the test
process only starts them, cuts and heals, and reads their results from
files and stdout: it never dials a 10.x address from the host's namespace.

While eight clients run put, get, cas and delete for ``WORKLOAD_SECONDS``,
the test, in order: isolates the node that leads the most groups (the meta
group's leader on ties) from everyone, router included, for 3 s, heals;
cuts one way into group 1's leader (it hears no other node, but its
packets still leave) for 3 s, heals; cuts group 2's leader off from the
other nodes, while the router can still reach it, for 2.5 s, heals. Each
fault is printed with its time (``-s`` shows the schedule; the times are
``time.monotonic()``, the clock of the history), and so is how many
operations were answered during it and the slowest. Then the history must
be linearizable, more than ``MIN_ANSWERED`` operations answered, some
after the last heal, every group led and a fresh write and read served.

Skipped, with what to do about it, where the machine cannot make namespaces
(not root, no ``ip``, no ``nft``, namespaces refused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.checkers.linearizability import check_history
from tests.fault.netns import Direction, Network, missing_requirement
from tests.fault.netns_client import read_history
from tests.integration.conftest import STOP_TIMEOUT, Settings, clean_environment, node_command

pytestmark = [pytest.mark.fault, pytest.mark.integration]

NODES = ("n1", "n2", "n3")
CLIENT = "cl"
NODE_PORT = 7001
ROUTER_PORT = 7000
WORKLOAD_SECONDS = 22.0
CLIENTS = 8
MIN_ANSWERED = 100
# Bounds on the helper processes run in the client namespace.
HELPER_TIMEOUT = 40.0
LEADERS_POLLS = 40
_REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _namespaces_allowed() -> None:
    missing = missing_requirement()
    if missing is not None:
        pytest.skip(missing)


@pytest.fixture
def network() -> Iterator[Network]:
    network = Network.create(f"skv{os.getpid()}", [*NODES, CLIENT])
    try:
        yield network
    finally:
        network.destroy()


class NetnsCluster:
    """Nodes 1-3 in namespaces n1-n3, a router in the client namespace; files under ``root``."""

    def __init__(self, network: Network, root: Path) -> None:
        self.network = network
        self.root = root
        self.settings = Settings(nodes=len(NODES), groups=2, cluster_id="netns")
        self.members = {node_id: member for node_id, member in enumerate(NODES, start=1)}
        self.addresses = {
            node_id: f"{network.addresses[member]}:{NODE_PORT}"
            for node_id, member in self.members.items()
        }
        self.router_address = f"{network.addresses[CLIENT]}:{ROUTER_PORT}"
        self.config_path = root / "cluster.toml"
        self.config_path.write_text(self.settings.toml(self.addresses))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # The client helper is run as a module of this repository.
        self.helper_env = {
            **clean_environment(),
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(_REPOSITORY), os.environ.get("PYTHONPATH")])
            ),
        }

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def logs(self, lines: int = 15) -> str:
        tails = []
        for name in sorted(self.processes):
            text = self.log_path(name).read_text(errors="replace").splitlines()[-lines:]
            tails.append(
                f"---- {name} (exit {self.processes[name].poll()}) ----\n" + "\n".join(text)
            )
        return "\n".join(tails)

    def start(self) -> None:
        for node_id, member in self.members.items():
            arguments = ["--config", str(self.config_path), "--node-id", str(node_id)]
            arguments += ["--data-dir", str(self.root / f"node-{node_id}")]
            self.processes[member] = self.network.popen(
                member,
                node_command(*arguments),
                self.log_path(member),
                clean_environment(),
                self.root,
            )
        router = [sys.executable, "-m", "router.server", "--listen", self.router_address]
        router += ["--nodes", ",".join(self.addresses.values())]
        self.processes["router"] = self.network.popen(
            CLIENT, router, self.log_path("router"), clean_environment(), self.root
        )
        groups = ",".join(str(group_id) for group_id in range(1, self.settings.groups + 1))
        self.helper("ready", "--router", self.router_address, "--groups", groups)

    def helper(self, *arguments: str) -> str:
        """Run ``tests.fault.netns_client`` in the client namespace; its stdout."""
        argv = [sys.executable, "-m", "tests.fault.netns_client", *arguments]
        result = self.network.run(CLIENT, argv, self.helper_env, self.root, HELPER_TIMEOUT)
        if result.returncode != 0:
            pytest.fail(
                f"netns_client {arguments[0]} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr[-3000:]}\n{self.logs()}"
            )
        return result.stdout

    def start_workload(self, seconds: float, out: Path) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "tests.fault.netns_client", "workload"]
        argv += ["--router", self.router_address, "--clients", str(CLIENTS)]
        argv += ["--seconds", str(seconds), "--out", str(out)]
        process = self.network.popen(
            CLIENT, argv, self.log_path("workload"), self.helper_env, self.root
        )
        self.processes["workload"] = process
        return process

    def leaders(self) -> dict[int, str]:
        """Group id -> member (n1..n3) of the node that leads it, by the nodes' own word."""
        claims = json.loads(self.helper("leaders", "--nodes", ",".join(self.addresses.values())))
        by_address = {address: self.members[node_id] for node_id, address in self.addresses.items()}
        return {int(group_id): by_address[address] for group_id, address in claims.items()}

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(STOP_TIMEOUT)


@pytest.fixture
def netns_cluster(network: Network, tmp_path: Path) -> Iterator[NetnsCluster]:
    cluster = NetnsCluster(network, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


class Nemesis:
    """Cuts and heals on a schedule, printing each step with its time."""

    def __init__(self, cluster: NetnsCluster, start: float) -> None:
        self.cluster = cluster
        self.start = start
        self.schedule: list[str] = []
        # (what, cut at, healed at), in time.monotonic().
        self.windows: list[tuple[str, float, float]] = []

    def note(self, text: str) -> float:
        now = time.monotonic()
        line = f"t={now - self.start:5.2f}s monotonic={now:.3f} {text}"
        print(f"[netns nemesis] {line}", flush=True)
        self.schedule.append(line)
        return now

    def wait_until(self, offset: float) -> None:
        time.sleep(max(0.0, self.start + offset - time.monotonic()))

    def leaders(self) -> dict[int, str]:
        leaders = self.cluster.leaders()
        self.note(f"leaders {dict(sorted(leaders.items()))}")
        return leaders

    def partition(
        self, member: str, peers: list[str], direction: Direction, seconds: float, what: str
    ) -> None:
        """Cut ``member`` from ``peers`` for ``seconds``, then heal."""
        self.cluster.network.cut(member, peers, direction)
        cut_at = self.note(f"cut {member} {direction} from {','.join(peers)}: {what}")
        time.sleep(seconds)
        self.cluster.network.heal(member)
        self.windows.append((f"{what} ({member})", cut_at, self.note(f"heal {member}")))

    def run(self) -> None:
        self.wait_until(3.0)
        leaders = self.leaders()
        # The node that leads the most groups, the meta group counting first on ties.
        victim = max(
            NODES,
            key=lambda member: (list(leaders.values()).count(member), leaders.get(0) == member),
        )
        everyone = [member for member in (*NODES, CLIENT) if member != victim]
        self.partition(victim, everyone, "both", 3.0, "isolate the busiest leader, router included")

        self.wait_until(8.0)
        victim = self.leaders().get(1, NODES[1])
        others = [member for member in NODES if member != victim]
        self.partition(victim, others, "in", 3.0, "one-way: group 1's leader hears no node")

        self.wait_until(13.0)
        victim = self.leaders().get(2, NODES[2])
        others = [member for member in NODES if member != victim]
        self.partition(victim, others, "both", 2.5, "group 2's leader cut from the nodes only")


def test_partitions_by_dropped_packets_keep_the_history_linearizable(
    netns_cluster: NetnsCluster,
) -> None:
    began = time.monotonic()
    netns_cluster.start()
    started = time.monotonic()
    out = netns_cluster.root / "history.jsonl"
    workload = netns_cluster.start_workload(WORKLOAD_SECONDS, out)
    nemesis = Nemesis(netns_cluster, time.monotonic())
    nemesis.note(f"workload started: {CLIENTS} clients for {WORKLOAD_SECONDS} s")
    try:
        nemesis.run()
    finally:
        netns_cluster.network.heal_all()
    try:
        status = workload.wait(WORKLOAD_SECONDS + HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the workload did not end:\n{netns_cluster.logs()}")
    nemesis.note(f"workload ended with status {status}")
    assert status == 0, netns_cluster.logs()

    # After healing, every group is led again and a fresh write is served.
    for _ in range(LEADERS_POLLS):
        leaders = netns_cluster.leaders()
        if set(leaders) == set(range(netns_cluster.settings.groups + 1)):
            break
        time.sleep(0.25)
    else:
        pytest.fail(f"not every group has a leader after healing: {leaders}")
    netns_cluster.helper("probe", "--router", netns_cluster.router_address)
    for name, process in netns_cluster.processes.items():
        assert name == "workload" or process.poll() is None, netns_cluster.logs()

    history = read_history(out)
    answered = [operation for operation in history if operation.ret is not None]
    for what, cut_at, healed_at in nemesis.windows:
        during = [op for op in answered if cut_at <= op.call <= healed_at]
        slowest = max((op.ret - op.call for op in during if op.ret is not None), default=0.0)
        print(f"[netns nemesis] {what}: {len(during)} answered, slowest {slowest:.2f} s")
    last_heal = nemesis.windows[-1][2]
    after = [op for op in answered if op.call > last_heal]
    checking = time.monotonic()
    result = check_history(history)
    print(
        f"[netns nemesis] {len(answered)} answered ({len(after)} after the last heal), "
        f"{len(history) - len(answered)} of unknown outcome; "
        f"cluster start {started - began:.1f} s, check {time.monotonic() - checking:.1f} s"
    )
    print("[netns nemesis] schedule:\n  " + "\n  ".join(nemesis.schedule))
    assert len(answered) > MIN_ANSWERED, f"only {len(answered)} operations were answered"
    assert after, "no operation was answered after the last heal"
    assert {operation.kind for operation in answered} == {"put", "get", "cas", "delete"}
    assert result.ok, result.explanation
    assert not result.timed_out
