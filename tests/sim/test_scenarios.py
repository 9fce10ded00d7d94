"""Scripted scenarios for the classic Raft traps, on the simulated cluster.

Each scenario runs clients throughout and ends the same way: faults stop,
every member restarts, the group settles, and then the logs must agree and
the client history must be linearizable. ``Cluster`` checks election safety,
leader completeness and state-machine safety at every step on top of that.

Section numbers are the Raft paper's (Ongaro & Ousterhout, 2014) unless they
say "dissertation" (Ongaro, 2014).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import pytest

from shardkv.raft import EntryType, Message, MessageType, Role
from tests.checkers import check_history
from tests.sim.cluster import Cluster, ClusterOptions, SimNode
from tests.sim.kv import Command

ELECTION_TICK = 10


def _leader(cluster: Cluster, within: int = 30 * ELECTION_TICK) -> SimNode:
    """Step until some running node leads and has committed an entry of its term."""
    for _ in range(within):
        leader = cluster.leader()
        if leader is not None and leader.raw is not None:
            log = leader.raw.raft.log
            if log.term(log.committed) == leader.raw.raft.term:
                return leader
        cluster.step()
    raise AssertionError(f"no leader within {within} ticks")


def _settle(cluster: Cluster, within: int = 300 * ELECTION_TICK) -> None:
    """Stop the faults, let the clients finish, wait for quiet, check the verdicts."""
    cluster.network.heal()
    cluster.network.drop_filter = None
    cluster.restart_all()
    for _ in range(within):
        cluster.step()
        if all(client.ops_left == 0 for client in cluster.clients.values()) and cluster.converged():
            break
    else:
        raise AssertionError(f"the cluster did not settle within {within} ticks")
    cluster.check_log_matching()
    verdict = check_history(cluster.history)
    assert verdict.ok, verdict.explanation
    assert cluster.stats.completed_ops > 0


def _uncommitted(node: SimNode) -> dict[int, int]:
    """index -> term of the entries the node holds beyond its commit index."""
    assert node.raw is not None
    committed = node.raw.raft.log.committed
    return {index: term for index, term in node.log_terms().items() if index > committed}


def _appends_reach_only(leader_id: int, follower: int) -> Callable[[Message], bool]:
    def drop(message: Message) -> bool:
        return (
            message.type == MessageType.APPEND
            and message.from_ == leader_id
            and message.to != follower
        )

    return drop


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_leaders_crash_after_replicating_to_a_minority(seed: int) -> None:
    """§5.4.2 (figure 8 style), §5.4.3: round after round, in a new term each time,
    the leader's appends reach one follower only before it crashes (in odd
    rounds that follower crashes too). Such entries are later either
    overwritten or committed under a newer leader's entry, never applied
    differently anywhere, and no client sees a lost write."""
    cluster = Cluster(seed=seed, voters=5, options=ClusterOptions())
    for _ in range(5):
        cluster.add_client(ops=40)
    stranded: dict[tuple[int, int], int] = {}  # (index, term) -> round
    terms = set()
    for round_number in range(8):
        leader = _leader(cluster)
        assert leader.raw is not None
        terms.add(leader.raw.raft.term)
        followers = sorted(set(leader.raw.raft.voters) - {leader.node_id})
        minority = followers[round_number % len(followers)]

        cluster.network.drop_filter = _appends_reach_only(leader.node_id, minority)
        for _ in range(12):
            cluster.step()
        for index, term in _uncommitted(leader).items():
            stranded.setdefault((index, term), round_number)
        victims = [leader.node_id] + ([minority] if round_number % 2 else [])
        for node_id in victims:
            cluster.crash(node_id)
            cluster.restart_at[node_id] = cluster.now + 2 * ELECTION_TICK
        cluster.network.drop_filter = None
    assert len(terms) == 8, "each round has a leader of a new term"

    _settle(cluster)
    final = cluster.applied_log
    overwritten = [key for key in stranded if key[0] in final and final[key[0]].term != key[1]]
    survived = [key for key in stranded if key[0] in final and final[key[0]].term == key[1]]
    assert overwritten, "the scenario never left an entry to be overwritten"
    assert survived, "the scenario never let such an entry commit under a newer leader"
    assert len(overwritten) + len(survived) == len(stranded)


class _OwnTermEntriesLost:
    """A drop filter: while ``active``, an append that would put an entry of
    its sender's current term into a follower's log is lost (unless the
    follower is ``favoured``), and so is anything sent to a crashed node.

    Appends the follower will reject still go through, so that the leader
    learns where the follower's log ends and sends it older entries, one per
    message. Whether a follower would accept is judged from its log plus what
    already passed on that link: the network delivers in order (max_delay 1).
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.active = False
        self.favoured: set[int] = set()
        self.passed: defaultdict[tuple[int, int], set[tuple[int, int]]] = defaultdict(set)

    def __call__(self, message: Message) -> bool:
        if message.type != MessageType.APPEND:
            return False
        receiver = self.cluster.nodes[message.to].raw
        if receiver is None:
            # It may restart before this would be delivered.
            return self.active
        link = (message.from_, message.to)
        if (
            self.active
            and message.to not in self.favoured
            and any(entry.term == message.term for entry in message.entries)
        ):
            previous = (message.index, message.log_term)
            if receiver.raft.log.match_term(*previous) or previous in self.passed[link]:
                return True
        self.passed[link].update((entry.index, entry.term) for entry in message.entries)
        return False


def _step_until(cluster: Cluster, done: Callable[[], bool], what: str, within: int = 300) -> None:
    for _ in range(within):
        if done():
            return
        cluster.step()
    raise AssertionError(f"{what}: not within {within} ticks\n" + "\n".join(cluster.trace))


def _leading(cluster: Cluster, *node_ids: int) -> bool:
    leader = cluster.leader()
    return leader is not None and leader.node_id in node_ids


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_figure_8_old_term_entries_are_never_committed_by_counting(seed: int) -> None:
    """§5.4.2, figure 8 exactly, twice, with clients running (S1..S5 are
    whichever nodes the roles fall to).

    (a) A leads; its new entries reach B only. (b) A and B crash; X is
    elected among C, D, E and fills the same indexes with entries of its
    term, which reach nobody. (c) X and another crash, A and B restart and
    one of them, Y, leads a newer term: it replicates A's old-term entries
    to the last node, so a majority (A, B, and it) holds them, but Y's own
    entries reach nobody, so they must stay uncommitted. (d) A and B crash,
    X restarts and wins (its last term is newer), and overwrites them. Had
    Y counted them committed, a client could have seen a lost write, and
    ``Cluster`` would flag X, a leader lacking a committed entry.
    """
    cluster = Cluster(seed=seed, voters=5, options=ClusterOptions(max_size_per_msg=1))
    for _ in range(5):
        cluster.add_client(ops=40)
    lose = _OwnTermEntriesLost(cluster)
    cluster.network.drop_filter = lose
    for round_number in range(2):
        _figure_8_round(cluster, lose, filler_base=100 * round_number)
        cluster.restart_all()
    _settle(cluster)


def _figure_8_round(cluster: Cluster, lose: _OwnTermEntriesLost, filler_base: int) -> None:
    lose.active = False
    a = _leader(cluster)
    assert a.raw is not None
    b, *others = sorted(set(a.raw.raft.voters) - {a.node_id})

    def others_last() -> int:
        return max(max(cluster.nodes[node_id].log_terms(), default=0) for node_id in others)

    # (a)
    lose.active, lose.favoured = True, {b}
    cluster.step()  # what A sent before lands
    base = others_last()
    _step_until(cluster, lambda: max(a.log_terms()) >= base + 3, "A appends")
    # (b)
    lose.favoured = set()
    cluster.crash(a.node_id)
    cluster.crash(b)
    cluster.step()
    stranded = {index: term for index, term in a.log_terms().items() if index > others_last()}
    first, last = min(stranded), max(stranded)
    _step_until(cluster, lambda: _leading(cluster, *others), "X elected")
    x = cluster.leader()
    assert x is not None and x.raw is not None
    filler = filler_base
    while x.raw.raft.log.last_index() < last:
        filler += 1
        x.raw.propose(Command(99, filler, "get", "filler").encode())
        cluster.step()
    assert x.log_terms()[first] == x.raw.raft.term
    # (c)
    z, rest = sorted(set(others) - {x.node_id})
    cluster.crash(x.node_id)
    cluster.crash(z)
    cluster.restart(a.node_id)
    cluster.restart(b)
    _step_until(cluster, lambda: _leading(cluster, a.node_id, b), "Y elected")
    y = cluster.leader()
    assert y is not None and y.raw is not None
    _step_until(
        cluster,
        lambda: cluster.nodes[rest].log_terms().get(last) == stranded[last],
        "old entries on a majority",
    )
    cluster.run(5)
    assert y.raw.raft.log.committed < first, "an old-term entry committed by counting"
    # (d)
    cluster.crash(a.node_id)
    cluster.crash(b)
    cluster.restart(x.node_id)
    cluster.restart(z)
    _step_until(cluster, lambda: _leading(cluster, x.node_id), "X elected again")
    lose.active = False
    _step_until(
        cluster,
        lambda: all(cluster.nodes[node_id].applied >= last for node_id in (rest, z)),
        "X commits",
    )
    for index, term in stranded.items():
        assert cluster.applied_log[index].term != term


@pytest.mark.parametrize("check_quorum", [False, True])
def test_partitioned_leader_keeps_accepting_proposals_that_never_commit(
    check_quorum: bool,
) -> None:
    """§5.4.1, §5.3, §8: a leader cut off from the majority still appends the
    proposals it gets; the majority elects a leader and commits; after the
    heal the old leader steps down, its uncommitted entries are overwritten,
    and no client ever sees one of them take effect."""
    options = ClusterOptions(check_quorum=check_quorum)
    cluster = Cluster(seed=7, voters=5, options=options)
    for _ in range(4):
        cluster.add_client(ops=40)
    _leader(cluster)  # wait for a first leader
    cluster.run(20)
    old = _leader(cluster)
    assert old.raw is not None
    old_term = old.raw.raft.term
    cluster.network.isolate(old.node_id, cluster.nodes)
    isolated_at = old.raw.raft.log.last_index()
    for seq in range(1, 6):
        ghost = Command(client_id=99, seq=seq, kind="put", key="k0", value=f"ghost {seq}")
        old.raw.propose(ghost.encode())
    cluster.run(5)
    # Entries appended after the cut exist on the old leader alone.
    ghosts = {index: term for index, term in old.log_terms().items() if index > isolated_at}
    assert len(ghosts) >= 5

    for _ in range(30 * ELECTION_TICK):
        cluster.step()
        new = cluster.leader()
        if new is not None and new is not old and new.raw is not None:
            log = new.raw.raft.log
            if log.committed >= min(ghosts) and log.term(log.committed) == new.raw.raft.term:
                break
    else:
        raise AssertionError("the majority never elected a leader that committed past the ghosts")
    assert old.raw.raft.term == old_term
    if not check_quorum:
        assert old.raw.raft.role == Role.LEADER, "without check-quorum it believes it leads"

    cluster.network.heal()
    cluster.run(5 * ELECTION_TICK)
    assert old.raw.raft.role == Role.FOLLOWER and old.raw.raft.term > old_term
    _settle(cluster)
    final_terms = old.log_terms()
    assert all(final_terms.get(index) != term for index, term in ghosts.items())
    for entry in cluster.applied_log.values():
        assert b"ghost" not in entry.data
    for node in cluster.nodes.values():
        assert all("ghost" not in value for value in node.kv.data.values())


@pytest.mark.parametrize(
    ("pre_vote", "check_quorum", "disrupts"),
    [(True, True, False), (True, False, False), (False, False, True)],
)
def test_rejoining_node_does_not_disrupt_the_leader(
    pre_vote: bool, check_quorum: bool, disrupts: bool
) -> None:
    """Dissertation §9.6 (pre-vote) and §4.2.3: a follower partitioned for ten
    election timeouts rejoins without changing the leader's term. The last
    case, with neither defence, shows the test can fail: it does disrupt."""
    options = ClusterOptions(pre_vote=pre_vote, check_quorum=check_quorum)
    cluster = Cluster(seed=11, voters=5, options=options)
    for _ in range(3):
        cluster.add_client(ops=60)
    leader = _leader(cluster)
    assert leader.raw is not None
    term = leader.raw.raft.term
    rejoining = min(set(leader.raw.raft.voters) - {leader.node_id})
    cluster.network.isolate(rejoining, cluster.nodes)
    cluster.run(10 * ELECTION_TICK)
    assert cluster.leader() is leader and leader.raw.raft.term == term

    cluster.network.heal()
    cluster.run(5 * ELECTION_TICK)
    newest_term = max(cluster.leader_of_term)
    if disrupts:
        assert newest_term > term
    else:
        assert newest_term == term
        assert cluster.leader() is leader and leader.raw.raft.term == term
        rejoined = cluster.nodes[rejoining].raw
        assert rejoined is not None and rejoined.raft.lead == leader.node_id
    _settle(cluster)


@pytest.mark.parametrize("seed", [21, 22])
def test_full_cluster_crash_and_restart_keeps_every_acknowledged_write(seed: int) -> None:
    """§5.4.3 and Figure 2 (persistent state): every node crashes at once,
    twice, while clients are writing; after the restart every write that was
    acknowledged is in every member's log, and the history is linearizable."""
    cluster = Cluster(seed=seed, voters=5, options=ClusterOptions())
    for _ in range(5):
        cluster.add_client(ops=40)
    for crash_round in range(2):
        _leader(cluster)
        for _ in range(60):
            cluster.step()
        assert not cluster.clients_idle(), "crash while requests are in flight"
        for node_id in cluster.nodes:
            cluster.crash(node_id)
        cluster.step()
        cluster.restart_all()
        assert crash_round == 0 or cluster.stats.completed_ops > 0
    _settle(cluster)

    # A client writes the value "<client_id>.<seq>": it names the command.
    acknowledged = {
        (op.client_id, int(op.value.decode().split(".")[1]))
        for op in cluster.history
        if op.kind in ("put", "cas") and op.ret is not None and op.value is not None
    }
    assert acknowledged
    for node in cluster.nodes.values():
        storage = node.storage
        logged = set()
        for entry in storage.entries(storage.first_index(), storage.last_index() + 1):
            if entry.data and entry.type == EntryType.NORMAL:
                command = Command.decode(entry.data)
                logged.add((command.client_id, command.seq))
        missing = acknowledged - logged
        assert not missing, f"node {node.node_id} lost acknowledged writes {sorted(missing)}"
