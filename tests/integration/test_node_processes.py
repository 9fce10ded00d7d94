"""Real ``shardkv-node`` processes on 127.0.0.1: what only real processes show.

Crashes (SIGKILL) of one node and of all of them, a restart that catches up,
a wiped follower that catches up by snapshot, and a node refusing to start on
bad local resources. Protocol logic is the simulator's job (tests/sim); here
the point is gRPC, RocksDB and process lifecycles together.

Every test starts its own cluster under ``tmp_path`` (node logs there too);
the harness is in conftest.py.
"""

from __future__ import annotations

import collections
import socket
import subprocess
import time
from functools import partial

import pytest

from shardkv.node.config import load_config
from shardkv.node.data_dir import prepare_data_dir
from shardkv.node.process import ENGINE_DIR
from shardkv.storage import Engine, GroupStorage
from shardkv.v1 import node_pb2
from tests.integration.conftest import (
    READY_TIMEOUT,
    ClusterClient,
    MakeCluster,
    Settings,
    clean_environment,
    node_command,
    put_command,
    wait_until,
)
from tests.ports import free_ports
from tests.unit.engines import replayed

pytestmark = pytest.mark.integration

CATCH_UP_TIMEOUT = 30.0


def read_all(
    client: ClusterClient, expected: dict[bytes, tuple[int, bytes]]
) -> dict[bytes, tuple[bytes, int]]:
    """Read every key of ``expected`` (key -> (group, value)) from its group's leader."""
    by_group: dict[int, list[bytes]] = collections.defaultdict(list)
    for key, (group_id, _) in expected.items():
        by_group[group_id].append(key)
    found: dict[bytes, tuple[bytes, int]] = {}
    for group_id, keys in sorted(by_group.items()):
        for kv in client.read(group_id, keys).values():
            found[kv.key] = (kv.value, kv.version)
    return found


def test_every_group_takes_writes_through_its_leader(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(Settings(nodes=3, groups=16))
    cluster.start_all()
    leaders = cluster.wait_leaders()
    assert set(leaders) == {0, *cluster.group_ids}
    client = ClusterClient(cluster, client_id=1)
    expected: dict[bytes, tuple[int, bytes]] = {}
    for group_id in cluster.group_ids:
        for index in range(5):
            key = cluster.key(group_id, f"k{index}")
            value = b"value of " + key
            client.put(group_id, key, value)
            expected[key] = (group_id, value)

    found = read_all(client, expected)
    assert found == {key: (value, 1) for key, (_, value) in expected.items()}
    for node_id in cluster.running():
        wait_until(f"node {node_id} to apply every write", partial(cluster.caught_up, node_id))
        statuses = cluster.group_statuses(node_id)
        assert statuses is not None
        for group_id in cluster.group_ids:
            assert list(statuses[group_id].voters) == [1, 2, 3]
            assert statuses[group_id].key_count == 5


def test_crash_of_the_busiest_leader_loses_no_acknowledged_write(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(Settings(nodes=3, groups=16))
    cluster.start_all()
    leaders = cluster.wait_leaders()
    led = collections.Counter(leaders[group_id] for group_id in cluster.group_ids)
    victim, victim_groups = led.most_common(1)[0]
    client = ClusterClient(cluster, client_id=2, timeout=15.0)
    acknowledged: dict[bytes, tuple[int, bytes]] = {}
    started = killed_at = time.monotonic()
    for index in range(300):
        if index == 60:
            cluster.kill(victim)
            killed_at = time.monotonic()
        group_id = cluster.group_ids[index % len(cluster.group_ids)]
        key = cluster.key(group_id, f"w{index:04d}")
        value = f"{key.decode()} in group {group_id}".encode()
        # put() retries NOT_LEADER and UNAVAILABLE with the same seq, and
        # fails the test if the write is not acknowledged within its timeout.
        client.put(group_id, key, value)
        acknowledged[key] = (group_id, value)
    elapsed = time.monotonic() - started
    print(
        f"killed node {victim} (led {victim_groups} groups) after 60 writes; 300 writes took "
        f"{elapsed:.1f} s with {client.retries} retries"
    )
    assert elapsed < 25.0, f"300 writes took {elapsed:.1f} s"
    assert client.retries > 0, "the crash should have made some writes retry"

    new_leaders = cluster.wait_leaders()
    assert victim not in new_leaders.values()
    found = read_all(client, acknowledged)
    assert found == {key: (value, 1) for key, (_, value) in acknowledged.items()}

    cluster.start(victim)
    wait_until(
        f"node {victim} (led {victim_groups} groups, crashed "
        f"{time.monotonic() - killed_at:.1f} s ago) to catch up",
        partial(cluster.caught_up, victim),
        CATCH_UP_TIMEOUT,
    )


def test_crash_of_every_node_keeps_every_write_exactly_once(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(Settings(nodes=3, groups=16))
    cluster.start_all()
    cluster.wait_leaders()
    client = ClusterClient(cluster, client_id=3)
    # key -> (group, value, version): "once" keys written once, "thrice" three times.
    expected: dict[bytes, tuple[int, bytes, int]] = {}
    for group_id in cluster.group_ids:
        once = cluster.key(group_id, "once")
        client.put(group_id, once, b"only")
        expected[once] = (group_id, b"only", 1)
        thrice = cluster.key(group_id, "thrice")
        for version in (1, 2, 3):
            client.put(group_id, thrice, f"v{version}".encode())
        expected[thrice] = (group_id, b"v3", 3)
    last = cluster.key(1, "last")
    last_command = put_command(client.client_id, client.next_seq(), last, b"last")
    last_result = client.write(1, last_command)
    expected[last] = (1, b"last", 1)

    for node_id in cluster.running():
        cluster.kill(node_id)
    cluster.start_all()
    cluster.wait_leaders()

    found = read_all(client, {key: (group, value) for key, (group, value, _) in expected.items()})
    assert found == {key: (value, version) for key, (_, value, version) in expected.items()}
    # The session survived the crash: a retry of the last write is answered
    # from it, not applied again.
    again = client.write(1, last_command)
    assert again == replayed(last_result), "answered from the session, marked replayed"
    assert client.read(1, [last])[last].version == 1
    # And the cluster takes new writes.
    after = cluster.key(2, "after")
    client.put(2, after, b"after")
    assert client.read(2, [after])[after].value == b"after"


def test_wiped_follower_catches_up_by_snapshot(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(Settings(nodes=3, groups=4, snapshot_interval_entries=50))
    cluster.start_all()
    leaders = cluster.wait_leaders()
    group_id = 1
    leader = leaders[group_id]
    client = ClusterClient(cluster, client_id=4)
    for index in range(250):
        client.put(group_id, cluster.key(group_id, f"s{index:04d}"), b"x" * 100)

    def compacted() -> bool:
        statuses = cluster.group_statuses(leader)
        return statuses is not None and statuses[group_id].first_index > 2

    # Entries from the start are gone from the leader's log: a replica that
    # starts from nothing can only catch up by snapshot.
    wait_until(f"node {leader} to compact group {group_id}'s log", compacted)

    follower = next(node_id for node_id in cluster.running() if node_id != leader)
    cluster.stop(follower)
    cluster.wipe(follower)
    for index in range(250, 270):
        client.put(group_id, cluster.key(group_id, f"s{index:04d}"), b"y" * 100)
    cluster.start(follower)
    wait_until(
        f"wiped node {follower} to catch up",
        partial(cluster.caught_up, follower),
        CATCH_UP_TIMEOUT,
    )
    statuses = cluster.group_statuses(follower)
    assert statuses is not None
    assert statuses[group_id].key_count == 270
    assert statuses[group_id].first_index > 2, "its log should start after a snapshot"


def test_start_interrupted_while_bootstrapping_bootstraps_the_rest(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(Settings(nodes=1, groups=3))
    config = load_config(cluster.node_arguments(1), {})
    # What a crash after the first group's bootstrap write leaves: IDENTITY
    # not yet marked bootstrapped, one group with its initial Raft state.
    state = prepare_data_dir(config)
    with Engine(state.path / ENGINE_DIR) as engine:
        GroupStorage(engine, 2).bootstrap(config.groups[2])
    cluster.start(1)
    cluster.wait_leaders()
    client = ClusterClient(cluster, client_id=5)
    for group_id in cluster.group_ids:
        key = cluster.key(group_id, "k")
        client.put(group_id, key, b"v")
        assert client.read(group_id, [key])[key].version == 1
    assert '"bootstrapped": true' in (state.path / "IDENTITY").read_text()


def test_bad_local_resources_stop_the_node_with_a_clear_message(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(Settings(nodes=1, groups=1, cluster_id="other"))
    cluster.start(1)
    data_dir = cluster.data_dir(1)

    def run_node(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            node_command("--node-id", "1", *arguments),
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT,
            env=clean_environment(),
            cwd=cluster.root,
            check=False,
        )

    # The listen port is held by a process that is not a node.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        fresh_dir = cluster.root / "never-created"
        result = run_node("--listen", taken, "--data-dir", str(fresh_dir))
    assert result.returncode == 2, result.stderr
    assert f"address {taken} is in use by another process; pick another --listen" in (result.stderr)
    assert not fresh_dir.exists(), "the node must check its port before touching its data"

    # The data dir is open in the running node.
    result = run_node(
        "--config",
        str(cluster.config_path),
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{free_ports(1)[0]}",
        "--advertise",
        cluster.addresses[1],
    )
    assert result.returncode == 2, result.stderr
    assert f"data dir {data_dir} (from flag --data-dir) is in use by another process" in (
        result.stderr
    )

    # The data dir belongs to another cluster (the node stopped cleanly first).
    cluster.stop(1)
    result = run_node(
        "--cluster-id",
        "mine",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{free_ports(1)[0]}",
    )
    assert result.returncode == 2, result.stderr
    assert (
        f"data dir {data_dir} belongs to cluster other node 1, not to cluster mine node 1; "
        "use another --data-dir or remove it"
    ) in result.stderr


def test_a_new_node_joins_through_any_member(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(Settings(nodes=3, groups=2))
    cluster.start_all()
    leaders = cluster.wait_leaders()
    # Through a member that does not lead the meta group: it answers NOT_LEADER.
    via = next(node_id for node_id in (1, 2, 3) if node_id != leaders[0])
    cluster.add_joiner(4, via=via)
    cluster.start(4)

    def members(node_id: int) -> list[int]:
        response = cluster.stub(node_id).GetClusterMap(node_pb2.GetClusterMapRequest(), timeout=2)
        return [node.node_id for node in response.map.nodes]

    wait_until(
        "every node to know node 4",
        lambda: all(members(node_id) == [1, 2, 3, 4] for node_id in (1, 2, 3, 4)),
    )
    versions = {
        cluster.stub(node_id).GetClusterMap(node_pb2.GetClusterMapRequest(), timeout=2).map.version
        for node_id in (1, 2, 3, 4)
    }
    assert versions == {2}, "the join changed the map once: version 1 -> 2"
    statuses = cluster.group_statuses(4)
    assert statuses == {}, "a joined node hosts no group until one is placed on it"
    # A restart joins again: a no-op.
    cluster.stop(4)
    cluster.start(4)
    assert members(4) == [1, 2, 3, 4]

    # Refused with exit status 2: a node of another cluster, and a node
    # claiming node 4's address.
    (port,) = free_ports(1)
    for cluster_id, reason in (
        ("other", "belongs to cluster 'other'"),
        ("itest", "already a member"),
    ):
        refused = subprocess.run(
            node_command(
                "--node-id=5",
                f"--cluster-id={cluster_id}",
                f"--listen=127.0.0.1:{port}",
                f"--advertise={cluster.addresses[4]}",
                f"--join={cluster.addresses[1]}",
                f"--data-dir={cluster.root / 'node-5'}",
            ),
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT,
            env=clean_environment(),
            cwd=cluster.root,
            check=False,
        )
        assert refused.returncode == 2, refused.stderr
        assert reason in refused.stderr


def test_leaders_spread_to_each_groups_preferred_node(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(Settings(nodes=3, groups=8))
    cluster.start_all()
    # Every group is on nodes 1, 2, 3; group g prefers the (g mod 3)-th of them.
    preferred = {group_id: (1, 2, 3)[group_id % 3] for group_id in (0, *cluster.group_ids)}

    def spread() -> dict[int, int] | None:
        leaders = cluster.leaders()
        return leaders if leaders == preferred else None

    wait_until("every group to be led by its preferred node", spread)
