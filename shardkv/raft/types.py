"""The vocabulary of the Raft core: entries, messages, states, snapshots.

Everything here is a plain value (frozen where it can be) with no behaviour
beyond encoding a configuration change into an entry's payload. Every type has
a protobuf twin in ``proto/shardkv/v1/raft.proto``; the node's codec converts
between them, so this package stays free of generated code and of I/O.

A node id is a positive ``int``; ``NONE`` (0) means "no node" (no leader, no
vote). Terms and indexes start at 0, and the first real entry has index 1.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "CAMPAIGN_TRANSFER",
    "NONE",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "ReadState",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SoftState",
]

NONE = 0

# Context of a vote request sent because the old leader asked for a transfer:
# voters grant it even while they still believe in a live leader (§3.10 of the
# Raft dissertation), since that leader is the one handing over.
CAMPAIGN_TRANSFER = b"CampaignTransfer"


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class MessageType(enum.IntEnum):
    """Kinds of messages between peers of a group."""

    NONE = 0  # never sent: the zero value of the wire enum
    APPEND = 10
    APPEND_RESPONSE = 11
    VOTE = 12
    VOTE_RESPONSE = 13
    PRE_VOTE = 14
    PRE_VOTE_RESPONSE = 15
    SNAPSHOT = 16  # one chunk of a snapshot (paper §7, InstallSnapshot)
    SNAPSHOT_RESPONSE = 17  # acknowledges a chunk, or asks for an offset
    HEARTBEAT = 18
    HEARTBEAT_RESPONSE = 19
    TIMEOUT_NOW = 20  # leader to transferee: campaign now


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    def size(self) -> int:
        return len(self.data) + 24


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message of the same Ready is sent."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        return self == EMPTY_HARD_STATE


EMPTY_HARD_STATE = HardState()


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile, for the runtime's information only; never persisted."""

    leader_id: int
    role: Role


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image at ``metadata.index``. ``data`` is opaque here."""

    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read point: serve ``context``'s read once applied >= index."""

    index: int
    context: bytes


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0  # add a voter, or promote an existing learner
    REMOVE_NODE = 1  # remove a voter or a learner
    ADD_LEARNER = 2  # add a learner, or demote a voter (never the leader)


_CONF_CHANGE_HEADER = struct.Struct(">BQ")


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server membership change, carried in a CONF_CHANGE entry."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        return _CONF_CHANGE_HEADER.pack(self.type, self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        change_type, node_id = _CONF_CHANGE_HEADER.unpack_from(data)
        return cls(ConfChangeType(change_type), node_id, data[_CONF_CHANGE_HEADER.size :])


@dataclass(slots=True)
class Message:
    """A Raft message. Fields a type does not use stay at their defaults.

    ``snapshot`` on a SNAPSHOT message carries the metadata and one chunk of
    the data starting at ``snapshot_offset``; ``snapshot_done`` marks the last
    chunk. SNAPSHOT_RESPONSE carries in ``snapshot_offset`` the offset the
    follower expects next (with ``reject`` when it dropped what it had).
    ``stamp`` is the leader's tick clock when it sent a heartbeat; the response
    echoes it, and leader leases are measured from it.
    """

    type: MessageType
    to: int = NONE
    from_: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    snapshot_offset: int = 0
    snapshot_done: bool = False
    context: bytes = b""
    stamp: int = 0
