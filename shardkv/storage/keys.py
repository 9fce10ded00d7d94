"""The key layout of the node's RocksDB: the one place keys are made and read.

Every key starts with the group id as 8 bytes big-endian, so all of a group's
keys in a column family are one contiguous range (``group_range``), and byte
order is numeric order for group ids and Raft indexes alike::

    cf    key                               value (see ``values``)
    raft  group(8) 0x01 index(8)            a log entry
    raft  group(8) 0x02                     the hard state
    raft  group(8) 0x03                     the latest snapshot's metadata
    raft  group(8) 0x04                     the log start: (index, term) just before the first entry
    meta  group(8) 0x01                     the applied state: applied index and ConfState
    meta  group(8) 0x02                     the group's revision counter (shardkv.fsm)
    meta  group(8) 0x03 client_id(8)        a client session: its acked floor (shardkv.fsm)
    meta  group(8) 0x04                     the group's key count (shardkv.fsm)
    meta  group(8) 0x05                     the ring the group applied (shardkv.fsm)
    meta  group(8) 0x06 client_id(8) seq(8) a client's recorded result (shardkv.fsm)
    meta  group(8) 0x07 user_key            a key's lock by a prepared transaction (shardkv.fsm)
    meta  group(8) 0x08 client_id(8) seq(8) a transaction prepared here (shardkv.fsm)
    meta  group(8) 0x09 client_id(8) seq(8) a transaction's record, here its primary (shardkv.fsm)
    meta  group(8) 0x0a                     the migration the group takes part in (shardkv.fsm)
    meta  group(8) 0x0b target(8) user_key  a moving key changed since its move began (shardkv.fsm)
    meta  group(8) 0x0c revision(8) seq(4)  a change a write made: the event log (shardkv.fsm)
    meta  group(8) 0x0d                     the event log's floor and size (shardkv.fsm)
    data  group(8) user_key                 the user's value
    meta  ff*8 0x01 group(8)                a group whose replica this node dropped (shardkv.node)

The last group id, ``NODE_RECORDS`` (all 0xff), is no group: the node keeps
its own records under it, out of every group's range.

Within a group the data column family is ordered by user key, so a prefix or
range of user keys is a range of engine keys (``data_range``,
``data_prefix_range``) that a scan reaches with one seek. Later records of
the meta column family (ownership, locks, transaction records) take the next
free tags.
"""

from __future__ import annotations

import struct

from shardkv.storage.errors import CorruptValue

__all__ = [
    "GROUP_KEY_SIZE",
    "NODE_RECORDS",
    "all_results_range",
    "applied_state_key",
    "data_key",
    "data_prefix_range",
    "data_range",
    "decode_data_key",
    "decode_entry_key",
    "decode_event_key",
    "decode_result_key",
    "entry_key",
    "entry_range",
    "event_key",
    "event_log_key",
    "event_range",
    "group_prefix",
    "group_range",
    "hard_state_key",
    "key_count_key",
    "lock_key",
    "lock_range",
    "log_start_key",
    "mark_key",
    "mark_range",
    "migration_key",
    "prefix_end",
    "prepared_key",
    "prepared_range",
    "result_key",
    "result_range",
    "revision_key",
    "ring_key",
    "session_key",
    "session_range",
    "snapshot_metadata_key",
    "state_machine_meta_range",
    "txn_record_key",
    "txn_record_range",
]

_GROUP = struct.Struct(">Q")
# group id, record tag, then a number: an entry's index, a session's client id
_GROUP_TAG_NUMBER = struct.Struct(">QBQ")

GROUP_KEY_SIZE = _GROUP.size

# Record tags after the group id in the raft column family.
_RAFT_ENTRY = 0x01
_RAFT_HARD_STATE = 0x02
_RAFT_SNAPSHOT_METADATA = 0x03
_RAFT_LOG_START = 0x04
# Record tags after the group id in the meta column family.
_META_APPLIED_STATE = 0x01
_META_REVISION = 0x02
_META_SESSION = 0x03
_META_KEY_COUNT = 0x04
_META_RING = 0x05
_META_RESULT = 0x06
_META_LOCK = 0x07
_META_PREPARED = 0x08
_META_TXN_RECORD = 0x09
_META_MIGRATION = 0x0A
_META_MARK = 0x0B
_META_EVENT = 0x0C
_META_EVENT_LOG = 0x0D
# an event's revision and its place among the changes of that revision
_EVENT = struct.Struct(">QI")
# group id, record tag, client id, seq
_GROUP_TAG_CLIENT_SEQ = struct.Struct(">QBQQ")


# Not a group: the node's own records (see the module docstring).
NODE_RECORDS = (1 << 64) - 1
_NODE_DROPPED_GROUP = 0x01


def dropped_group_key(group_id: int) -> bytes:
    """Marks that this node dropped its replica of ``group_id`` (it moved away, or retired)."""
    return _GROUP_TAG_NUMBER.pack(NODE_RECORDS, _NODE_DROPPED_GROUP, group_id)


def group_prefix(group_id: int) -> bytes:
    """The 8 bytes every key of ``group_id`` starts with, in every column family."""
    return _GROUP.pack(group_id)


def group_range(group_id: int) -> tuple[bytes, bytes | None]:
    """``[start, end)`` of every key of ``group_id`` in any column family (end None: no bound)."""
    prefix = group_prefix(group_id)
    return prefix, prefix_end(prefix)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``.

    None when there is none (``prefix`` is empty or all 0xff): scan to the end.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


# -- raft column family ----------------------------------------------------


def entry_key(group_id: int, index: int) -> bytes:
    return _GROUP_TAG_NUMBER.pack(group_id, _RAFT_ENTRY, index)


def decode_entry_key(key: bytes) -> tuple[int, int]:
    """(group_id, index) of an entry key."""
    try:
        group_id, tag, index = _GROUP_TAG_NUMBER.unpack(key)
    except struct.error as exc:
        raise CorruptValue(f"not an entry key: {key!r}") from exc
    if tag != _RAFT_ENTRY:
        raise CorruptValue(f"not an entry key: {key!r}")
    return group_id, index


def entry_range(group_id: int, low: int = 0, high: int | None = None) -> tuple[bytes, bytes]:
    """``[start, end)`` of the entry keys of ``group_id`` with ``low <= index < high``."""
    if high is None:
        return entry_key(group_id, low), group_prefix(group_id) + bytes((_RAFT_ENTRY + 1,))
    return entry_key(group_id, low), entry_key(group_id, high)


def hard_state_key(group_id: int) -> bytes:
    return group_prefix(group_id) + bytes((_RAFT_HARD_STATE,))


def snapshot_metadata_key(group_id: int) -> bytes:
    return group_prefix(group_id) + bytes((_RAFT_SNAPSHOT_METADATA,))


def log_start_key(group_id: int) -> bytes:
    return group_prefix(group_id) + bytes((_RAFT_LOG_START,))


# -- meta column family ------------------------------------------------------


def applied_state_key(group_id: int) -> bytes:
    return group_prefix(group_id) + bytes((_META_APPLIED_STATE,))


def state_machine_meta_range(group_id: int) -> tuple[bytes, bytes | None]:
    """``[start, end)`` of the group's meta records that belong to its state machine.

    Every meta record but the applied state (which is Raft storage's): its tag
    is the lowest, so the state machine's records are the rest of the group.
    """
    return group_prefix(group_id) + bytes((_META_APPLIED_STATE + 1,)), group_range(group_id)[1]


def revision_key(group_id: int) -> bytes:
    return group_prefix(group_id) + bytes((_META_REVISION,))


def event_key(group_id: int, revision: int, seq: int) -> bytes:
    """The ``seq``-th change a write of ``revision`` made (the group's event log, for watches)."""
    return group_prefix(group_id) + bytes((_META_EVENT,)) + _EVENT.pack(revision, seq)


def event_range(group_id: int, from_revision: int = 0) -> tuple[bytes, bytes]:
    """``[start, end)`` of the group's events from ``from_revision`` on."""
    prefix = group_prefix(group_id)
    start = prefix + bytes((_META_EVENT,)) + _EVENT.pack(from_revision, 0)
    return start, prefix + bytes((_META_EVENT + 1,))


def decode_event_key(key: bytes) -> tuple[int, int]:
    """(revision, seq) of an ``event_key``."""
    revision, seq = _EVENT.unpack_from(key, GROUP_KEY_SIZE + 1)
    return int(revision), int(seq)


def event_log_key(group_id: int) -> bytes:
    """The event log's floor (events below it are gone) and size."""
    return group_prefix(group_id) + bytes((_META_EVENT_LOG,))


def key_count_key(group_id: int) -> bytes:
    return group_prefix(group_id) + bytes((_META_KEY_COUNT,))


def session_key(group_id: int, client_id: int) -> bytes:
    return _GROUP_TAG_NUMBER.pack(group_id, _META_SESSION, client_id)


def session_range(group_id: int) -> tuple[bytes, bytes]:
    """``[start, end)`` of the group's client sessions (their floors)."""
    prefix = group_prefix(group_id)
    return prefix + bytes((_META_SESSION,)), prefix + bytes((_META_SESSION + 1,))


def migration_key(group_id: int) -> bytes:
    return group_prefix(group_id) + bytes((_META_MIGRATION,))


def mark_key(group_id: int, target: int, user_key: bytes) -> bytes:
    return _GROUP_TAG_NUMBER.pack(group_id, _META_MARK, target) + user_key


def mark_range(group_id: int, target: int | None = None) -> tuple[bytes, bytes]:
    """``[start, end)`` of the group's change marks (of moves to ``target``, or all);
    the user key follows ``len(mark_key(group, target, b""))`` bytes."""
    prefix = group_prefix(group_id)
    if target is None:
        return prefix + bytes((_META_MARK,)), prefix + bytes((_META_MARK + 1,))
    start = _GROUP_TAG_NUMBER.pack(group_id, _META_MARK, target)
    return start, _GROUP_TAG_NUMBER.pack(group_id, _META_MARK, target + 1)


def ring_key(group_id: int) -> bytes:
    return group_prefix(group_id) + bytes((_META_RING,))


def result_key(group_id: int, client_id: int, seq: int) -> bytes:
    return _GROUP_TAG_CLIENT_SEQ.pack(group_id, _META_RESULT, client_id, seq)


def result_range(group_id: int, client_id: int, low: int, high: int) -> tuple[bytes, bytes]:
    """``[start, end)`` of a client's results for seqs in ``[low, high)``."""
    return result_key(group_id, client_id, low), result_key(group_id, client_id, high)


def all_results_range(group_id: int) -> tuple[bytes, bytes]:
    """``[start, end)`` of every client's recorded results in the group."""
    prefix = group_prefix(group_id)
    return prefix + bytes((_META_RESULT,)), prefix + bytes((_META_RESULT + 1,))


def decode_result_key(key: bytes) -> tuple[int, int]:
    """(client_id, seq) of a result key."""
    try:
        _, tag, client_id, seq = _GROUP_TAG_CLIENT_SEQ.unpack(key)
    except struct.error as exc:
        raise CorruptValue(f"not a result key: {key!r}") from exc
    if tag != _META_RESULT:
        raise CorruptValue(f"not a result key: {key!r}")
    return client_id, seq


def lock_key(group_id: int, user_key: bytes) -> bytes:
    return group_prefix(group_id) + bytes((_META_LOCK,)) + user_key


def lock_range(group_id: int) -> tuple[bytes, bytes]:
    """``[start, end)`` of the group's locks; the user key follows ``len(start)`` bytes."""
    start = group_prefix(group_id) + bytes((_META_LOCK,))
    return start, group_prefix(group_id) + bytes((_META_LOCK + 1,))


def prepared_key(group_id: int, client_id: int, seq: int) -> bytes:
    return _GROUP_TAG_CLIENT_SEQ.pack(group_id, _META_PREPARED, client_id, seq)


def prepared_range(group_id: int) -> tuple[bytes, bytes]:
    prefix = group_prefix(group_id)
    return prefix + bytes((_META_PREPARED,)), prefix + bytes((_META_PREPARED + 1,))


def txn_record_key(group_id: int, client_id: int, seq: int) -> bytes:
    return _GROUP_TAG_CLIENT_SEQ.pack(group_id, _META_TXN_RECORD, client_id, seq)


def txn_record_range(group_id: int) -> tuple[bytes, bytes]:
    """``[start, end)`` of the group's transaction records."""
    prefix = group_prefix(group_id)
    return prefix + bytes((_META_TXN_RECORD,)), prefix + bytes((_META_TXN_RECORD + 1,))


# -- data column family ------------------------------------------------------


def data_key(group_id: int, user_key: bytes) -> bytes:
    return group_prefix(group_id) + user_key


def decode_data_key(key: bytes) -> tuple[int, bytes]:
    """(group_id, user_key) of a data key."""
    if len(key) < GROUP_KEY_SIZE:
        raise CorruptValue(f"not a data key: {key!r}")
    (group_id,) = _GROUP.unpack_from(key)
    return group_id, key[GROUP_KEY_SIZE:]


def data_range(
    group_id: int, start: bytes = b"", end: bytes | None = None
) -> tuple[bytes, bytes | None]:
    """``[start, end)`` in engine keys for user keys ``start <= key < end`` of a group.

    ``end`` None means to the group's last key.
    """
    if end is None:
        return data_key(group_id, start), group_range(group_id)[1]
    return data_key(group_id, start), data_key(group_id, end)


def data_prefix_range(group_id: int, user_prefix: bytes) -> tuple[bytes, bytes | None]:
    """``[start, end)`` in engine keys for the user keys of a group that start with a prefix."""
    start = data_key(group_id, user_prefix)
    return start, prefix_end(start)
