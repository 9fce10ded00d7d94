"""shardkv: a sharded, replicated key-value store.

Many independent Raft groups each own part of a consistent-hash ring and keep
their data in RocksDB; a stateless router (the top-level ``router`` package)
sends every request to the group that owns the key. This package holds the
node side: the pure Raft core, storage, the state machine and the multi-raft
runtime. See docs/design.md for the layers and who may import whom.
"""

__all__: list[str] = []
