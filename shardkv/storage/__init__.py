"""The node's storage: one RocksDB per node process holding every group.

- ``keys``: the key layout (column families ``raft``, ``data``, ``meta``;
  every key starts with its group id), and ``values``: the value encodings.
- ``engine``: ``Engine`` (RocksDB) and ``MemoryEngine`` behind one interface,
  ``StorageEngine``; atomic ``Batch`` writes with commit hooks.
- ``raft_log``: ``GroupStorage``, one group's Raft ``Storage`` on an engine,
  staging its writes into the node's one batch per round.

Still to come here: a group's data snapshots, locks and transaction records.
"""

from shardkv.storage.engine import (
    Batch,
    ColumnFamily,
    Engine,
    MemoryDisk,
    MemoryEngine,
    StorageEngine,
)
from shardkv.storage.errors import (
    AlreadyBootstrapped,
    CorruptValue,
    DataDirInUse,
    EngineClosed,
    EngineError,
    StagingConflict,
)
from shardkv.storage.raft_log import GroupStorage, stored_groups

__all__ = [
    "AlreadyBootstrapped",
    "Batch",
    "ColumnFamily",
    "CorruptValue",
    "DataDirInUse",
    "Engine",
    "EngineClosed",
    "EngineError",
    "GroupStorage",
    "MemoryDisk",
    "MemoryEngine",
    "StagingConflict",
    "StorageEngine",
    "stored_groups",
]
