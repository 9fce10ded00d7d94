"""Leader election: §5.2, the election restriction §5.4.1, pre-vote and check-quorum.

Section numbers are the Raft paper's (Ongaro & Ousterhout, 2014) unless they
say "dissertation" (Ongaro, 2014). Groups start from the bootstrap snapshot at
index 1, term 1, so the first election is for term 2.
"""

from __future__ import annotations

import pytest

from shardkv.raft import Message, MessageType, Role
from tests.unit.raft_harness import Harness, storage_with_log

ELECTION_TICK = 10


def _vote_request(
    kind: MessageType, *, to: int, from_: int, term: int, index: int, log_term: int
) -> Message:
    return Message(kind, to=to, from_=from_, term=term, index=index, log_term=log_term)


def _answers(h: Harness, node_id: int, request: Message) -> list[Message]:
    """Step ``request`` into ``node_id`` and return what it sends back."""
    h.deliver(request)
    return [m for m in h.process_ready(node_id) if m.to == request.from_]


# -- §5.2 leader election -------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [True, False])
def test_follower_campaigns_after_randomized_timeout(pre_vote: bool) -> None:
    """§5.2: a follower that hears nothing campaigns after a timeout drawn from
    [election_tick, 2 * election_tick), different from node to node."""
    timeouts = set()
    for seed in range(30):
        h = Harness(3, seed=seed, pre_vote=pre_vote)
        h.isolate(1)
        ticks = 0
        while h.raft(1).role == Role.FOLLOWER:
            h.tick(1)
            ticks += 1
            assert ticks < 2 * ELECTION_TICK, "no campaign within 2 * election_tick"
        assert ticks >= ELECTION_TICK
        timeouts.add(ticks)
        expected = (Role.PRE_CANDIDATE, 1) if pre_vote else (Role.CANDIDATE, 2)
        assert (h.raft(1).role, h.raft(1).term) == expected
    # Randomization is what breaks split votes: the timeouts must spread.
    assert len(timeouts) >= 4, timeouts


def test_follower_hearing_heartbeats_never_campaigns() -> None:
    """§5.2: a follower stays one while it receives heartbeats from a leader."""
    h = Harness(3)
    h.elect(1)
    mark = len(h.sent)
    h.tick(times=10 * ELECTION_TICK)
    assert h.leader() == 1 and h.raft(1).term == 2
    assert not h.messages(MessageType.PRE_VOTE, since=mark)
    assert not h.messages(MessageType.VOTE, since=mark)


@pytest.mark.parametrize(("reachable", "wins"), [(5, True), (3, True), (2, False)])
def test_candidate_wins_with_a_majority_only(reachable: int, wins: bool) -> None:
    """§5.2: a candidate becomes leader once a majority of the voters (itself
    included) grant their vote, and not before."""
    h = Harness(5, pre_vote=False, check_quorum=False)
    for node_id in range(reachable + 1, 6):
        h.isolate(node_id)
    h.nodes[1].campaign()
    h.deliver_all()
    assert h.raft(1).term == 2
    assert h.raft(1).role == (Role.LEADER if wins else Role.CANDIDATE)


def test_votes_once_per_term_even_across_a_restart() -> None:
    """§5.2: a server votes for at most one candidate per term, and the vote is
    persisted (Figure 2: votedFor is persistent state) before it is granted."""
    h = Harness(3, pre_vote=False, check_quorum=False)

    def request(candidate: int) -> Message:
        return _vote_request(MessageType.VOTE, to=3, from_=candidate, term=2, index=1, log_term=1)

    granted = _answers(h, 3, request(1))
    assert [(m.type, m.reject) for m in granted] == [(MessageType.VOTE_RESPONSE, False)]
    assert _answers(h, 3, request(2))[0].reject
    # A retransmitted request from the candidate it voted for is granted again.
    assert not _answers(h, 3, request(1))[0].reject

    h.crash(3)
    h.restart(3)
    assert _answers(h, 3, request(2))[0].reject
    assert h.storages[3].hard_state.vote == 1


def test_split_vote_resolves_in_a_later_term() -> None:
    """§5.2: when two candidates split the votes, neither wins; randomized
    timeouts then let one of them win a later term."""
    h = Harness(4, pre_vote=False, check_quorum=False)
    h.nodes[1].campaign()
    h.nodes[2].campaign()
    h.drop = lambda m: (m.from_, m.to) in {(1, 4), (2, 3)}
    h.deliver_all()
    assert h.raft(1).role == h.raft(2).role == Role.CANDIDATE
    assert h.leader() == 0

    h.heal()
    leaders_by_term: dict[int, int] = {}
    for _ in range(10 * ELECTION_TICK):
        h.tick()
        for node_id in h.running:
            raft = h.raft(node_id)
            if raft.role == Role.LEADER:
                assert leaders_by_term.setdefault(raft.term, node_id) == node_id
        if h.leader():
            break
    assert h.leader(), "the split vote never resolved"
    assert h.raft(h.leader()).term >= 3


def test_higher_term_response_makes_leader_step_down() -> None:
    """§5.1: a server that sees a higher term adopts it and, if leader,
    reverts to follower; the new term is persisted with no vote."""
    h = Harness(3)
    h.elect(1)
    h.deliver(Message(MessageType.APPEND_RESPONSE, to=1, from_=3, term=5, index=2))
    h.process_ready(1)
    raft = h.raft(1)
    assert (raft.role, raft.term, raft.vote, raft.lead) == (Role.FOLLOWER, 5, 0, 0)
    assert h.storages[1].hard_state.term == 5


def test_follower_adopts_term_and_leader_of_newer_append() -> None:
    """§5.1, §5.2: an append from a newer term makes its sender the known leader."""
    h = Harness(3)
    h.elect(1)
    h.deliver(Message(MessageType.APPEND, to=2, from_=3, term=4, index=2, log_term=2, commit=2))
    h.process_ready(2)
    assert (h.raft(2).term, h.raft(2).lead) == (4, 3)


def test_candidate_returns_to_follower_on_append_of_its_term() -> None:
    """§5.2: a candidate that hears from a leader of its own term steps down."""
    h = Harness(3, pre_vote=False, check_quorum=False)
    h.nodes[3].campaign()
    h.process_ready(3)  # its vote requests are never delivered
    assert (h.raft(3).role, h.raft(3).term) == (Role.CANDIDATE, 2)
    h.deliver(Message(MessageType.APPEND, to=3, from_=1, term=2, index=1, log_term=1, commit=1))
    h.process_ready(3)
    assert (h.raft(3).role, h.raft(3).lead, h.raft(3).term) == (Role.FOLLOWER, 1, 2)


def test_stale_append_is_refused_and_told_the_newer_term() -> None:
    """§5.1: a request with a stale term is rejected and the reply carries the
    current term, so a deposed leader learns it and steps down."""
    h = Harness(3)
    h.elect(1)
    before = h.log_terms(2)
    answer = _answers(
        h,
        2,
        Message(
            MessageType.APPEND,
            to=2,
            from_=3,
            term=1,
            index=2,
            log_term=2,
            entries=[],
            commit=2,
        ),
    )
    assert [(m.type, m.term) for m in answer] == [(MessageType.APPEND_RESPONSE, 2)]
    assert h.log_terms(2) == before


# -- §5.4.1 the election restriction ----------------------------------------------


@pytest.mark.parametrize("kind", [MessageType.VOTE, MessageType.PRE_VOTE])
@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (10, 1, False),  # longer, but its last term is older
        (2, 2, False),  # same last term, shorter
        (3, 2, True),  # same last term, same length
        (4, 2, True),  # same last term, longer
        (2, 3, True),  # shorter, but its last term is newer
    ],
)
def test_voter_rejects_less_up_to_date_candidate(
    kind: MessageType, last_index: int, last_term: int, granted: bool
) -> None:
    """§5.4.1: a voter denies its vote to a candidate whose log is less up to
    date than its own: compare last terms first, then lengths."""
    # The voter's log: index 1 (term 1, bootstrap), 2 and 3 of term 2.
    storages = {3: storage_with_log((1, 2, 3), [2, 2], term=2)}
    h = Harness(3, storages=storages, check_quorum=False)
    request = _vote_request(kind, to=3, from_=1, term=3, index=last_index, log_term=last_term)
    (answer,) = _answers(h, 3, request)
    assert answer.reject is not granted
    if kind == MessageType.VOTE:
        assert h.storages[3].hard_state.vote == (1 if granted else 0)


# -- §9.6 (dissertation) pre-vote -----------------------------------------------------


@pytest.mark.parametrize("pre_vote", [True, False])
def test_pre_candidate_does_not_bump_its_term(pre_vote: bool) -> None:
    """Dissertation §9.6: a partitioned node that keeps timing out only
    pre-campaigns, so its term stays put; without pre-vote it climbs."""
    h = Harness(3, pre_vote=pre_vote)
    h.elect(1)
    h.isolate(3)
    h.tick(times=10 * ELECTION_TICK)
    raft = h.raft(3)
    if pre_vote:
        assert (raft.role, raft.term) == (Role.PRE_CANDIDATE, 2)
        assert not h.messages(MessageType.VOTE, from_=3)
        assert h.storages[3].hard_state.term == 2
    else:
        assert raft.term > 5


@pytest.mark.parametrize(
    ("pre_vote", "check_quorum", "writes_while_away", "disrupts"),
    [
        (True, True, False, False),
        (True, True, True, False),
        (True, False, True, False),
        # Neither defence: the rejoining node's inflated term deposes the leader.
        (False, False, False, True),
    ],
)
def test_disruptive_rejoining_node(
    pre_vote: bool, check_quorum: bool, writes_while_away: bool, disrupts: bool
) -> None:
    """Dissertation §9.6 (and §4.2.3): a node partitioned for many election
    timeouts does not, when it rejoins, make the leader step down."""
    h = Harness(3, pre_vote=pre_vote, check_quorum=check_quorum)
    h.elect(1)
    h.isolate(3)
    for position in range(10):
        if writes_while_away:
            h.propose(1, f"while away {position}".encode())
        h.tick(times=ELECTION_TICK)
    h.heal()
    h.tick(times=5 * ELECTION_TICK)
    if disrupts:
        assert h.raft(h.leader()).term > 2
    else:
        assert h.leader() == 1 and h.raft(1).term == 2
        assert h.raft(3).lead == 1 and h.raft(3).term == 2


# -- §6.2 / §4.2.3 (dissertation) check-quorum and leases ------------------------------


@pytest.mark.parametrize("check_quorum", [True, False])
def test_leader_without_quorum_steps_down(check_quorum: bool) -> None:
    """Dissertation §6.2: a leader that hears from no quorum for an election
    timeout steps down (in its term), so clients look for the real leader."""
    h = Harness(3, check_quorum=check_quorum)
    h.elect(1)
    h.tick(times=3)
    h.isolate(1)
    for _ in range(2 * ELECTION_TICK):
        h.tick(1)
    raft = h.raft(1)
    if check_quorum:
        assert (raft.role, raft.term, raft.lead) == (Role.FOLLOWER, 2, 0)
    else:
        assert raft.role == Role.LEADER


def test_leader_hearing_a_quorum_keeps_leading() -> None:
    """Dissertation §6.2: check-quorum does not depose a leader a quorum hears,
    even with one voter down."""
    h = Harness(3)
    h.elect(1)
    h.isolate(3)
    h.tick(1, 2, times=10 * ELECTION_TICK)
    assert h.raft(1).role == Role.LEADER and h.raft(1).term == 2


@pytest.mark.parametrize("kind", [MessageType.VOTE, MessageType.PRE_VOTE])
def test_follower_in_lease_ignores_vote_requests(kind: MessageType) -> None:
    """Dissertation §4.2.3: a follower that heard from a leader within the
    minimum election timeout ignores vote requests, even up-to-date ones."""
    h = Harness(3)
    h.elect(1)
    h.tick(times=2)
    request = _vote_request(kind, to=2, from_=3, term=3, index=2, log_term=2)
    assert _answers(h, 2, request) == []
    assert (h.raft(2).term, h.raft(2).vote, h.raft(2).lead) == (2, 1, 1)

    # Once the leader has been silent for an election timeout, the lease is over.
    h.isolate(1)
    h.tick(2, times=ELECTION_TICK)
    (answer,) = _answers(h, 2, request)
    response = {
        MessageType.VOTE: MessageType.VOTE_RESPONSE,
        MessageType.PRE_VOTE: MessageType.PRE_VOTE_RESPONSE,
    }
    assert answer.type == response[kind] and not answer.reject


def test_restarted_node_holds_its_vote_for_an_election_timeout() -> None:
    """Dissertation §6.4.1: a node may have acknowledged a leader's heartbeat
    (extending its lease) just before a crash, so after a restart it refuses
    votes for an election timeout."""
    h = Harness(3)
    h.elect(1)
    h.crash(2)
    h.restart(2)
    term = h.raft(2).term
    request = _vote_request(
        MessageType.VOTE,
        to=2,
        from_=3,
        term=term + 1,
        index=h.raft(2).log.last_index(),
        log_term=term,
    )
    for _ in range(ELECTION_TICK - 1):
        assert _answers(h, 2, request) == []
        h.tick(2)
    assert h.raft(2).term == term
    h.tick(2)
    (answer,) = _answers(h, 2, request)
    assert not answer.reject and h.raft(2).vote == 3


def test_a_node_that_never_heard_a_leader_votes_at_once() -> None:
    """A replica still at the bootstrap term acknowledged no leader, so no lease
    can be at stake: a new group elects its first leader without waiting."""
    h = Harness(3)
    request = _vote_request(MessageType.VOTE, to=2, from_=1, term=2, index=1, log_term=1)
    (answer,) = _answers(h, 2, request)
    assert not answer.reject and h.raft(2).vote == 1
