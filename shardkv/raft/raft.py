"""The Raft algorithm for one group, as a deterministic state machine.

``Raft`` owns a node's view of one group: term, vote, role, log, the
configuration, and (as leader) each peer's progress. It is driven only by
``step(message)``, ``tick()`` and the proposal calls; it never performs I/O.
What it wants done accumulates in ``msgs`` (to send), ``read_states`` (reads
that may be served) and the log's unstable tail (to persist); ``RawNode``
packages these as a ``Ready``.

Decisions (see also docs/design.md):

- Membership changes are single-server changes (add voter, add learner,
  promote, demote, remove), one at a time, taking effect when the application
  applies the entry (``apply_conf_change``), as in etcd. The configuration is
  thus a function of applied state, which the node persists with the applied
  index; nothing must be rolled back when a log suffix is truncated, as the
  dissertation's "use the latest configuration in the log" would require.
  Ongaro's single-server bug (a new leader's change racing an uncommitted one
  of an older term) is closed the way etcd closes it: a new leader proposes no
  change until it has applied everything in its log at election time, and at
  most one change is ever unapplied.
- Followers do not forward proposals or read requests: they raise
  ``ProposalDropped`` with the leader they know, so the runtime can redirect.
- Lease reads (``Config.lease_reads``) are measured from heartbeat stamps: the
  lease runs until ``election_tick`` ticks after the send time of the latest
  heartbeat a quorum acknowledged. Followers refuse votes for ``election_tick``
  ticks after they hear from a leader (check-quorum), and for ``election_tick``
  ticks after they start (they may have acknowledged a heartbeat before a
  crash), unless they are still at the bootstrap term (they never heard a
  leader, so no lease is at stake: a new group elects at once). This needs
  every node's tick to last equally long; a leader that has sent TIMEOUT_NOW
  serves no lease read again in its term.
- Snapshots are sent in chunks (paper §7, InstallSnapshot with offset/done),
  a few chunks in flight; the follower acknowledges each chunk's end offset,
  or names the offset it expects when a chunk was lost or duplicated.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shardkv.raft.errors import Compacted, ConfigError, ProposalDropped
from shardkv.raft.log import RaftLog
from shardkv.raft.progress import Progress, ProgressState
from shardkv.raft.quorum import VoteResult, committed_index, vote_result
from shardkv.raft.read_only import ReadOnly
from shardkv.raft.storage import BOOTSTRAP_INDEX, Storage
from shardkv.raft.types import (
    CAMPAIGN_TRANSFER,
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

__all__ = ["Config", "Raft"]

_SNAPSHOT_CHUNKS_IN_FLIGHT = 4


@dataclass(slots=True)
class Config:
    """How one Raft peer behaves. Ticks are the unit of time."""

    id: int
    election_tick: int = 10
    heartbeat_tick: int = 1
    # The index the application has already applied (a restart of a node
    # whose state machine is durable); entries up to it are not handed out.
    applied: int = 0
    max_size_per_msg: int = 1 << 20
    max_inflight: int = 256
    max_committed_size_per_ready: int | None = 8 << 20
    check_quorum: bool = True
    pre_vote: bool = True
    lease_reads: bool = False
    snapshot_chunk_size: int = 1 << 20
    seed: int | None = None

    def validate(self) -> None:
        if self.id == NONE:
            raise ConfigError("the node id must be a positive integer")
        if self.heartbeat_tick <= 0:
            raise ConfigError("heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError("election_tick must be greater than heartbeat_tick")
        if self.max_inflight <= 0:
            raise ConfigError("max_inflight must be positive")
        if self.snapshot_chunk_size <= 0:
            raise ConfigError("snapshot_chunk_size must be positive")
        if self.lease_reads and not self.check_quorum:
            raise ConfigError("lease_reads needs check_quorum (followers must honour leases)")


class Raft:
    def __init__(self, config: Config, storage: Storage) -> None:
        config.validate()
        self.id = config.id
        self.config = config
        self.random = random.Random(config.seed if config.seed is not None else config.id)
        self.log = RaftLog(storage, config.max_committed_size_per_ready)
        self.election_timeout = config.election_tick
        self.heartbeat_timeout = config.heartbeat_tick

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.pending_reads: list[bytes] = []

        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout
        # A clock of ticks since start, stamped on heartbeats for leases;
        # starts at 1 so that 0 means "never acknowledged".
        self.clock = 1
        # Votes refused until this many ticks have passed (see module notes).
        self.vote_hold = self.election_timeout if config.check_quorum else 0
        self.lease_revoked = False
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        # Proposals appended but not yet sent: all of a round's proposals go
        # out as one append per peer when the runtime takes the Ready.
        self.append_pending = False
        # The snapshot being received: (index, term) and the bytes so far.
        self.incoming_snapshot: tuple[tuple[int, int], bytearray] | None = None

        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election

        hard_state, conf_state = storage.initial_state()
        self._set_conf_state(conf_state)
        if not hard_state.is_empty():
            self._load_hard_state(hard_state)
        if self.term <= BOOTSTRAP_INDEX:
            # Still at the bootstrap term: this replica never acknowledged a
            # leader (that would have raised and persisted its term), so no
            # lease can be at stake and a new group elects without waiting.
            self.vote_hold = 0
        if config.applied > 0:
            self.log.applied_to(config.applied)
        self.become_follower(self.term, NONE)

    def __repr__(self) -> str:
        return (
            f"Raft(id={self.id}, {self.role.name}, term={self.term}, lead={self.lead}, "
            f"{self.log!r})"
        )

    # -- state snapshots for the runtime ----------------------------------------

    def hard_state(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(leader_id=self.lead, role=self.role)

    def conf_state(self) -> ConfState:
        return ConfState(voters=tuple(sorted(self.voters)), learners=tuple(sorted(self.learners)))

    def promotable(self) -> bool:
        return self.id in self.voters

    def _load_hard_state(self, hard_state: HardState) -> None:
        if not self.log.committed <= hard_state.commit <= self.log.last_index():
            raise ConfigError(
                f"hard state commit {hard_state.commit} is outside "
                f"[{self.log.committed}, {self.log.last_index()}]"
            )
        self.log.committed = hard_state.commit
        self.term = hard_state.term
        self.vote = hard_state.vote

    # -- sending ----------------------------------------------------------

    def _send(self, message: Message) -> None:
        message.from_ = self.id
        if message.type not in (
            MessageType.VOTE,
            MessageType.VOTE_RESPONSE,
            MessageType.PRE_VOTE,
            MessageType.PRE_VOTE_RESPONSE,
        ):
            message.term = self.term
        self.msgs.append(message)

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        progress = self.progress[to]
        if progress.is_paused():
            return False
        previous_index = progress.next - 1
        previous_term = self.log.term(previous_index)
        entries: list[Entry] | None = None
        if previous_term is not None:
            try:
                entries = self.log.entries_from(progress.next, self.config.max_size_per_msg)
            except Compacted:
                entries = None
        if previous_term is None or entries is None:
            return self._start_snapshot(to, progress)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                MessageType.APPEND,
                to=to,
                index=previous_index,
                log_term=previous_term,
                entries=entries,
                commit=self.log.committed,
            )
        )
        progress.sent_entries(entries[-1].index if entries else previous_index, len(entries))
        return True

    def _start_snapshot(self, to: int, progress: Progress) -> bool:
        snapshot = self.log.snapshot()
        if snapshot.is_empty():
            # Storage has compacted without a snapshot to show for it; try again later.
            return False
        progress.become_snapshot(snapshot.metadata.index, self.clock)
        self._send_snapshot_chunks(to, progress)
        return True

    def _send_snapshot_chunks(self, to: int, progress: Progress) -> None:
        snapshot = self.log.snapshot()
        if snapshot.metadata.index != progress.pending_snapshot:
            # A newer snapshot replaced the one being sent: start over with it.
            progress.become_snapshot(snapshot.metadata.index, self.clock)
        data = snapshot.data
        chunk_size = self.config.snapshot_chunk_size
        window_end = progress.snapshot_offset + chunk_size * _SNAPSHOT_CHUNKS_IN_FLIGHT
        while not progress.snapshot_all_sent and progress.snapshot_sent < window_end:
            offset = progress.snapshot_sent
            end = min(offset + chunk_size, len(data))
            done = end == len(data)
            self._send(
                Message(
                    MessageType.SNAPSHOT,
                    to=to,
                    snapshot=Snapshot(snapshot.metadata, data[offset:end]),
                    snapshot_offset=offset,
                    snapshot_done=done,
                )
            )
            progress.snapshot_sent = end
            progress.snapshot_all_sent = done

    def _send_heartbeat(self, to: int, context: bytes) -> None:
        # Never tell a follower a commit index beyond what it has matched:
        # its log past that point may still differ from ours.
        commit = min(self.progress[to].match, self.log.committed)
        self._send(
            Message(MessageType.HEARTBEAT, to=to, commit=commit, context=context, stamp=self.clock)
        )

    def _peers(self) -> list[int]:
        return [node_id for node_id in self.progress if node_id != self.id]

    def flush_appends(self) -> None:
        """Send what proposals appended since the last Ready, one message per peer."""
        if self.append_pending:
            self.append_pending = False
            if self.role == Role.LEADER:
                self.bcast_append()

    def bcast_append(self) -> None:
        self.append_pending = False
        for node_id in self._peers():
            self._maybe_send_append(node_id, send_if_empty=True)

    def bcast_heartbeat(self, context: bytes | None = None) -> None:
        if context is None:
            context = self.read_only.last_pending_context() or b""
        for node_id in self._peers():
            self._send_heartbeat(node_id, context)

    # -- role changes ------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.election_timeout + self.random.randrange(
            self.election_timeout
        )
        self.lead_transferee = NONE
        self.lease_revoked = False
        self.votes = {}
        last_index = self.log.last_index()
        for node_id, old in list(self.progress.items()):
            progress = Progress(last_index + 1, self.config.max_inflight, old.is_learner)
            if node_id == self.id:
                progress.match = last_index
            self.progress[node_id] = progress
        self.pending_conf_index = 0
        self.read_only.reset()
        self.pending_reads = []

    def become_follower(self, term: int, lead: int) -> None:
        self._step_role = self._step_follower
        self._tick_role = self._tick_election
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def become_pre_candidate(self) -> None:
        assert self.role != Role.LEADER, "a leader cannot become pre-candidate"
        # Neither the term nor the vote changes: a pre-vote that fails leaves
        # no trace that could disrupt the group (§9.6 of the dissertation).
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE

    def become_candidate(self) -> None:
        assert self.role != Role.LEADER, "a leader cannot become candidate"
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def become_leader(self) -> None:
        assert self.role != Role.FOLLOWER, "a follower cannot become leader directly"
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self.progress[self.id].become_replicate()
        # No configuration change until everything in the log at election time
        # has been applied: an older term's change may still be in flight.
        self.pending_conf_index = self.log.last_index()
        # §5.4.2 / §8: an entry of our own term lets earlier entries commit and
        # tells us the commit index for reads.
        self._append_entries([Entry(term=0, index=0)])

    # -- ticking -------------------------------------------------------------

    def tick(self) -> None:
        self.clock += 1
        if self.vote_hold > 0:
            self.vote_hold -= 1
        self._tick_role()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.hup()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.config.check_quorum and not self._quorum_active():
                self.become_follower(self.term, NONE)
                return
            # A transfer that has not finished within an election timeout failed.
            self._abort_leader_transfer()
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.bcast_heartbeat()

    def _quorum_active(self) -> bool:
        """§6.2 check-quorum: has a quorum been heard from since the last check?"""
        active: dict[int, bool] = {}
        for node_id, progress in self.progress.items():
            if node_id == self.id:
                active[node_id] = True
                continue
            active[node_id] = progress.recent_active
            progress.recent_active = False
        return vote_result(self.voters, active) == VoteResult.WON

    # -- elections -----------------------------------------------------------

    def hup(self, transfer: bool = False) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf_change():
            # The configuration we would campaign under is not final yet.
            return
        if self.config.pre_vote and not transfer:
            self._campaign(pre_vote=True, transfer=False)
        else:
            self._campaign(pre_vote=False, transfer=transfer)

    def _has_unapplied_conf_change(self) -> bool:
        if self.log.committed <= self.log.applied:
            return False
        try:
            pending = self.log.slice(self.log.applied + 1, self.log.committed + 1)
        except Compacted:
            return False
        return any(entry.type == EntryType.CONF_CHANGE for entry in pending)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self.become_pre_candidate()
            vote_type = MessageType.PRE_VOTE
            term = self.term + 1
        else:
            self.become_candidate()
            vote_type = MessageType.VOTE
            term = self.term
        if self._poll(self.id, granted=True) == VoteResult.WON:
            # A group of one.
            if pre_vote:
                self._campaign(pre_vote=False, transfer=transfer)
            else:
                self.become_leader()
            return
        context = CAMPAIGN_TRANSFER if transfer else b""
        for node_id in sorted(self.voters):
            if node_id == self.id:
                continue
            self._send(
                Message(
                    vote_type,
                    to=node_id,
                    term=term,
                    index=self.log.last_index(),
                    log_term=self.log.last_term(),
                    context=context,
                )
            )

    def _poll(self, node_id: int, granted: bool) -> VoteResult:
        self.votes.setdefault(node_id, granted)
        return vote_result(self.voters, self.votes)

    # -- stepping -------------------------------------------------------------

    def step(self, message: Message) -> None:
        if message.term > self.term:
            if message.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                forced = message.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.config.check_quorum
                    and self.lead != NONE
                    and self.election_elapsed < self.election_timeout
                )
                if not forced and (in_lease or self.vote_hold > 0):
                    # §6 / §4.2.3: a live leader is known, so this candidate is
                    # disruptive; ignore it (and keep any lease promise).
                    return
            if message.type == MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif message.type == MessageType.PRE_VOTE_RESPONSE and not message.reject:
                pass  # our future term, granted: we bump it when we campaign
            elif message.type in (
                MessageType.APPEND,
                MessageType.HEARTBEAT,
                MessageType.SNAPSHOT,
            ):
                self.become_follower(message.term, message.from_)
            else:
                self.become_follower(message.term, NONE)
        elif message.term < self.term and message.term != 0:
            if message.type in (MessageType.HEARTBEAT, MessageType.APPEND) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader (its partition healed) would otherwise never
                # learn of the newer term: pre-vote keeps us from bumping ours.
                self._send(Message(MessageType.APPEND_RESPONSE, to=message.from_))
            elif message.type == MessageType.PRE_VOTE:
                self._send(
                    Message(
                        MessageType.PRE_VOTE_RESPONSE,
                        to=message.from_,
                        term=self.term,
                        reject=True,
                    )
                )
            return

        if message.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(message)
        else:
            self._step_role(message)

    def _handle_vote_request(self, message: Message) -> None:
        can_vote = (
            self.vote == message.from_
            or (self.vote == NONE and self.lead == NONE)
            or (message.type == MessageType.PRE_VOTE and message.term > self.term)
        )
        response_type = (
            MessageType.VOTE_RESPONSE
            if message.type == MessageType.VOTE
            else MessageType.PRE_VOTE_RESPONSE
        )
        if can_vote and self.log.is_up_to_date(message.index, message.log_term):
            # §5.2, §5.4.1: one vote per term, only for a log at least as up to date.
            self._send(Message(response_type, to=message.from_, term=message.term))
            if message.type == MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = message.from_
        else:
            self._send(Message(response_type, to=message.from_, term=self.term, reject=True))

    def _step_follower(self, message: Message) -> None:
        kind = message.type
        if kind == MessageType.APPEND:
            self.election_elapsed = 0
            self.lead = message.from_
            self._handle_append_entries(message)
        elif kind == MessageType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = message.from_
            self._handle_heartbeat(message)
        elif kind == MessageType.SNAPSHOT:
            self.election_elapsed = 0
            self.lead = message.from_
            self._handle_snapshot(message)
        elif kind == MessageType.TIMEOUT_NOW:
            # §3.10: the leader hands over; campaign at once, skipping pre-vote.
            self.hup(transfer=True)

    def _step_candidate(self, message: Message) -> None:
        kind = message.type
        if kind == MessageType.APPEND:
            self.become_follower(message.term, message.from_)
            self._handle_append_entries(message)
        elif kind == MessageType.HEARTBEAT:
            self.become_follower(message.term, message.from_)
            self._handle_heartbeat(message)
        elif kind == MessageType.SNAPSHOT:
            self.become_follower(message.term, message.from_)
            self._handle_snapshot(message)
        elif (kind == MessageType.PRE_VOTE_RESPONSE and self.role == Role.PRE_CANDIDATE) or (
            kind == MessageType.VOTE_RESPONSE and self.role == Role.CANDIDATE
        ):
            result = self._poll(message.from_, granted=not message.reject)
            if result == VoteResult.WON:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre_vote=False, transfer=False)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif result == VoteResult.LOST:
                self.become_follower(self.term, NONE)

    def _step_leader(self, message: Message) -> None:
        progress = self.progress.get(message.from_)
        if progress is None:
            return
        kind = message.type
        if kind == MessageType.APPEND_RESPONSE:
            progress.recent_active = True
            self._handle_append_response(message, progress)
        elif kind == MessageType.HEARTBEAT_RESPONSE:
            progress.recent_active = True
            self._handle_heartbeat_response(message, progress)
        elif kind == MessageType.SNAPSHOT_RESPONSE:
            progress.recent_active = True
            self._handle_snapshot_response(message, progress)

    # -- follower handlers ---------------------------------------------------

    def _handle_append_entries(self, message: Message) -> None:
        if message.index < self.log.committed:
            self._send(
                Message(MessageType.APPEND_RESPONSE, to=message.from_, index=self.log.committed)
            )
            return
        last_new = self.log.maybe_append(
            message.index, message.log_term, message.commit, message.entries
        )
        if last_new is not None:
            self._send(Message(MessageType.APPEND_RESPONSE, to=message.from_, index=last_new))
            return
        # §5.3 with fast backtracking: tell the leader the last index whose
        # term could still match, and its term, so it skips whole terms.
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(message.index, self.log.last_index()), message.log_term
        )
        self._send(
            Message(
                MessageType.APPEND_RESPONSE,
                to=message.from_,
                index=message.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, message: Message) -> None:
        # The leader never names a commit past what we acknowledged, unless
        # we lost our log (a wiped data dir): then commit only what we hold,
        # and tell the leader where our log ends so it probes again.
        self.log.commit_to(min(message.commit, self.log.last_index()))
        self._send(
            Message(
                MessageType.HEARTBEAT_RESPONSE,
                to=message.from_,
                index=self.log.last_index(),
                context=message.context,
                stamp=message.stamp,
            )
        )

    def _handle_snapshot(self, message: Message) -> None:
        assert message.snapshot is not None, "a SNAPSHOT message carries a snapshot"
        metadata = message.snapshot.metadata
        key = (metadata.index, metadata.term)
        offset = message.snapshot_offset
        if metadata.index <= self.log.committed:
            # We have all it covers (perhaps our answer to its last chunk was
            # lost): say where we are so the leader moves on to appends.
            self.incoming_snapshot = None
            self._send(
                Message(MessageType.APPEND_RESPONSE, to=message.from_, index=self.log.committed)
            )
            return
        incoming = self.incoming_snapshot
        if offset == 0 and (incoming is None or incoming[0] != key):
            incoming = self.incoming_snapshot = (key, bytearray())
        if incoming is None or incoming[0] != key or offset > len(incoming[1]):
            # A gap: a chunk was lost. Name the offset we need.
            expected = len(incoming[1]) if incoming is not None and incoming[0] == key else 0
            self._send(
                Message(
                    MessageType.SNAPSHOT_RESPONSE,
                    to=message.from_,
                    index=metadata.index,
                    snapshot_offset=expected,
                    reject=True,
                )
            )
            return
        buffer = incoming[1]
        if offset == len(buffer):
            buffer.extend(message.snapshot.data)
        # else: a duplicate of bytes we hold (one snapshot per (index, term)).
        if not (message.snapshot_done and offset + len(message.snapshot.data) == len(buffer)):
            self._send(
                Message(
                    MessageType.SNAPSHOT_RESPONSE,
                    to=message.from_,
                    index=metadata.index,
                    snapshot_offset=len(buffer),
                )
            )
            return
        snapshot = Snapshot(metadata, bytes(buffer))
        self.incoming_snapshot = None
        if self.restore(snapshot):
            self._send(
                Message(MessageType.APPEND_RESPONSE, to=message.from_, index=self.log.last_index())
            )
        else:
            self._send(
                Message(MessageType.APPEND_RESPONSE, to=message.from_, index=self.log.committed)
            )

    def restore(self, snapshot: Snapshot) -> bool:
        """§7: replace our log with ``snapshot`` unless we already have what it covers."""
        metadata = snapshot.metadata
        if metadata.index <= self.log.committed:
            return False
        assert self.role == Role.FOLLOWER, "only a follower receives snapshots"
        # The snapshot may predate our own addition: the entries after it,
        # which the leader sends next, make us a member again.
        if self.log.match_term(metadata.index, metadata.term):
            # We have the entry the snapshot ends at: just commit up to it.
            self.log.commit_to(metadata.index)
            return False
        self.log.restore(snapshot)
        self._set_conf_state(metadata.conf_state)
        return True

    # -- leader handlers -------------------------------------------------------

    def _handle_append_response(self, message: Message, progress: Progress) -> None:
        if message.reject:
            next_probe = message.reject_hint
            if message.log_term > 0:
                next_probe, _ = self.log.find_conflict_by_term(
                    message.reject_hint, message.log_term
                )
            if progress.maybe_decrease_to(message.index, next_probe):
                if progress.state == ProgressState.REPLICATE:
                    progress.become_probe()
                self._maybe_send_append(message.from_, send_if_empty=True)
            return
        if not (
            progress.maybe_update(message.index)
            or (progress.match == message.index and progress.state == ProgressState.PROBE)
        ):
            return
        if progress.state == ProgressState.PROBE:
            progress.become_replicate()
        elif (
            progress.state == ProgressState.SNAPSHOT
            and progress.match + 1 >= self.log.first_index()
        ):
            progress.become_probe()
            progress.become_replicate()
        elif progress.state == ProgressState.REPLICATE:
            progress.inflights.free_le(message.index)
        if self.maybe_commit():
            self.bcast_append()
        # Flow control may now allow several size-limited appends at once.
        while self._maybe_send_append(message.from_, send_if_empty=False):
            pass
        if message.from_ == self.lead_transferee and progress.match == self.log.last_index():
            self._send_timeout_now(message.from_)

    def _handle_heartbeat_response(self, message: Message, progress: Progress) -> None:
        if message.index < progress.match and progress.state != ProgressState.SNAPSHOT:
            # The follower's log ends before what it acknowledged: it lost its
            # data. Probe from where it ends (a reordered older answer only
            # costs a probe round; commit never moves back).
            progress.match = message.index
            progress.become_probe()
        progress.probe_sent = False
        if message.stamp > progress.acked_stamp:
            progress.acked_stamp = message.stamp
        if progress.state == ProgressState.REPLICATE and progress.inflights.full():
            # A lost append would otherwise stall the pipeline for good.
            progress.inflights.free_first_one()
        if progress.state == ProgressState.SNAPSHOT:
            if self.clock - progress.snapshot_progress_clock >= 2 * self.heartbeat_timeout:
                # The chunks in flight seem lost: resend from what was acknowledged.
                progress.snapshot_sent = progress.snapshot_offset
                progress.snapshot_all_sent = False
                progress.snapshot_progress_clock = self.clock
                self._send_snapshot_chunks(message.from_, progress)
        elif progress.match < self.log.last_index():
            self._maybe_send_append(message.from_, send_if_empty=True)
        if not message.context or message.from_ not in self.voters:
            return
        acks = self.read_only.receive_ack(message.from_, message.context)
        if acks is None:
            return
        if vote_result(self.voters, dict.fromkeys(acks, True)) != VoteResult.WON:
            return
        for read in self.read_only.advance(message.context):
            self.read_states.append(ReadState(read.index, read.context))

    def _handle_snapshot_response(self, message: Message, progress: Progress) -> None:
        if progress.state != ProgressState.SNAPSHOT or message.index != progress.pending_snapshot:
            return
        if message.reject:
            # A chunk was lost. Rewind, but send nothing now: every chunk
            # behind the lost one draws the same answer, and resending on each
            # would multiply traffic. The stall check on heartbeats resends.
            # Trust the follower's offset even if it is behind what it
            # acknowledged: it may have restarted and lost the chunks.
            progress.snapshot_offset = message.snapshot_offset
            progress.snapshot_sent = message.snapshot_offset
            progress.snapshot_all_sent = False
            return
        if message.snapshot_offset > progress.snapshot_offset:
            progress.snapshot_offset = message.snapshot_offset
            progress.snapshot_progress_clock = self.clock
            progress.snapshot_sent = max(progress.snapshot_sent, progress.snapshot_offset)
            self._send_snapshot_chunks(message.from_, progress)

    def maybe_commit(self) -> bool:
        matched = {node_id: progress.match for node_id, progress in self.progress.items()}
        if not self.log.maybe_commit(committed_index(self.voters, matched), self.term):
            return False
        self._release_pending_reads()
        return True

    # -- proposals ---------------------------------------------------------------

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise ProposalDropped("not the leader", self.lead)
        if self.id not in self.progress:
            raise ProposalDropped("this node was removed from the group", NONE)
        if self.lead_transferee != NONE:
            raise ProposalDropped("a leadership transfer is in progress", self.lead_transferee)

    def _append_entries(self, entries: Sequence[Entry]) -> tuple[int, int]:
        """Append as leader; returns the (index, term) of the first entry."""
        last_index = self.log.last_index()
        stamped = [
            Entry(term=self.term, index=last_index + 1 + offset, type=entry.type, data=entry.data)
            for offset, entry in enumerate(entries)
        ]
        new_last = self.log.append(stamped)
        self.progress[self.id].maybe_update(new_last)
        self.maybe_commit()
        return last_index + 1, self.term

    def propose(self, data: bytes) -> tuple[int, int]:
        return self.propose_batch([data])

    def propose_batch(self, payloads: Sequence[bytes]) -> tuple[int, int]:
        """Append one entry per payload; returns the first one's (index, term).

        The proposal committed iff the entry at that index, when applied, has
        that term; any other outcome means it was overwritten.
        """
        self._check_can_propose()
        if not payloads:
            raise ProposalDropped("nothing to propose", self.lead)
        position = self._append_entries([Entry(term=0, index=0, data=data) for data in payloads])
        self.append_pending = True
        return position

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        self._check_can_propose()
        if self.pending_conf_index > self.log.applied:
            raise ProposalDropped(
                "a configuration change is still pending; retry once it is applied", self.id
            )
        node_id = change.node_id
        if node_id == NONE:
            raise ProposalDropped("a configuration change needs a node id", self.id)
        if change.type == ConfChangeType.ADD_VOTER and node_id in self.voters:
            raise ProposalDropped(f"node {node_id} is already a voter", self.id)
        if change.type == ConfChangeType.ADD_LEARNER:
            if node_id in self.learners:
                raise ProposalDropped(f"node {node_id} is already a learner", self.id)
            if node_id == self.id:
                raise ProposalDropped("transfer leadership before demoting the leader", self.id)
        if change.type == ConfChangeType.REMOVE_NODE:
            if node_id not in self.voters and node_id not in self.learners:
                raise ProposalDropped(f"node {node_id} is not a member", self.id)
            if self.voters == {node_id}:
                raise ProposalDropped("cannot remove the last voter", self.id)
        entry = Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=change.encode())
        position = self._append_entries([entry])
        self.pending_conf_index = position[0]
        self.append_pending = True
        return position

    # -- membership ------------------------------------------------------------

    def _set_conf_state(self, conf_state: ConfState) -> None:
        self.voters = set(conf_state.voters)
        self.learners = set(conf_state.learners)
        next_index = self.log.last_index() + 1
        self.progress = {}
        for node_id in self.voters | self.learners:
            progress = Progress(next_index, self.config.max_inflight, node_id in self.learners)
            if node_id == self.id:
                progress.match = next_index - 1
            self.progress[node_id] = progress

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Make an applied CONF_CHANGE entry take effect; returns the new configuration."""
        node_id = change.node_id
        if change.type == ConfChangeType.ADD_VOTER:
            self.learners.discard(node_id)
            self.voters.add(node_id)
        elif change.type == ConfChangeType.ADD_LEARNER:
            self.voters.discard(node_id)
            self.learners.add(node_id)
        else:
            self.voters.discard(node_id)
            self.learners.discard(node_id)
        added = False
        if node_id in self.voters or node_id in self.learners:
            progress = self.progress.get(node_id)
            if progress is None:
                added = True
                progress = Progress(self.log.last_index() + 1, self.config.max_inflight)
                # New members count as active: check-quorum should not fail
                # before they had a chance to answer.
                progress.recent_active = True
                self.progress[node_id] = progress
            progress.is_learner = node_id in self.learners
        else:
            self.progress.pop(node_id, None)

        if self.role == Role.LEADER:
            if self.id not in self.voters:
                # Removed or demoted: stop leading; the others elect a leader.
                self.become_follower(self.term, NONE)
            else:
                if self.lead_transferee != NONE and self.lead_transferee not in self.voters:
                    self._abort_leader_transfer()
                # The quorum may have shrunk: entries may now commit.
                if self.maybe_commit():
                    self.bcast_append()
                else:
                    for peer in self._peers():
                        self._maybe_send_append(peer, send_if_empty=False)
                if added and node_id != self.id:
                    # Probe the new member now rather than a heartbeat later.
                    self._maybe_send_append(node_id, send_if_empty=True)
        return self.conf_state()

    # -- leadership transfer -------------------------------------------------------

    def transfer_leadership(self, transferee: int) -> None:
        """§3.10: bring ``transferee`` up to date, then tell it to campaign."""
        if self.role != Role.LEADER:
            raise ProposalDropped("not the leader", self.lead)
        if transferee == self.id or transferee not in self.voters:
            raise ProposalDropped(f"node {transferee} is not another voter", self.id)
        if self.lead_transferee == transferee:
            return
        self._abort_leader_transfer()
        self.lead_transferee = transferee
        # The transfer must finish within one election timeout.
        self.election_elapsed = 0
        if self.progress[transferee].match == self.log.last_index():
            self._send_timeout_now(transferee)
        else:
            self._maybe_send_append(transferee, send_if_empty=True)

    def _send_timeout_now(self, to: int) -> None:
        # The transferee's campaign overrides followers' lease promises, so
        # ours ends now, even if the transfer later fails.
        self.lease_revoked = True
        self._send(Message(MessageType.TIMEOUT_NOW, to=to))

    def _abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    # -- reads ---------------------------------------------------------------

    def read_index(self, context: bytes) -> None:
        """§6.4: ask for a read point; it appears in ``read_states`` with ``context``."""
        if self.role != Role.LEADER:
            raise ProposalDropped("not the leader", self.lead)
        if self.log.term(self.log.committed) != self.term:
            # Until an entry of our term commits we do not know the commit index.
            self.pending_reads.append(context)
            return
        self._serve_read(context)

    def _release_pending_reads(self) -> None:
        if not self.pending_reads or self.log.term(self.log.committed) != self.term:
            return
        pending, self.pending_reads = self.pending_reads, []
        for context in pending:
            self._serve_read(context)

    def _serve_read(self, context: bytes) -> None:
        if self.voters == {self.id} or self.lease_valid():
            self.read_states.append(ReadState(self.log.committed, context))
            return
        self.read_only.add_request(self.log.committed, context, self.id)
        self.bcast_heartbeat(context)

    def lease_valid(self) -> bool:
        if (
            not self.config.lease_reads
            or self.role != Role.LEADER
            or self.lease_revoked
            or self.lead_transferee != NONE
        ):
            return False
        stamps = {
            node_id: self.clock if node_id == self.id else progress.acked_stamp
            for node_id, progress in self.progress.items()
        }
        lease_start = committed_index(self.voters, stamps)
        return lease_start > 0 and self.clock < lease_start + self.election_timeout

    # -- reports from the runtime ---------------------------------------------

    def report_unreachable(self, node_id: int) -> None:
        progress = self.progress.get(node_id)
        if (
            self.role == Role.LEADER
            and progress is not None
            and progress.state == ProgressState.REPLICATE
        ):
            # Stop streaming into the void; probe once it answers again.
            progress.become_probe()
