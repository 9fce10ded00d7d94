"""The Raft consensus algorithm as a pure, deterministic state machine.

No I/O, threads, clocks or global randomness: inputs come through
``RawNode.step``/``tick``/``propose*``/``read_index``, outputs leave as a
``Ready`` (see ``raw_node`` for the persist-send-apply-advance contract).
Modelled on etcd's raft library; the paper's sections are cited in the code.
"""

from shardkv.raft.errors import (
    Compacted,
    ConfigError,
    ProposalDropped,
    RaftError,
    SnapshotOutOfDate,
    StorageError,
    Unavailable,
)
from shardkv.raft.progress import ProgressState
from shardkv.raft.raft import Config
from shardkv.raft.raw_node import PeerStatus, RawNode, Ready, Status
from shardkv.raft.storage import MemoryStorage, Storage, bootstrap_snapshot
from shardkv.raft.types import (
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
    SnapshotMetadata,
    SoftState,
)

__all__ = [
    "NONE",
    "Compacted",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "ConfigError",
    "Entry",
    "EntryType",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "PeerStatus",
    "ProgressState",
    "ProposalDropped",
    "RaftError",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMetadata",
    "SnapshotOutOfDate",
    "SoftState",
    "Status",
    "Storage",
    "StorageError",
    "Unavailable",
    "bootstrap_snapshot",
]
