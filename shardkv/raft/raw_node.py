"""The runtime's handle on one Raft group: inputs in, ``Ready`` out.

The contract, for every round of the runtime (etcd's RawNode contract):

1. Feed inputs: ``tick()``, ``step(message)``, ``propose*``, ``read_index``,
   ``transfer_leadership``.
2. If ``has_ready()``, take ``ready()``.
3. Persist, durably and in this order: ``ready.snapshot`` (if any) then
   ``ready.entries`` (truncating any conflicting persisted suffix) and
   ``ready.hard_state`` (if not None). Nothing of this Ready may be sent or
   applied before this is on disk, with one exception: when
   ``ready.send_early`` is set, the messages may be sent while the entries
   are being persisted (a leader's appends: Raft thesis §10.2.1, etcd's
   "messages may be sent while entries from the same batch are being
   persisted"). The runtime must still persist them before it steps the
   next inputs, because the leader counts its own entries toward the commit
   index as soon as it appends them.
4. Send ``ready.messages``.
5. Apply: restore ``ready.snapshot`` into the state machine, then apply
   ``ready.committed_entries`` in order; for a CONF_CHANGE entry call
   ``apply_conf_change`` and keep the returned ConfState with the applied
   state. Serve ``ready.read_states`` once applied >= their index.
6. Call ``advance(ready)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardkv.raft.progress import ProgressState
from shardkv.raft.raft import Config, Raft
from shardkv.raft.storage import Storage
from shardkv.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    HardState,
    Message,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

__all__ = ["PeerStatus", "RawNode", "Ready", "Status"]


@dataclass(slots=True)
class Ready:
    # Volatile; changed since the last Ready, else None. Not persisted.
    soft_state: SoftState | None = None
    # Persist before sending (step 3); None when unchanged.
    hard_state: HardState | None = None
    # Persist before sending (step 3), then install (step 5).
    snapshot: Snapshot | None = None
    # Persist before sending (step 3).
    entries: list[Entry] = field(default_factory=list)
    # Send after persisting (step 4).
    messages: list[Message] = field(default_factory=list)
    # Apply after persisting (step 5).
    committed_entries: list[Entry] = field(default_factory=list)
    # Serve once applied through their index (step 5).
    read_states: list[ReadState] = field(default_factory=list)
    # Whether step 3 must reach disk before step 4 (an fsync): new entries, a
    # snapshot, or a changed term or vote. A commit index alone need not: it
    # is recovered from a quorum after a crash (etcd's MustSync).
    must_sync: bool = False
    # Whether the messages may leave while step 3 is on its way to disk: the
    # Ready of a leader with no snapshot and no new term or vote (its
    # messages are appends, heartbeats and answers that promise nothing
    # about its own disk). See the module docstring, step 3.
    send_early: bool = False


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: int
    next: int
    state: ProgressState
    is_learner: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    leader_id: int
    role: Role
    last_index: int
    first_index: int
    conf_state: ConfState
    peers: dict[int, PeerStatus]
    lease_valid: bool


class RawNode:
    def __init__(self, config: Config, storage: Storage) -> None:
        self.raft = Raft(config, storage)
        self._previous_soft = self.raft.soft_state()
        self._previous_hard = self.raft.hard_state()

    # -- inputs -------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        self.raft.hup()

    def step(self, message: Message) -> None:
        if message.type == message.type.NONE:
            raise ValueError("a message without a type cannot come from a peer")
        if message.from_ not in self.raft.progress and _is_response(message):
            # An answer from a node that is no longer a member; nobody waits for it.
            return
        self.raft.step(message)

    def propose(self, data: bytes) -> tuple[int, int]:
        return self.raft.propose(data)

    def propose_batch(self, payloads: list[bytes]) -> tuple[int, int]:
        return self.raft.propose_batch(payloads)

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        return self.raft.propose_conf_change(change)

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(change)

    def read_index(self, context: bytes) -> None:
        self.raft.read_index(context)

    def transfer_leadership(self, transferee: int) -> None:
        self.raft.transfer_leadership(transferee)

    def report_unreachable(self, node_id: int) -> None:
        self.raft.report_unreachable(node_id)

    # -- outputs ----------------------------------------------------------------

    def has_ready(self) -> bool:
        raft = self.raft
        raft.flush_appends()
        unstable = raft.log.unstable
        return bool(
            raft.msgs
            or raft.read_states
            or unstable.next_snapshot() is not None
            or len(unstable.entries) > unstable.in_progress
            or raft.log.has_next_committed()
            or raft.soft_state() != self._previous_soft
            or raft.hard_state() != self._previous_hard
        )

    def ready(self) -> Ready:
        raft = self.raft
        raft.flush_appends()
        log = raft.log
        ready = Ready(
            snapshot=log.unstable.next_snapshot(),
            entries=log.unstable.next_entries(),
            committed_entries=log.next_committed(),
            messages=raft.msgs,
            read_states=raft.read_states,
        )
        raft.msgs = []
        raft.read_states = []
        soft = raft.soft_state()
        if soft != self._previous_soft:
            ready.soft_state = soft
            self._previous_soft = soft
        hard = raft.hard_state()
        if hard != self._previous_hard:
            ready.hard_state = hard
        new_term_or_vote = (
            hard.term != self._previous_hard.term or hard.vote != self._previous_hard.vote
        )
        ready.must_sync = bool(ready.entries) or ready.snapshot is not None or new_term_or_vote
        ready.send_early = (
            raft.role == Role.LEADER and ready.snapshot is None and not new_term_or_vote
        )
        log.unstable.accept_in_progress()
        if ready.committed_entries:
            log.accept_applying(ready.committed_entries[-1].index)
        return ready

    def advance(self, ready: Ready) -> None:
        log = self.raft.log
        if ready.hard_state is not None:
            self._previous_hard = ready.hard_state
        if ready.snapshot is not None:
            log.stable_snapshot_to(ready.snapshot.metadata.index)
            log.applied_to(max(log.applied, ready.snapshot.metadata.index))
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1].index)

    def status(self) -> Status:
        raft = self.raft
        peers: dict[int, PeerStatus] = {}
        if raft.role == Role.LEADER:
            peers = {
                node_id: PeerStatus(p.match, p.next, p.state, p.is_learner)
                for node_id, p in raft.progress.items()
            }
        return Status(
            id=raft.id,
            term=raft.term,
            vote=raft.vote,
            commit=raft.log.committed,
            applied=raft.log.applied,
            leader_id=raft.lead,
            role=raft.role,
            last_index=raft.log.last_index(),
            first_index=raft.log.first_index(),
            conf_state=raft.conf_state(),
            peers=peers,
            lease_valid=raft.lease_valid(),
        )


def _is_response(message: Message) -> bool:
    return message.type in (
        message.type.APPEND_RESPONSE,
        message.type.HEARTBEAT_RESPONSE,
        message.type.SNAPSHOT_RESPONSE,
    )
