"""Log replication: §5.3, flow control, §5.4.2 (figure 8), §5.4.3, persistence.

Section numbers are the Raft paper's (Ongaro & Ousterhout, 2014). Index 1 is
the bootstrap snapshot (term 1) on every member, so the paper's figures, whose
logs start with an entry of term 1 at index 1, keep their indexes here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shardkv.raft import EntryType, Message, MessageType, ProgressState, Role
from shardkv.raft.quorum import committed_index
from shardkv.raft.types import Entry
from tests.unit.raft_harness import Harness, storage_with_log

ELECTION_TICK = 10


def _append(
    *,
    to: int,
    term: int,
    prev: tuple[int, int],
    entries: list[Entry],
    commit: int = 1,
    leader: int = 1,
) -> Message:
    index, log_term = prev
    return Message(
        MessageType.APPEND,
        to=to,
        from_=leader,
        term=term,
        index=index,
        log_term=log_term,
        entries=entries,
        commit=commit,
    )


def _entries(first_index: int, terms: list[int]) -> list[Entry]:
    return [Entry(term=term, index=first_index + offset) for offset, term in enumerate(terms)]


def _rejections(h: Harness, follower: int) -> int:
    return sum(m.reject for m in h.messages(MessageType.APPEND_RESPONSE, from_=follower))


# -- §5.3 log matching ------------------------------------------------------------


@pytest.mark.parametrize(
    ("prev", "accepted"),
    [
        ((3, 3), False),  # index 3 is there, of another term
        ((4, 2), False),  # past the follower's last index
        ((3, 2), True),
        ((1, 1), True),
    ],
)
def test_follower_rejects_append_whose_previous_entry_mismatches(
    prev: tuple[int, int], accepted: bool
) -> None:
    """§5.3: a follower accepts an append only if its log holds an entry at the
    previous index with the previous term (the consistency check)."""
    h = Harness(3, storages={2: storage_with_log((1, 2, 3), [2, 2], term=2)})
    before = h.log_terms(2)
    h.deliver(_append(to=2, term=2, prev=prev, entries=_entries(prev[0] + 1, [2])))
    (answer,) = h.process_ready(2)
    assert answer.type == MessageType.APPEND_RESPONSE
    assert answer.reject is not accepted
    if accepted:
        assert answer.index == prev[0] + 1
    else:
        assert answer.index == prev[0]
        assert h.log_terms(2) == before


def test_conflicting_suffix_is_truncated_in_memory_and_on_disk() -> None:
    """§5.3: when an appended entry conflicts with an existing one (same index,
    different term), the existing entry and all that follow it are deleted."""
    h = Harness(3, storages={2: storage_with_log((1, 2, 3), [2, 2, 2], term=2)})
    h.deliver(_append(to=2, term=3, prev=(2, 2), entries=_entries(3, [3])))
    (answer,) = h.process_ready(2)
    assert (answer.reject, answer.index) == (False, 3)
    assert h.log_terms(2) == [(2, 2), (3, 3)]
    assert h.persisted_terms(2) == [(2, 2), (3, 3)]


def test_conflicting_suffix_is_truncated_before_it_is_persisted() -> None:
    """§5.3: the same when the conflicting entries arrived moments ago and are
    not yet persisted: the Ready hands out only the surviving log."""
    h = Harness(3)
    h.deliver(_append(to=2, term=2, prev=(1, 1), entries=_entries(2, [2, 2, 2])))
    h.deliver(_append(to=2, term=3, prev=(2, 2), entries=_entries(3, [3]), leader=3))
    assert h.log_terms(2) == [(2, 2), (3, 3)]
    h.process_ready(2)
    assert h.persisted_terms(2) == [(2, 2), (3, 3)]


def test_stale_matching_append_does_not_truncate() -> None:
    """§5.3: an append whose entries all match (a delayed or duplicated one)
    must not delete entries that follow them: only a conflict does."""
    h = Harness(3, storages={2: storage_with_log((1, 2, 3), [2, 2, 2], term=2)})
    h.deliver(_append(to=2, term=2, prev=(1, 1), entries=_entries(2, [2])))
    (answer,) = h.process_ready(2)
    assert not answer.reject
    assert h.log_terms(2) == [(2, 2), (3, 2), (4, 2)]


# Figure 7: the leader of term 8 and six possible followers, indexes from 1.
FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


def _round_trip_bound(leader: list[int], follower: list[int]) -> int:
    """Rejections allowed when the leader skips a whole term per round trip:
    one per distinct term in the follower's divergent suffix, plus one."""
    common = 0
    while common < min(len(leader), len(follower)) and leader[common] == follower[common]:
        common += 1
    return len(set(follower[common:])) + 1


@pytest.mark.parametrize("name", sorted(FIGURE_7_FOLLOWERS))
def test_figure_7_followers_converge_in_one_round_trip_per_term(name: str) -> None:
    """§5.3, figure 7: each follower, missing entries or holding extraneous
    ones, ends with the leader's log, and since a rejection names the
    conflicting term the leader backs off a term at a time, not an entry at a
    time ((f) would take 7 rejections one entry at a time, 3 at most here)."""
    follower = FIGURE_7_FOLLOWERS[name]
    storages = {
        1: storage_with_log((1, 2, 3), FIGURE_7_LEADER[1:], term=7),
        2: storage_with_log((1, 2, 3), FIGURE_7_LEADER[1:], term=7),
        3: storage_with_log((1, 2, 3), follower[1:], term=7),
    }
    h = Harness(3, storages=storages, pre_vote=False, check_quorum=False)
    h.elect(1)
    assert h.raft(1).term == 8
    expected = [(index, term) for index, term in enumerate(FIGURE_7_LEADER, start=1)][1:]
    expected.append((11, 8))
    assert h.log_terms(3) == expected
    assert h.persisted_terms(3) == expected
    assert _rejections(h, 3) <= _round_trip_bound(FIGURE_7_LEADER, follower)


def test_long_divergent_tail_is_skipped_in_a_round_trip_or_two() -> None:
    """§5.3: a follower with 200 entries of an old term, diverging from the
    leader's 100 of a newer one right after index 1, is repaired after a
    rejection or two (one term to skip), not after one per entry."""
    leader, follower = [1] + [3] * 100, [1] + [2] * 200
    storages = {
        1: storage_with_log((1, 2, 3), leader[1:], term=3),
        2: storage_with_log((1, 2, 3), leader[1:], term=3),
        3: storage_with_log((1, 2, 3), follower[1:], term=2),
    }
    h = Harness(3, storages=storages, pre_vote=False, check_quorum=False)
    h.elect(1)
    assert 1 <= _rejections(h, 3) <= _round_trip_bound(leader, follower) == 2
    assert h.log_terms(3) == h.log_terms(1)
    assert h.persisted_terms(3)[-1] == (102, 4)
    assert len(h.persisted_terms(3)) == 101


# -- flow control -------------------------------------------------------------------


def test_replicate_state_keeps_at_most_max_inflight_appends() -> None:
    """§5.3 (pipelining, as in etcd): a follower in REPLICATE gets appends
    without waiting for answers, but never more than max_inflight unanswered."""
    h = Harness(3, max_inflight=3, max_size_per_msg=1)
    h.elect(1)
    assert h.nodes[1].status().peers[2].state == ProgressState.REPLICATE
    h.drop = lambda m: m.type == MessageType.APPEND_RESPONSE and m.from_ == 2
    mark = len(h.sent)
    for position in range(10):
        h.propose(1, f"v{position}".encode())
    appends = [m for m in h.messages(MessageType.APPEND, to=2, since=mark) if m.entries]
    assert [m.entries[0].index for m in appends] == [3, 4, 5]
    assert h.raft(1).progress[2].inflights.full()
    assert h.raft(1).log.committed == 12  # node 3 keeps the group committing

    # Answers flow again: heartbeats unblock the pipeline and node 2 catches up.
    h.heal()
    h.tick(1, times=3)
    assert h.log_terms(2) == h.log_terms(1)
    assert h.nodes[1].status().peers[2].state == ProgressState.REPLICATE


def test_probe_state_sends_one_append_per_round_trip() -> None:
    """§5.3: while the leader does not know where a follower's log matches
    (PROBE), it sends one append and waits for an answer before the next."""
    h = Harness(3, max_size_per_msg=1)
    h.cut(1, 2)
    h.elect(1)
    for position in range(5):
        h.propose(1, f"v{position}".encode())
    assert len(h.messages(MessageType.APPEND, to=2)) == 1
    assert h.nodes[1].status().peers[2].state == ProgressState.PROBE

    # Each heartbeat answer allows one more append, which is lost.
    h.heal()
    h.drop = lambda m: m.type == MessageType.APPEND and m.to == 2
    for round_trips in range(1, 4):
        h.tick(1)
        assert len(h.messages(MessageType.APPEND, to=2)) == 1 + round_trips
    h.drop = None
    h.tick(1)
    assert h.log_terms(2) == h.log_terms(1)
    assert h.nodes[1].status().peers[2].state == ProgressState.REPLICATE


# -- §5.4.2 figure 8 ----------------------------------------------------------------------


def _figure_8_up_to_c() -> Harness:
    """Figure 8 (a) to (c) on S1..S5 (nodes 1..5).

    (a) S1 leads term 2 and replicates index 2 to S2 only. (b) S1 crashes; S5
    is elected for term 3 by S3, S4 and itself and appends index 2 of term 3,
    which reaches nobody. (c) S5 crashes; S1 restarts and is elected for term
    4 (its first try, in term 3, cannot win: S3 and S4 voted for S5), and
    replicates index 2 of term 2 to S3 while its own entry of term 4 at index
    3 reaches nobody. One change from the figure: S4 also receives index 2, so
    that the leader itself counts a majority (S1, S3, S4) holding it; S2's copy
    it cannot know of, since the only append it sends S2 carries the term-4
    entry and is lost.

    Each append carries one entry (max_size_per_msg=1), so index 2 can travel
    without index 3.
    """
    h = Harness(5, pre_vote=False, check_quorum=False, max_size_per_msg=1)

    # (a)
    h.drop = lambda m: m.type == MessageType.APPEND and m.to in (3, 4, 5)
    h.elect(1)
    assert h.raft(1).term == 2
    assert [h.log_terms(node_id) for node_id in (1, 2)] == [[(2, 2)], [(2, 2)]]
    assert h.raft(1).log.committed == 1

    # (b)
    h.crash(1)
    h.drop = lambda m: m.type == MessageType.APPEND and m.from_ == 5
    h.nodes[5].campaign()
    h.deliver_all()
    assert (h.raft(5).role, h.raft(5).term) == (Role.LEADER, 3)
    assert h.log_terms(5) == [(2, 3)]

    # (c)
    h.crash(5)
    h.restart(1)
    h.drop = _loses_term_4_entries(h)
    h.nodes[1].campaign()
    h.deliver_all()
    assert (h.raft(1).role, h.raft(1).term) == (Role.CANDIDATE, 3)
    h.nodes[1].campaign()
    h.deliver_all()
    assert (h.raft(1).role, h.raft(1).term) == (Role.LEADER, 4)
    assert h.log_terms(1) == [(2, 2), (3, 4)]
    for node_id in (2, 3, 4):
        assert h.log_terms(node_id) == [(2, 2)]
    return h


def _loses_term_4_entries(h: Harness) -> Callable[[Message], bool]:
    def drop(message: Message) -> bool:
        # An append a follower would accept that carries a term-4 entry is
        # lost; anything it would reject anyway goes through, so that the
        # leader learns where the follower's log ends.
        if message.type != MessageType.APPEND or not any(e.term == 4 for e in message.entries):
            return False
        return h.raft(message.to).log.match_term(message.index, message.log_term)

    return drop


def test_figure_8_old_term_entry_on_a_majority_is_not_committed_and_is_overwritten() -> None:
    """§5.4.2, figure 8 (a)-(d): a leader does not commit an entry of an
    earlier term by counting replicas, even when it sees a majority holding
    it; and rightly so, since S5 can then win term 5 and overwrite it."""
    h = _figure_8_up_to_c()
    leader = h.raft(1)
    matches = {node_id: progress.match for node_id, progress in leader.progress.items()}
    assert committed_index(leader.voters, matches) >= 2, "the leader counts index 2 on a majority"
    assert leader.log.committed == 1
    assert all(not h.applied[node_id] for node_id in range(1, 6))

    # (d) S1 crashes; S5 restarts, and is elected for term 5 (its try in term 4
    # fails: everyone voted for S1) by S2, S3 and S4: its last term, 3, beats
    # their 2. It overwrites index 2 everywhere and commits it with index 3.
    h.crash(1)
    h.restart(5)
    h.drop = None
    h.nodes[5].campaign()
    h.deliver_all()
    assert h.raft(5).role == Role.FOLLOWER
    h.nodes[5].campaign()
    h.deliver_all()
    assert (h.raft(5).role, h.raft(5).term) == (Role.LEADER, 5)
    for node_id in (2, 3, 4, 5):
        assert h.log_terms(node_id) == [(2, 3), (3, 5)]
        assert [(e.index, e.term) for e in h.applied[node_id]] == [(2, 3), (3, 5)]

    # S1 comes back and its term-2 and term-4 entries are replaced too.
    h.restart(1)
    h.tick(5, times=2)
    assert h.log_terms(1) == [(2, 3), (3, 5)]
    assert [(e.index, e.term) for e in h.applied[1]] == [(2, 3), (3, 5)]


def test_figure_8_old_term_entry_commits_with_a_current_term_entry() -> None:
    """§5.4.2, figure 8 (e): once S1 replicates its term-4 entry to a majority,
    that entry commits by counting and index 2 of term 2 commits with it
    (Log Matching); S5 can then no longer be elected."""
    h = _figure_8_up_to_c()
    h.drop = None
    h.tick(1)  # heartbeats: the followers answer and get index 3
    assert h.raft(1).log.committed == 3
    assert [(e.index, e.term) for e in h.applied[1]] == [(2, 2), (3, 4)]

    h.crash(1)
    h.restart(5)
    for _ in range(3):
        h.nodes[5].campaign()
        h.deliver_all()
        assert h.raft(5).role != Role.LEADER
    h.nodes[2].campaign()
    h.deliver_all()
    assert h.raft(2).role == Role.LEADER
    for node_id in (2, 3, 4, 5):
        assert h.log_terms(node_id)[:2] == [(2, 2), (3, 4)]


# -- §5.4.3 leader completeness -------------------------------------------------------------


def test_committed_entries_are_in_every_later_leader_log() -> None:
    """§5.4.3 (Leader Completeness): across successive leader failures, each
    with two followers lagging behind, every new leader holds every entry
    committed before, and a lagging node's own campaign cannot win."""
    h = Harness(5, seed=3)
    h.elect(1)
    committed: dict[int, Entry] = {}
    for round_number in range(4):
        leader = h.leader()
        laggards = sorted(h.running - {leader})[round_number % 2 :: 2][:2]
        for laggard in laggards:
            h.cut(leader, laggard)
        h.propose(leader, f"round {round_number}".encode())
        for node_id in h.running:
            for entry in h.applied[node_id]:
                committed[entry.index] = entry
        assert any(e.data == f"round {round_number}".encode() for e in committed.values())

        h.heal()
        h.isolate(leader)
        h.tick(*laggards, times=ELECTION_TICK)  # their leases expire
        h.nodes[laggards[0]].campaign()
        h.deliver_all()
        assert h.raft(laggards[0]).role != Role.LEADER
        for _ in range(5 * ELECTION_TICK):
            h.tick(*(h.running - {leader}))
            if h.leader() not in (0, leader):
                break
        new_leader = h.leader()
        assert new_leader not in (0, leader, *laggards)
        log = h.raft(new_leader).log
        for index, entry in committed.items():
            assert log.term(index) == entry.term, f"leader {new_leader} lacks {entry}"
        h.heal()
        h.tick(times=2)


# -- persistence before send ---------------------------------------------------------------


def test_append_response_travels_with_the_entries_it_acknowledges() -> None:
    """§5.3 and Figure 2 ("respond after persisting"): a follower's answer to
    an append is in a Ready whose entries include what it acknowledges, and
    that Ready must be persisted before its messages go out."""
    h = Harness(3)
    h.elect(1)
    h.nodes[1].propose(b"x")
    appends = [m for m in h.process_ready(1) if m.type == MessageType.APPEND and m.to == 2]
    h.deliver(appends[0])

    ready = h.nodes[2].ready()
    (answer,) = [m for m in ready.messages if m.type == MessageType.APPEND_RESPONSE]
    assert not answer.reject and answer.index == 3
    assert [(e.index, e.type) for e in ready.entries] == [(3, EntryType.NORMAL)]
    assert ready.must_sync
    assert h.storages[2].last_index() == 2, "nothing is persisted until the runtime does it"


def test_vote_travels_with_the_hard_state_that_records_it() -> None:
    """§5.2 and Figure 2 (votedFor is persistent): a granted vote leaves in a
    Ready whose hard state records it; the candidate's own requests likewise."""
    h = Harness(3, pre_vote=False, check_quorum=False)
    h.nodes[1].campaign()
    ready = h.nodes[1].ready()
    assert ready.hard_state is not None
    assert (ready.hard_state.term, ready.hard_state.vote) == (2, 1)
    assert {m.type for m in ready.messages} == {MessageType.VOTE}

    h.deliver(ready.messages[0])
    follower_ready = h.nodes[ready.messages[0].to].ready()
    (answer,) = follower_ready.messages
    assert answer.type == MessageType.VOTE_RESPONSE and not answer.reject
    assert follower_ready.hard_state is not None
    assert (follower_ready.hard_state.term, follower_ready.hard_state.vote) == (2, 1)
