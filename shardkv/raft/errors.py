"""Errors of the Raft core.

::

    RaftError
    ├── ProposalDropped      the proposal was not appended (not leader, transfer, pending change)
    ├── ConfigError          an invalid Config
    └── StorageError
        ├── Compacted        the requested index is below the first available one
        ├── Unavailable      the requested index is above the last one
        └── SnapshotOutOfDate  a snapshot older than the one held
"""

from __future__ import annotations

__all__ = [
    "Compacted",
    "ConfigError",
    "ProposalDropped",
    "RaftError",
    "SnapshotOutOfDate",
    "StorageError",
    "Unavailable",
]


class RaftError(Exception):
    """Root of every error the Raft core raises."""


class ProposalDropped(RaftError):
    """The proposal was not appended; nothing of it will ever commit."""

    def __init__(self, reason: str, leader_id: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.leader_id = leader_id


class ConfigError(RaftError):
    """The configuration handed to Raft cannot work."""


class StorageError(RaftError):
    """The log storage cannot answer as asked."""


class Compacted(StorageError):
    """The index was compacted into a snapshot."""


class Unavailable(StorageError):
    """The index is past the end of the log."""


class SnapshotOutOfDate(StorageError):
    """The snapshot is older than the one already held."""
