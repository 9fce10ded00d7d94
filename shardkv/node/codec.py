"""Conversion between the Raft core's values and their protobuf twins.

``shardkv.raft.types`` stays free of generated code; this module is the one
place where a Raft value becomes a ``shardkv.v1.raft_pb2`` message and back.
Every function is pure. They run for every Raft message a node sends or
receives, so they assign fields one by one (cheaper than keyword construction
with upb) and fill nested messages in place instead of building and copying
them.

Field names are the same on both sides except ``Message.from_``, which is
``from_node`` on the wire (``from`` is a Python keyword). Enums are mapped by
member name (``MessageType.APPEND`` <-> ``MESSAGE_TYPE_APPEND``); the numbers
are equal too, and a unit test holds them so. Decoding a number that this
version does not know raises ``ValueError``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar, cast

from shardkv.raft.types import (
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
from shardkv.v1 import raft_pb2

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

__all__ = [
    "conf_change_from_proto",
    "conf_change_to_proto",
    "conf_state_from_proto",
    "conf_state_to_proto",
    "entry_from_proto",
    "entry_to_proto",
    "fill_message",
    "hard_state_from_proto",
    "hard_state_to_proto",
    "message_from_proto",
    "message_to_proto",
    "read_state_from_proto",
    "read_state_to_proto",
    "snapshot_from_proto",
    "snapshot_metadata_from_proto",
    "snapshot_metadata_to_proto",
    "snapshot_to_proto",
    "soft_state_from_proto",
    "soft_state_to_proto",
]

_Member = TypeVar("_Member", bound=enum.IntEnum)


def _enum_numbers(
    python_enum: type[_Member], proto_enum: EnumTypeWrapper, prefix: str
) -> dict[_Member, int]:
    """Map each member to the proto value of the same name; fails at import if one is missing."""
    return {member: proto_enum.Value(prefix + member.name) for member in python_enum}


def _inverse(numbers: Mapping[_Member, int]) -> dict[int, _Member]:
    return {number: member for member, number in numbers.items()}


def _decode_enum(members: dict[int, _Member], number: int, what: str) -> _Member:
    try:
        return members[number]
    except KeyError:
        raise ValueError(
            f"unknown {what} number {number}: the sender runs a newer protocol than this node"
        ) from None


# The casts only restate for the type checker that a proto enum value is an int.
_ENTRY_TYPE_TO_PROTO = cast(
    "dict[EntryType, raft_pb2.EntryType]",
    _enum_numbers(EntryType, raft_pb2.EntryType, "ENTRY_TYPE_"),
)
_MESSAGE_TYPE_TO_PROTO = cast(
    "dict[MessageType, raft_pb2.MessageType]",
    _enum_numbers(MessageType, raft_pb2.MessageType, "MESSAGE_TYPE_"),
)
_CONF_CHANGE_TYPE_TO_PROTO = cast(
    "dict[ConfChangeType, raft_pb2.ConfChangeType]",
    _enum_numbers(ConfChangeType, raft_pb2.ConfChangeType, "CONF_CHANGE_TYPE_"),
)
_ROLE_TO_PROTO = cast("dict[Role, raft_pb2.Role]", _enum_numbers(Role, raft_pb2.Role, "ROLE_"))

_ENTRY_TYPE_FROM_PROTO = _inverse(_ENTRY_TYPE_TO_PROTO)
_MESSAGE_TYPE_FROM_PROTO = _inverse(_MESSAGE_TYPE_TO_PROTO)
_CONF_CHANGE_TYPE_FROM_PROTO = _inverse(_CONF_CHANGE_TYPE_TO_PROTO)
_ROLE_FROM_PROTO = _inverse(_ROLE_TO_PROTO)


# Entry


def _fill_entry(proto: raft_pb2.Entry, entry: Entry) -> None:
    proto.term = entry.term
    proto.index = entry.index
    proto.type = _ENTRY_TYPE_TO_PROTO[entry.type]
    proto.data = entry.data


def entry_to_proto(entry: Entry) -> raft_pb2.Entry:
    proto = raft_pb2.Entry()
    _fill_entry(proto, entry)
    return proto


def entry_from_proto(proto: raft_pb2.Entry) -> Entry:
    return Entry(
        proto.term,
        proto.index,
        _decode_enum(_ENTRY_TYPE_FROM_PROTO, proto.type, "entry type"),
        proto.data,
    )


# HardState


def hard_state_to_proto(hard_state: HardState) -> raft_pb2.HardState:
    proto = raft_pb2.HardState()
    proto.term = hard_state.term
    proto.vote = hard_state.vote
    proto.commit = hard_state.commit
    return proto


def hard_state_from_proto(proto: raft_pb2.HardState) -> HardState:
    return HardState(proto.term, proto.vote, proto.commit)


# SoftState


def soft_state_to_proto(soft_state: SoftState) -> raft_pb2.SoftState:
    proto = raft_pb2.SoftState()
    proto.leader_id = soft_state.leader_id
    proto.role = _ROLE_TO_PROTO[soft_state.role]
    return proto


def soft_state_from_proto(proto: raft_pb2.SoftState) -> SoftState:
    return SoftState(proto.leader_id, _decode_enum(_ROLE_FROM_PROTO, proto.role, "role"))


# ConfState


def _fill_conf_state(proto: raft_pb2.ConfState, conf_state: ConfState) -> None:
    proto.voters.extend(conf_state.voters)
    proto.learners.extend(conf_state.learners)


def conf_state_to_proto(conf_state: ConfState) -> raft_pb2.ConfState:
    proto = raft_pb2.ConfState()
    _fill_conf_state(proto, conf_state)
    return proto


def conf_state_from_proto(proto: raft_pb2.ConfState) -> ConfState:
    return ConfState(tuple(proto.voters), tuple(proto.learners))


# SnapshotMetadata


def _fill_snapshot_metadata(proto: raft_pb2.SnapshotMetadata, metadata: SnapshotMetadata) -> None:
    proto.index = metadata.index
    proto.term = metadata.term
    _fill_conf_state(proto.conf_state, metadata.conf_state)


def snapshot_metadata_to_proto(metadata: SnapshotMetadata) -> raft_pb2.SnapshotMetadata:
    proto = raft_pb2.SnapshotMetadata()
    _fill_snapshot_metadata(proto, metadata)
    return proto


def snapshot_metadata_from_proto(proto: raft_pb2.SnapshotMetadata) -> SnapshotMetadata:
    return SnapshotMetadata(proto.index, proto.term, conf_state_from_proto(proto.conf_state))


# Snapshot


def _fill_snapshot(proto: raft_pb2.Snapshot, snapshot: Snapshot) -> None:
    # Mark presence explicitly: inside a Message, an all-default snapshot must
    # still read back as a snapshot, not as "no snapshot".
    proto.SetInParent()
    _fill_snapshot_metadata(proto.metadata, snapshot.metadata)
    proto.data = snapshot.data


def snapshot_to_proto(snapshot: Snapshot) -> raft_pb2.Snapshot:
    proto = raft_pb2.Snapshot()
    _fill_snapshot(proto, snapshot)
    return proto


def snapshot_from_proto(proto: raft_pb2.Snapshot) -> Snapshot:
    return Snapshot(snapshot_metadata_from_proto(proto.metadata), proto.data)


# ReadState


def read_state_to_proto(read_state: ReadState) -> raft_pb2.ReadState:
    proto = raft_pb2.ReadState()
    proto.index = read_state.index
    proto.context = read_state.context
    return proto


def read_state_from_proto(proto: raft_pb2.ReadState) -> ReadState:
    return ReadState(proto.index, proto.context)


# ConfChange


def conf_change_to_proto(conf_change: ConfChange) -> raft_pb2.ConfChange:
    proto = raft_pb2.ConfChange()
    proto.type = _CONF_CHANGE_TYPE_TO_PROTO[conf_change.type]
    proto.node_id = conf_change.node_id
    proto.context = conf_change.context
    return proto


def conf_change_from_proto(proto: raft_pb2.ConfChange) -> ConfChange:
    return ConfChange(
        _decode_enum(_CONF_CHANGE_TYPE_FROM_PROTO, proto.type, "conf change type"),
        proto.node_id,
        proto.context,
    )


# Message


def message_to_proto(message: Message) -> raft_pb2.Message:
    proto = raft_pb2.Message()
    fill_message(proto, message)
    return proto


def fill_message(proto: raft_pb2.Message, message: Message) -> None:
    """Write ``message`` into an empty ``proto`` in place (say, one inside a batch)."""
    proto.type = _MESSAGE_TYPE_TO_PROTO[message.type]
    proto.to = message.to
    proto.from_node = message.from_
    proto.term = message.term
    proto.log_term = message.log_term
    proto.index = message.index
    if message.entries:
        add_entry = proto.entries.add
        for entry in message.entries:
            _fill_entry(add_entry(), entry)
    proto.commit = message.commit
    proto.reject = message.reject
    proto.reject_hint = message.reject_hint
    if message.snapshot is not None:
        _fill_snapshot(proto.snapshot, message.snapshot)
    proto.snapshot_offset = message.snapshot_offset
    proto.snapshot_done = message.snapshot_done
    proto.context = message.context
    proto.stamp = message.stamp


def message_from_proto(proto: raft_pb2.Message) -> Message:
    return Message(
        type=_decode_enum(_MESSAGE_TYPE_FROM_PROTO, proto.type, "message type"),
        to=proto.to,
        from_=proto.from_node,
        term=proto.term,
        log_term=proto.log_term,
        index=proto.index,
        entries=list(map(entry_from_proto, proto.entries)),
        commit=proto.commit,
        reject=proto.reject,
        reject_hint=proto.reject_hint,
        snapshot=snapshot_from_proto(proto.snapshot) if proto.HasField("snapshot") else None,
        snapshot_offset=proto.snapshot_offset,
        snapshot_done=proto.snapshot_done,
        context=proto.context,
        stamp=proto.stamp,
    )
