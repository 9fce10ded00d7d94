"""A tiny synchronous harness for message-level Raft tests.

``Harness`` owns N ``RawNode``s over ``MemoryStorage`` and runs each node's
``Ready`` exactly as ``raw_node`` documents it: persist (snapshot, entries,
hard state), then send, then apply (calling ``apply_conf_change`` for
CONF_CHANGE entries), then ``advance``. Messages are delivered in FIFO order
with no delay until the group is quiet. Nothing ticks unless a test says so,
and every random choice comes from a seeded ``Config.seed``, so a test is one
fixed sequence of events.

Faults are per link (``cut``, ``isolate``) or per message (``drop``, a
predicate); ``duplicate`` delivers a message twice. Every message sent, dropped
or not, is kept in ``sent`` for tests that count round trips.

While it runs, the harness checks that nothing is sent before what it vouches
for is on disk: an accepted append's entries, a granted vote, a candidate's own
vote, and the term of every message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shardkv.raft import (
    NONE,
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    Ready,
    Role,
    Snapshot,
)
from shardkv.raft.raft import Raft

__all__ = ["Harness", "storage_with_log"]

_PRE_VOTE_TYPES = (MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESPONSE)


def storage_with_log(voters: Sequence[int], terms: Sequence[int], term: int) -> MemoryStorage:
    """A bootstrapped member's storage holding entries of ``terms`` from index 2 on.

    ``terms[0]`` is the term of index 2 (index 1 is the bootstrap snapshot),
    and the hard state is at ``term`` with only the bootstrap committed.
    """
    storage = MemoryStorage.with_voters(tuple(voters))
    storage.append(
        [Entry(term=entry_term, index=2 + offset) for offset, entry_term in enumerate(terms)]
    )
    storage.set_hard_state(HardState(term=term, commit=1))
    return storage


class Harness:
    def __init__(
        self,
        voters: int | Sequence[int] = 3,
        *,
        storages: dict[int, MemoryStorage] | None = None,
        seed: int = 0,
        **options: Any,
    ) -> None:
        ids = tuple(range(1, voters + 1)) if isinstance(voters, int) else tuple(voters)
        self.seed = seed
        self.options = options
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        self.running: set[int] = set()
        self.applied: dict[int, list[Entry]] = {}
        self.applied_index: dict[int, int] = {}
        self.snapshots: dict[int, list[Snapshot]] = {}
        self.conf_states: dict[int, ConfState] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.sent: list[Message] = []
        self.cuts: set[tuple[int, int]] = set()
        self.drop: Callable[[Message], bool] | None = None
        self.duplicate: Callable[[Message], bool] | None = None
        self._queue: list[Message] = []
        for node_id in ids:
            storage = (storages or {}).get(node_id) or MemoryStorage.with_voters(ids)
            self.add_node(node_id, storage)

    # -- membership of the harness (not of the Raft group) ---------------------

    def add_node(self, node_id: int, storage: MemoryStorage | None = None) -> RawNode:
        """Start a node over ``storage`` (an empty one: a node not yet in the group)."""
        self.storages[node_id] = storage if storage is not None else MemoryStorage()
        self.applied[node_id] = []
        self.snapshots[node_id] = []
        self.read_states[node_id] = []
        return self._start(node_id)

    def _start(self, node_id: int) -> RawNode:
        storage = self.storages[node_id]
        snapshot = storage.snapshot()
        # The state machine restarts from the snapshot and replays the log.
        self.applied_index[node_id] = snapshot.metadata.index
        self.applied[node_id] = [
            e for e in self.applied[node_id] if e.index <= snapshot.metadata.index
        ]
        self.conf_states[node_id] = snapshot.metadata.conf_state
        config = Config(
            id=node_id,
            applied=snapshot.metadata.index,
            seed=self.seed * 1000 + node_id,
            **self.options,
        )
        self.nodes[node_id] = RawNode(config, storage)
        self.running.add(node_id)
        return self.nodes[node_id]

    def crash(self, node_id: int) -> None:
        """Lose everything not persisted; messages to the node are dropped."""
        self.running.discard(node_id)

    def restart(self, node_id: int) -> RawNode:
        return self._start(node_id)

    # -- the network -----------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self.cuts.update({(a, b), (b, a)})

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)

    def heal(self) -> None:
        self.cuts.clear()
        self.drop = None
        self.duplicate = None

    def messages(
        self,
        kind: MessageType | None = None,
        *,
        from_: int | None = None,
        to: int | None = None,
        since: int = 0,
    ) -> list[Message]:
        """Messages sent (delivered or not) that match, from position ``since`` of ``sent``."""
        return [
            m
            for m in self.sent[since:]
            if (kind is None or m.type == kind)
            and (from_ is None or m.from_ == from_)
            and (to is None or m.to == to)
        ]

    # -- driving ----------------------------------------------------------------

    def raft(self, node_id: int) -> Raft:
        """The node's ``Raft`` object, for assertions on its state."""
        return self.nodes[node_id].raft

    def leader(self) -> int:
        """The running leader of the highest term, or NONE."""
        best, best_term = NONE, -1
        for node_id in sorted(self.running):
            raft = self.nodes[node_id].raft
            if raft.role == Role.LEADER and raft.term > best_term:
                best, best_term = node_id, raft.term
        return best

    def elect(self, node_id: int) -> None:
        """Have ``node_id`` campaign now and win, as in a group up for a while.

        Skips the start-up vote hold (followers refuse votes for an election
        timeout after they start; that has its own test), then campaigns.
        """
        for other in self.running:
            self.nodes[other].raft.vote_hold = 0
        self.nodes[node_id].campaign()
        self.deliver_all()
        assert self.nodes[node_id].raft.role == Role.LEADER, self.nodes[node_id].raft

    def tick(self, *node_ids: int, times: int = 1) -> None:
        """Tick ``node_ids`` (every running node if none), delivering after each tick."""
        for _ in range(times):
            for node_id in sorted(node_ids or self.running):
                if node_id in self.running:
                    self.nodes[node_id].tick()
            self.deliver_all()

    def propose(self, node_id: int, data: bytes) -> tuple[int, int]:
        position = self.nodes[node_id].propose(data)
        self.deliver_all()
        return position

    def deliver_all(self, max_rounds: int = 10_000) -> None:
        """Run Readies and route messages until no node has anything to do."""
        for _ in range(max_rounds):
            for node_id in sorted(self.running):
                self.process_ready(node_id)
            if not self._queue:
                return
            batch, self._queue = self._queue, []
            for message in batch:
                self.deliver(message)
        raise AssertionError(f"the group is not quiet after {max_rounds} rounds")

    def deliver(self, message: Message) -> None:
        """Step one message into its destination, unless the network drops it."""
        if message.to not in self.running or (message.from_, message.to) in self.cuts:
            return
        if self.drop is not None and self.drop(message):
            return
        copies = 2 if self.duplicate is not None and self.duplicate(message) else 1
        for _ in range(copies):
            self.nodes[message.to].step(message)

    def process_ready(self, node_id: int) -> list[Message]:
        """One node's pending Readies, through the contract; returns the messages sent."""
        raw = self.nodes[node_id]
        sent: list[Message] = []
        while raw.has_ready():
            ready = raw.ready()
            self._persist(node_id, ready)
            self._check_persisted_before_send(node_id, ready.messages)
            sent.extend(ready.messages)
            self.sent.extend(ready.messages)
            self._queue.extend(ready.messages)
            self._apply(node_id, ready)
            raw.advance(ready)
        return sent

    # -- the Ready contract ------------------------------------------------------

    def _persist(self, node_id: int, ready: Ready) -> None:
        storage = self.storages[node_id]
        if ready.snapshot is not None:
            storage.apply_snapshot(ready.snapshot)
        if ready.entries:
            storage.append(ready.entries)
        if ready.hard_state is not None:
            storage.set_hard_state(ready.hard_state)

    def _apply(self, node_id: int, ready: Ready) -> None:
        raw = self.nodes[node_id]
        if ready.snapshot is not None:
            self.snapshots[node_id].append(ready.snapshot)
            self.conf_states[node_id] = ready.snapshot.metadata.conf_state
            self.applied_index[node_id] = ready.snapshot.metadata.index
        for entry in ready.committed_entries:
            assert entry.index == self.applied_index[node_id] + 1, (
                f"node {node_id} applies {entry.index} after {self.applied_index[node_id]}"
            )
            self.applied_index[node_id] = entry.index
            self.applied[node_id].append(entry)
            if entry.type == EntryType.CONF_CHANGE:
                self.conf_states[node_id] = raw.apply_conf_change(ConfChange.decode(entry.data))
        self.read_states[node_id].extend(ready.read_states)

    def _check_persisted_before_send(self, node_id: int, messages: Iterable[Message]) -> None:
        storage = self.storages[node_id]
        hard_state = storage.hard_state
        for message in messages:
            # A pre-vote carries the term the sender would campaign in, not its own.
            if message.type not in _PRE_VOTE_TYPES:
                assert hard_state.term >= message.term, (
                    f"node {node_id} sends {message} before persisting term {message.term}"
                )
            # An answer to an older term's leader may acknowledge entries that a
            # newer leader's append replaced before this Ready was written (as
            # in etcd). That leader cannot commit on it: the newer leader won
            # its election without this node, so a majority never held them.
            if (
                message.type == MessageType.APPEND_RESPONSE
                and not message.reject
                and message.term == hard_state.term
            ):
                assert storage.last_index() >= message.index, (
                    f"node {node_id} acknowledges {message.index} with only "
                    f"{storage.last_index()} persisted"
                )
            if message.type == MessageType.VOTE_RESPONSE and not message.reject:
                assert (hard_state.term, hard_state.vote) == (message.term, message.to), (
                    f"node {node_id} grants {message.to} a vote in term {message.term} "
                    f"with {hard_state} persisted"
                )
            if message.type == MessageType.VOTE:
                assert (hard_state.term, hard_state.vote) == (message.term, node_id), (
                    f"candidate {node_id} asks for votes in term {message.term} "
                    f"with {hard_state} persisted"
                )

    # -- views --------------------------------------------------------------------

    def log_terms(self, node_id: int) -> list[tuple[int, int]]:
        """(index, term) of every entry in the node's Raft log, first to last."""
        log = self.nodes[node_id].raft.log
        terms = []
        for index in range(log.first_index(), log.last_index() + 1):
            term = log.term(index)
            assert term is not None
            terms.append((index, term))
        return terms

    def persisted_terms(self, node_id: int) -> list[tuple[int, int]]:
        storage = self.storages[node_id]
        return [
            (index, storage.term(index))
            for index in range(storage.first_index(), storage.last_index() + 1)
        ]

    def applied_data(self, node_id: int) -> list[bytes]:
        return [e.data for e in self.applied[node_id] if e.type == EntryType.NORMAL and e.data]
