"""Scripted reproductions of bugs the randomized simulation found.

Each test drives the simulator through the exact situation, so the bug stays
fixed even as the random scenarios change shape.
"""

from __future__ import annotations

from shardkv.raft import ConfChange, ConfChangeType, Message, MessageType
from tests.checkers import check_history
from tests.sim.cluster import Cluster, ClusterOptions, SimNode


def _elect(cluster: Cluster, bound: int = 200) -> SimNode:
    for _ in range(bound):
        cluster.step()
        leader = cluster.leader()
        if leader is not None and leader.raw is not None:
            raft = leader.raw.raft
            if raft.log.term(raft.log.committed) == raft.term:
                return leader
    raise AssertionError("no leader elected")


def _change(cluster: Cluster, change: ConfChange, bound: int = 200) -> None:
    leader = _elect(cluster)
    assert leader.raw is not None
    index, _ = leader.raw.propose_conf_change(change)
    for _ in range(bound):
        cluster.step()
        if leader.applied >= index:
            return
    raise AssertionError(f"{change} was not applied")


def _write(cluster: Cluster, operations: int, bound: int = 2000) -> None:
    cluster.add_client(ops=operations)
    for _ in range(bound):
        cluster.step()
        if cluster.clients_idle() and all(c.ops_left == 0 for c in cluster.clients.values()):
            return
    raise AssertionError("client operations did not finish")


def _caught_up(cluster: Cluster, node_id: int, bound: int = 500) -> bool:
    for _ in range(bound):
        cluster.step()
        leader = cluster.leader()
        node = cluster.nodes[node_id]
        if leader is not None and leader.raw is not None and node.applied == leader.applied:
            return True
    return False


def test_new_member_learns_the_configuration_it_joins() -> None:
    """§6: a member added to a running group must learn the whole configuration.

    Found as: a joiner with an empty log replayed only the two changes that
    added it, believed it was the only voter, and elected itself.
    """
    cluster = Cluster(seed=1, voters=3, options=ClusterOptions(), spares=1)
    _write(cluster, 5)
    _change(cluster, ConfChange(ConfChangeType.ADD_LEARNER, 4))
    _change(cluster, ConfChange(ConfChangeType.ADD_VOTER, 4))
    assert _caught_up(cluster, 4)
    node = cluster.nodes[4]
    assert node.raw is not None
    assert node.raw.raft.voters == {1, 2, 3, 4}


def test_snapshot_older_than_the_new_member_is_installed() -> None:
    """§7: a snapshot taken before a learner was added still brings it up to date.

    Found as: the learner refused the snapshot because it was not in its
    configuration, and the leader resent it forever.
    """
    options = ClusterOptions(snapshot_interval=10, compaction_lag=0)
    cluster = Cluster(seed=2, voters=3, options=options, spares=1)
    _write(cluster, 12)
    leader = _elect(cluster)
    assert leader.storage.snapshot().metadata.index > 1
    _change(cluster, ConfChange(ConfChangeType.ADD_LEARNER, 4))
    assert 4 not in leader.storage.snapshot().metadata.conf_state.learners
    assert _caught_up(cluster, 4)
    assert cluster.stats.snapshots_installed >= 1


def test_lost_answer_to_the_last_snapshot_chunk() -> None:
    """§7: losing the follower's answer to the final chunk must not stall it.

    Found as: the leader resent from the end offset, the follower (whose
    buffer was gone) asked for offset 0, and the leader ignored it forever.
    """
    options = ClusterOptions(snapshot_interval=5, compaction_lag=0, snapshot_chunk_size=16)
    cluster = Cluster(seed=3, voters=3, options=options)
    leader = _elect(cluster)
    lagging = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)
    cluster.network.isolate(lagging, cluster.nodes)
    _write(cluster, 20)
    cluster.network.heal()
    dropped: list[Message] = []

    def drop_first_answer_after_install(message: Message) -> bool:
        if (
            not dropped
            and message.from_ == lagging
            and message.type == MessageType.APPEND_RESPONSE
            and not message.reject
            and message.index == leader.storage.snapshot().metadata.index
        ):
            dropped.append(message)
            return True
        return False

    cluster.network.drop_filter = drop_first_answer_after_install
    assert _caught_up(cluster, lagging)
    assert dropped, "the scenario must actually lose that answer"


def test_duplicated_chunks_do_not_multiply_traffic() -> None:
    """§7: duplicates are acknowledged, not rejected; one lost chunk costs one resend.

    Found as: every duplicate drew a rejection, every rejection resent the
    window, and traffic grew without bound.
    """
    options = ClusterOptions(snapshot_interval=5, compaction_lag=0, snapshot_chunk_size=8)
    cluster = Cluster(seed=4, voters=3, options=options)
    cluster.key_count = 40
    leader = _elect(cluster)
    lagging = next(node_id for node_id in cluster.nodes if node_id != leader.node_id)
    cluster.network.isolate(lagging, cluster.nodes)
    _write(cluster, 60)
    cluster.network.heal()
    cluster.network.duplicate_rate = 0.5
    chunks: list[int] = []
    limit = 4 * (len(leader.storage.snapshot().data) // 8 + 1)

    def count_chunks(message: Message) -> bool:
        if message.type == MessageType.SNAPSHOT:
            chunks.append(message.snapshot_offset)
            assert len(chunks) <= limit, "snapshot chunks are multiplying"
        return False

    cluster.network.drop_filter = count_chunks
    assert _caught_up(cluster, lagging)
    assert len(chunks) > 8, "the follower must have been sent a snapshot of many chunks"


def test_restart_after_snapshot_does_not_apply_twice() -> None:
    """A restarted node resumes after its snapshot, not before it.

    Found as: the log still held entries behind the snapshot, and a node that
    restored the snapshot was handed them again (caught by check_apply).
    """
    options = ClusterOptions(snapshot_interval=5, compaction_lag=10)
    cluster = Cluster(seed=5, voters=3, options=options)
    _write(cluster, 15)
    for node_id in list(cluster.nodes):
        cluster.crash(node_id)
    cluster.restart_all()
    _write(cluster, 5)
    assert check_history(cluster.history).ok
