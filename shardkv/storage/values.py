"""The value encodings of the node's RocksDB: Raft records, byte for byte.

Every value starts with a format version byte (``FORMAT_VERSION``, now 1), so
a later version can change a layout and still read the old one, and an older
version refuses a newer layout (``CorruptValue``) instead of misreading it.
Integers are big-endian and unsigned, so encodings are deterministic: equal
values give equal bytes. The layouts after the version byte::

    entry            type u8, term u64, data (the rest)      index is in the key
    hard state       term u64, vote u64, commit u64
    conf state       n u16, m u16, n voter ids u64, m learner ids u64 (order kept)
    snapshot meta    index u64, term u64, conf state
    log start        index u64, term u64
    applied state    applied index u64, conf state

The conf state is embedded without a version byte of its own.

Why not the wire's protobuf (``shardkv.node.codec``)? The disk format lives
longer than a release and is versioned apart from the wire; protobuf does not
promise equal bytes for equal values; an entry here carries a 10-byte header
with its index in the key; and storage may not import the node layer.
"""

from __future__ import annotations

import struct

from shardkv.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMetadata
from shardkv.storage.errors import CorruptValue

__all__ = [
    "FORMAT_VERSION",
    "decode_applied_state",
    "decode_entry",
    "decode_hard_state",
    "decode_log_start",
    "decode_snapshot_metadata",
    "encode_applied_state",
    "encode_entry",
    "encode_hard_state",
    "encode_log_start",
    "encode_snapshot_metadata",
]

FORMAT_VERSION = 1

_ENTRY_HEADER = struct.Struct(">BBQ")
_HARD_STATE = struct.Struct(">BQQQ")
_INDEX_TERM = struct.Struct(">BQQ")
_INDEX = struct.Struct(">BQ")
_CONF_COUNTS = struct.Struct(">HH")
_MAX_MEMBERS = (1 << 16) - 1


def encode_entry(entry: Entry) -> bytes:
    return _ENTRY_HEADER.pack(FORMAT_VERSION, entry.type, entry.term) + entry.data


def decode_entry(index: int, value: bytes) -> Entry:
    """The entry stored at ``index`` (which its key holds)."""
    _, entry_type, term = _unpack_from(_ENTRY_HEADER, value, "entry")
    try:
        kind = EntryType(entry_type)
    except ValueError as exc:
        raise CorruptValue(f"entry {index} has an unknown type {entry_type}") from exc
    return Entry(term=term, index=index, type=kind, data=value[_ENTRY_HEADER.size :])


def encode_hard_state(hard_state: HardState) -> bytes:
    return _HARD_STATE.pack(FORMAT_VERSION, hard_state.term, hard_state.vote, hard_state.commit)


def decode_hard_state(value: bytes) -> HardState:
    _, term, vote, commit = _unpack_from(_HARD_STATE, value, "hard state", exact=True)
    return HardState(term=term, vote=vote, commit=commit)


def encode_snapshot_metadata(metadata: SnapshotMetadata) -> bytes:
    header = _INDEX_TERM.pack(FORMAT_VERSION, metadata.index, metadata.term)
    return header + _encode_conf_state(metadata.conf_state)


def decode_snapshot_metadata(value: bytes) -> SnapshotMetadata:
    _, index, term = _unpack_from(_INDEX_TERM, value, "snapshot metadata")
    conf_state = _decode_conf_state(value, _INDEX_TERM.size, "snapshot metadata")
    return SnapshotMetadata(index=index, term=term, conf_state=conf_state)


def encode_log_start(index: int, term: int) -> bytes:
    return _INDEX_TERM.pack(FORMAT_VERSION, index, term)


def decode_log_start(value: bytes) -> tuple[int, int]:
    """(index, term) of the entry just before the first one the log holds."""
    _, index, term = _unpack_from(_INDEX_TERM, value, "log start", exact=True)
    return index, term


def encode_applied_state(applied_index: int, conf_state: ConfState) -> bytes:
    return _INDEX.pack(FORMAT_VERSION, applied_index) + _encode_conf_state(conf_state)


def decode_applied_state(value: bytes) -> tuple[int, ConfState]:
    _, applied_index = _unpack_from(_INDEX, value, "applied state")
    return applied_index, _decode_conf_state(value, _INDEX.size, "applied state")


def _encode_conf_state(conf_state: ConfState) -> bytes:
    voters, learners = conf_state.voters, conf_state.learners
    if len(voters) > _MAX_MEMBERS or len(learners) > _MAX_MEMBERS:
        raise ValueError(f"a configuration has at most {_MAX_MEMBERS} voters and learners")
    members = (*voters, *learners)
    return _CONF_COUNTS.pack(len(voters), len(learners)) + struct.pack(
        f">{len(members)}Q", *members
    )


def _decode_conf_state(value: bytes, offset: int, what: str) -> ConfState:
    try:
        voter_count, learner_count = _CONF_COUNTS.unpack_from(value, offset)
        offset += _CONF_COUNTS.size
        members_format = f">{voter_count + learner_count}Q"
        if len(value) != offset + struct.calcsize(members_format):
            raise CorruptValue(f"{what} has {len(value)} bytes, not what its counts say")
        members = struct.unpack_from(members_format, value, offset)
    except struct.error as exc:
        raise CorruptValue(f"{what} is truncated: {value!r}") from exc
    return ConfState(voters=members[:voter_count], learners=members[voter_count:])


def _unpack_from(
    layout: struct.Struct, value: bytes, what: str, *, exact: bool = False
) -> tuple[int, ...]:
    """The fixed header of ``value`` (all of it if ``exact``), its version byte checked."""
    if not value:
        raise CorruptValue(f"{what} is empty")
    if value[0] != FORMAT_VERSION:
        raise CorruptValue(
            f"{what} has format version {value[0]}; this version reads {FORMAT_VERSION}"
        )
    if exact and len(value) != layout.size:
        raise CorruptValue(f"{what} has {len(value)} bytes, not {layout.size}")
    try:
        fields: tuple[int, ...] = layout.unpack_from(value)
    except struct.error as exc:
        raise CorruptValue(f"{what} is truncated: {value!r}") from exc
    return fields
