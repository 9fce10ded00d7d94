"""Snapshots (§7), membership (§6), leadership transfer and reads.

Section numbers are the Raft paper's (Ongaro & Ousterhout, 2014) unless they
say "dissertation" (Ongaro, 2014): leadership transfer is its §3.10, reads
its §6.4, single-server membership changes its §4.
"""

from __future__ import annotations

import pytest

from shardkv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Message,
    MessageType,
    ProgressState,
    ProposalDropped,
    ReadState,
    Role,
)
from tests.unit.raft_harness import Harness

ELECTION_TICK = 10
SNAPSHOT_DATA = bytes(range(100))


def _change(kind: ConfChangeType, node_id: int) -> ConfChange:
    return ConfChange(kind, node_id)


# -- §7 log compaction --------------------------------------------------------------


def _follower_behind_a_snapshot(chunk_size: int = 16) -> Harness:
    """Node 3 misses 20 entries, which node 1 (the leader) then compacts away."""
    h = Harness(3, snapshot_chunk_size=chunk_size)
    h.elect(1)
    h.isolate(3)
    for position in range(20):
        h.propose(1, f"v{position}".encode())
    applied = h.applied_index[1]
    storage = h.storages[1]
    storage.create_snapshot(applied, h.conf_states[1], SNAPSHOT_DATA)
    storage.compact(applied)
    h.heal()
    return h


def _snapshot_chunks(h: Harness) -> list[Message]:
    return h.messages(MessageType.SNAPSHOT, from_=1, to=3)


def test_lagging_follower_gets_the_snapshot_in_chunks_then_appends() -> None:
    """§7: a follower whose next entry was compacted receives the snapshot
    (InstallSnapshot, split at ``offset`` into chunks, the last one ``done``),
    restores it, and then catches up by ordinary appends."""
    h = _follower_behind_a_snapshot()
    h.tick(1)  # a heartbeat answer shows node 3 behind
    chunks = _snapshot_chunks(h)
    assert [m.snapshot_offset for m in chunks] == list(range(0, 100, 16))
    assert [m.snapshot_done for m in chunks] == [False] * 6 + [True]
    assert all(m.snapshot is not None and m.snapshot.metadata.index == 22 for m in chunks)
    (restored,) = h.snapshots[3]
    assert (restored.metadata.index, restored.data) == (22, SNAPSHOT_DATA)
    assert h.storages[3].snapshot().metadata.index == 22

    h.propose(1, b"after the snapshot")
    assert h.applied_data(3) == [b"after the snapshot"]
    assert h.log_terms(3) == h.log_terms(1) == [(23, 2)]
    assert h.nodes[1].status().peers[3].state == ProgressState.REPLICATE


def test_lost_snapshot_chunk_is_sent_again() -> None:
    """§7: when a chunk is lost the follower names the offset it expects and
    the leader resends from there; the restored image is exact."""
    h = _follower_behind_a_snapshot()
    lost: list[Message] = []

    def drop(message: Message) -> bool:
        if message.type == MessageType.SNAPSHOT and message.snapshot_offset == 32 and not lost:
            lost.append(message)
            return True
        return False

    h.drop = drop
    h.tick(1, times=6)
    assert lost
    assert [m.snapshot_offset for m in _snapshot_chunks(h)].count(32) == 2
    rejections = [m for m in h.messages(MessageType.SNAPSHOT_RESPONSE, from_=3) if m.reject]
    assert rejections and all(m.snapshot_offset == 32 for m in rejections)
    (restored,) = h.snapshots[3]
    assert restored.data == SNAPSHOT_DATA
    h.propose(1, b"after")
    assert h.applied_data(3) == [b"after"]


def test_duplicated_snapshot_chunks_are_harmless() -> None:
    """§7: a chunk delivered twice, or the whole snapshot delivered again after
    the follower restored it, changes nothing: one exact restore."""
    h = _follower_behind_a_snapshot()
    h.duplicate = lambda m: m.type == MessageType.SNAPSHOT
    h.tick(1)
    (restored,) = h.snapshots[3]
    assert restored.data == SNAPSHOT_DATA
    h.duplicate = None
    h.propose(1, b"after")
    before = (h.log_terms(3), h.raft(3).log.committed)

    for chunk in _snapshot_chunks(h):
        h.deliver(chunk)
    h.deliver_all()
    assert len(h.snapshots[3]) == 1
    assert (h.log_terms(3), h.raft(3).log.committed) == before
    assert h.applied_data(3) == [b"after"]


# -- §6 membership (single-server changes, dissertation §4) ------------------------------


def _group_with_learner() -> Harness:
    """Voters 1 and 2, and node 3 added as a learner (it starts empty)."""
    h = Harness((1, 2))
    h.add_node(3)
    h.elect(1)
    h.nodes[1].propose_conf_change(_change(ConfChangeType.ADD_LEARNER, 3))
    h.deliver_all()
    h.tick(1)  # the leader contacts the new member with its next heartbeat
    for node_id in (1, 2, 3):
        assert h.conf_states[node_id].voters == (1, 2)
        assert h.conf_states[node_id].learners == (3,)
    return h


def test_learner_receives_entries() -> None:
    """§6 / dissertation §4.2.1: a new server joins as a non-voting member,
    first through the snapshot (the bootstrap one here), then by appends."""
    h = _group_with_learner()
    assert h.snapshots[3][0].metadata.index == 1
    h.propose(1, b"x")
    assert h.applied_data(3) == [b"x"]
    assert h.log_terms(3) == h.log_terms(1)


def test_learner_does_not_count_for_commit() -> None:
    """§6 / dissertation §4.2.1: a learner's acknowledgement never makes a
    quorum; with the other voter cut off, entries reach it but stay uncommitted."""
    h = _group_with_learner()
    committed = h.raft(1).log.committed
    h.cut(1, 2)
    index, _ = h.propose(1, b"y")
    assert h.raft(3).log.last_index() == index
    assert h.raft(1).log.committed == committed
    h.heal()
    h.tick(1)
    assert h.raft(1).log.committed == index


def test_learner_neither_campaigns_nor_is_asked_to_vote() -> None:
    """§6 / dissertation §4.2.1: a learner never starts an election and its
    vote is not sought: with the leader gone, voter 2 alone cannot win."""
    h = _group_with_learner()
    mark = len(h.sent)
    h.isolate(1)
    h.tick(2, 3, times=5 * ELECTION_TICK)
    assert h.raft(3).role == Role.FOLLOWER
    assert h.raft(2).role != Role.LEADER
    vote_types = (MessageType.PRE_VOTE, MessageType.VOTE)
    votes = [m for m in h.sent[mark:] if m.type in vote_types]
    assert votes and all(m.from_ == 2 and m.to == 1 for m in votes)


def test_promoted_learner_counts_for_commit_and_can_lead() -> None:
    """§6: once promoted, the former learner is a voter: it makes a quorum
    with the leader, and it can be elected."""
    h = _group_with_learner()
    h.nodes[1].propose_conf_change(_change(ConfChangeType.ADD_VOTER, 3))
    h.deliver_all()
    assert h.conf_states[1].voters == (1, 2, 3) and h.conf_states[1].learners == ()
    h.cut(1, 2)
    index, _ = h.propose(1, b"z")
    assert h.raft(1).log.committed == index

    h.heal()
    h.isolate(1)
    for _ in range(5 * ELECTION_TICK):
        h.tick(2, 3)
        if h.leader() in (2, 3):
            break
    assert h.leader() in (2, 3)


def test_removed_voter_no_longer_counts() -> None:
    """§6: after a voter's removal is applied, the quorum is the remaining
    voters': node 3 no longer helps commit, and gets no more entries."""
    h = Harness(3)
    h.elect(1)
    h.cut(1, 2)
    index, _ = h.propose(1, b"with 3")
    assert h.raft(1).log.committed == index, "before the removal, node 3 counts"
    h.heal()

    h.nodes[1].propose_conf_change(_change(ConfChangeType.REMOVE_NODE, 3))
    h.deliver_all()
    assert h.conf_states[1].voters == (1, 2)
    h.cut(1, 2)
    mark = len(h.sent)
    index, _ = h.propose(1, b"without 3")
    assert h.raft(1).log.committed < index
    assert not h.messages(MessageType.APPEND, to=3, since=mark)


def test_removing_the_leader_makes_it_step_down() -> None:
    """§6 / dissertation §4.2.2: a leader that removes itself keeps leading
    until the change is committed and applied, then steps down; the others
    elect a leader and the removed node never campaigns."""
    h = Harness(3)
    h.elect(1)
    h.nodes[1].propose_conf_change(_change(ConfChangeType.REMOVE_NODE, 1))
    assert h.raft(1).role == Role.LEADER
    h.deliver_all()
    assert h.raft(1).role == Role.FOLLOWER
    assert all(h.conf_states[node_id].voters == (2, 3) for node_id in (1, 2, 3))

    mark = len(h.sent)
    for _ in range(5 * ELECTION_TICK):
        h.tick()
        if h.leader():
            break
    assert h.leader() in (2, 3) and h.raft(h.leader()).term > 2
    assert not [m for m in h.sent[mark:] if m.from_ == 1]


def test_only_one_conf_change_pending_at_a_time() -> None:
    """§6 / dissertation §4.1: a new change may start only once the previous
    one is applied; a second proposal is dropped until then. Other proposals
    are unaffected."""
    h = Harness(3)
    h.elect(1)
    h.nodes[1].propose_conf_change(_change(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped):
        h.nodes[1].propose_conf_change(_change(ConfChangeType.ADD_LEARNER, 5))
    h.nodes[1].propose(b"data is fine")
    h.deliver_all()
    assert h.conf_states[1] == ConfState(voters=(1, 2, 3), learners=(4,))
    h.nodes[1].propose_conf_change(_change(ConfChangeType.ADD_LEARNER, 5))
    h.deliver_all()
    assert h.conf_states[1] == ConfState(voters=(1, 2, 3), learners=(4, 5))


def test_new_leader_proposes_no_change_before_applying_its_log() -> None:
    """Dissertation §4.1 (and Ongaro's 2015 single-server bug fix): a new
    leader whose log may hold an uncommitted change from an earlier term
    proposes none until it has applied everything in its log."""
    h = Harness(3, check_quorum=False)
    h.elect(1)
    # Node 1's change reaches node 2 only, and node 1 never learns it did.
    h.drop = lambda m: (
        (m.type == MessageType.APPEND and m.to == 3)
        or (m.type == MessageType.APPEND_RESPONSE and m.from_ == 2)
    )
    h.nodes[1].propose_conf_change(_change(ConfChangeType.ADD_LEARNER, 4))
    h.deliver_all()
    assert h.raft(2).log.last_index() == 3 and h.raft(2).log.committed == 2

    h.isolate(1)
    h.drop = lambda m: m.type == MessageType.APPEND and m.from_ == 2
    h.nodes[2].campaign()
    h.deliver_all()
    assert (h.raft(2).role, h.raft(2).term) == (Role.LEADER, 3)
    with pytest.raises(ProposalDropped):
        h.nodes[2].propose_conf_change(_change(ConfChangeType.ADD_LEARNER, 5))

    h.drop = None
    h.tick(2)
    assert h.conf_states[2].learners == (4,), "the old term's change committed and applied"
    h.nodes[2].propose_conf_change(_change(ConfChangeType.ADD_LEARNER, 5))


# -- dissertation §3.10 leadership transfer ---------------------------------------------


def test_transfer_to_an_up_to_date_follower() -> None:
    """Dissertation §3.10: the leader sends TIMEOUT_NOW to a caught-up
    transferee, which campaigns at once (no pre-vote) and wins even though
    the other follower still hears the old leader."""
    h = Harness(3)
    h.elect(1)
    h.tick(times=2)
    h.nodes[1].transfer_leadership(2)
    h.deliver_all()
    assert h.messages(MessageType.TIMEOUT_NOW, from_=1, to=2)
    assert not h.messages(MessageType.PRE_VOTE, from_=2)
    assert (h.leader(), h.raft(2).term) == (2, 3)
    assert h.raft(1).role == Role.FOLLOWER


def test_transfer_to_a_lagging_node_catches_it_up_first() -> None:
    """Dissertation §3.10: the leader first brings the transferee's log up to
    date, and only then sends TIMEOUT_NOW; proposals are dropped meanwhile."""
    h = Harness(3)
    h.elect(1)
    h.cut(1, 3)
    for position in range(5):
        h.propose(1, f"v{position}".encode())
    h.heal()
    h.drop = lambda m: m.type == MessageType.APPEND and m.to == 3
    h.nodes[1].transfer_leadership(3)
    h.tick(1, times=3)
    assert not h.messages(MessageType.TIMEOUT_NOW)
    with pytest.raises(ProposalDropped) as dropped:
        h.nodes[1].propose(b"during the transfer")
    assert dropped.value.leader_id == 3

    h.drop = None
    mark = len(h.sent)
    h.tick(1)
    sent = h.sent[mark:]
    timeout_now = [p for p, m in enumerate(sent) if m.type == MessageType.TIMEOUT_NOW]
    caught_up = [
        p
        for p, m in enumerate(sent)
        if m.type == MessageType.APPEND_RESPONSE and m.from_ == 3 and m.index == 7
    ]
    assert timeout_now and caught_up and caught_up[0] < timeout_now[0]
    assert h.leader() == 3
    assert [e.data for e in h.applied[3] if e.data][-1] == b"v4"


def test_transfer_to_unreachable_node_is_aborted_after_an_election_timeout() -> None:
    """Dissertation §3.10: a transfer that does not finish within an election
    timeout is aborted; the leader stays and takes proposals again."""
    h = Harness(3)
    h.elect(1)
    h.isolate(3)
    h.nodes[1].transfer_leadership(3)
    for _ in range(ELECTION_TICK - 1):
        h.tick(1, 2)
        with pytest.raises(ProposalDropped):
            h.nodes[1].propose(b"during the transfer")
    h.tick(1, 2)
    h.propose(1, b"after the abort")
    assert (h.leader(), h.raft(1).term) == (1, 2)
    assert h.applied_data(2) == [b"after the abort"]


# -- dissertation §6.4 reads ---------------------------------------------------------------


def test_read_index_waits_for_a_quorum_heartbeat_round() -> None:
    """Dissertation §6.4: ReadIndex records the commit index, then serves the
    read only after a quorum acknowledged a heartbeat sent after the request."""
    h = Harness(5)
    h.elect(1)
    answering = {2}
    h.drop = lambda m: m.type == MessageType.HEARTBEAT_RESPONSE and m.from_ not in answering
    h.nodes[1].read_index(b"r1")
    h.deliver_all()
    assert [m.context for m in h.messages(MessageType.HEARTBEAT, from_=1)] == [b"r1"] * 4
    assert h.read_states[1] == [], "two of five is no quorum"

    answering.add(3)
    h.tick(1)
    assert h.read_states[1] == [ReadState(2, b"r1")]


def test_new_leader_defers_reads_until_its_term_commits() -> None:
    """Dissertation §6.4 (and paper §8): a new leader does not know the commit
    index until an entry of its own term commits, so it holds reads until then."""
    h = Harness(3)
    h.drop = lambda m: m.type == MessageType.APPEND and m.from_ == 1
    h.elect(1)
    h.nodes[1].read_index(b"early")
    h.tick(1, times=3)  # heartbeats are answered, but the no-op is lost
    assert h.raft(1).log.committed == 1
    assert h.read_states[1] == []

    h.drop = None
    h.tick(1)
    assert h.raft(1).log.committed == 2
    assert h.read_states[1] == [ReadState(2, b"early")]


@pytest.mark.parametrize("check_quorum", [True, False])
def test_leader_cut_off_from_the_majority_never_completes_a_read(check_quorum: bool) -> None:
    """Dissertation §6.4: a deposed leader that cannot reach a quorum never
    serves a ReadIndex read, while the majority elects a leader and writes."""
    h = Harness(3, check_quorum=check_quorum)
    h.elect(1)
    h.isolate(1)
    h.nodes[1].read_index(b"stale?")
    for _ in range(10 * ELECTION_TICK):
        h.tick()
        if h.leader() in (2, 3):
            break
    assert h.leader() in (2, 3), "the majority elected a leader"
    h.propose(h.leader(), b"newer")
    h.tick(times=5 * ELECTION_TICK)
    assert h.read_states[1] == []


def test_lease_read_is_served_without_a_round_trip_while_the_lease_holds() -> None:
    """Dissertation §6.4.1: with leases, the leader answers a read at once,
    sending nothing, while a quorum acknowledged a heartbeat sent less than
    election_tick ticks ago; afterwards it falls back to a heartbeat round."""
    h = Harness(3, lease_reads=True)
    h.elect(1)
    h.tick(times=2)
    assert h.raft(1).lease_valid()
    h.nodes[1].read_index(b"fast")
    assert h.process_ready(1) == []
    assert h.read_states[1] == [ReadState(2, b"fast")]

    h.isolate(1)
    valid_ticks = 0
    while h.raft(1).lease_valid():
        h.tick(1)
        valid_ticks += 1
        assert valid_ticks <= ELECTION_TICK
    h.nodes[1].read_index(b"slow")
    assert h.process_ready(1) != []
    assert h.read_states[1] == [ReadState(2, b"fast")]


@pytest.mark.parametrize("seed", range(10))
def test_lease_expires_before_another_leader_can_be_elected(seed: int) -> None:
    """Dissertation §6.4.1: the leader's lease must end before any follower
    would vote for a new leader; check it tick by tick through a partition."""
    h = Harness(3, lease_reads=True, seed=seed)
    h.elect(1)
    h.tick(times=3)
    h.isolate(1)
    lease_seen = False
    for _ in range(5 * ELECTION_TICK):
        h.tick()
        lease_seen = lease_seen or h.raft(1).lease_valid()
        if h.leader() in (2, 3):
            assert not h.raft(1).lease_valid(), "two leaders could serve reads"
    assert lease_seen
    assert h.leader() in (2, 3)


def test_no_lease_read_after_timeout_now() -> None:
    """Dissertation §3.10 and §6.4.1: once the leader has sent TIMEOUT_NOW the
    transferee may win without waiting out the followers' leases, so the old
    leader serves no lease read again in its term, even if the transfer fails."""
    h = Harness(3, lease_reads=True)
    h.elect(1)
    h.tick(times=2)
    assert h.raft(1).lease_valid()
    h.drop = lambda m: m.type == MessageType.TIMEOUT_NOW
    h.nodes[1].transfer_leadership(2)
    h.deliver_all()
    assert h.messages(MessageType.TIMEOUT_NOW)
    assert not h.raft(1).lease_valid()

    h.tick(1, 2, 3, times=ELECTION_TICK)
    assert h.raft(1).lead_transferee == 0 and h.leader() == 1
    assert not h.raft(1).lease_valid()
    h.nodes[1].read_index(b"r")
    assert h.raft(1).read_states == []
    h.deliver_all()
    assert h.read_states[1] == [ReadState(2, b"r")]
