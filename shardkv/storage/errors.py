"""Errors of the storage layer.

::

    EngineError
    ├── DataDirInUse         the data directory is open elsewhere (another process or Engine)
    ├── EngineClosed         the engine was used after close()
    ├── CorruptValue         a stored key or value this version cannot decode
    ├── StagingConflict      a group's writes staged into two open batches at once
    ├── AlreadyBootstrapped  bootstrap() of a group that already has Raft state
    └── SnapshotTooLarge     a group's snapshot image would pass MAX_SNAPSHOT_BYTES
                             (defined in ``shardkv.fsm.snapshot``, not here)

RocksDB's own exceptions are translated into these in ``engine`` only, with
``raise ... from exc``. The questions the Raft core asks of a group's log keep
the Raft core's answers (``Compacted``, ``Unavailable``, ``SnapshotOutOfDate``
from ``shardkv.raft``), because the core catches those by type.
"""

from __future__ import annotations

__all__ = [
    "AlreadyBootstrapped",
    "CorruptValue",
    "DataDirInUse",
    "EngineClosed",
    "EngineError",
    "StagingConflict",
]


class EngineError(Exception):
    """Root of every error the storage layer raises itself."""


class DataDirInUse(EngineError):
    """Another process, or another open engine in this one, holds the data directory."""


class EngineClosed(EngineError):
    """The engine (or a scan or batch of it) was used after ``close()``."""


class CorruptValue(EngineError):
    """Stored bytes that this version cannot decode: corruption, or a newer format."""


class StagingConflict(EngineError):
    """A group's writes were staged into a batch while another open batch holds some."""


class AlreadyBootstrapped(EngineError):
    """``bootstrap()`` of a group that already has a hard state or a snapshot."""
