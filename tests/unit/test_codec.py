"""The codec turns every Raft value into its protobuf twin and back unchanged.

Round trips go through serialized bytes, so they also check what a peer would
actually receive, not only the in-memory protobuf object.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardkv.node import codec
from shardkv.raft import types as raft_types
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

UINT64_MAX = 2**64 - 1


def through_wire(proto: Any) -> Any:
    """The same message as a peer decodes it from the bytes sent."""
    return type(proto).FromString(proto.SerializeToString())


# Strategies

uint64 = st.integers(min_value=0, max_value=UINT64_MAX)
small_bytes = st.binary(max_size=64)
node_ids = st.integers(min_value=0, max_value=UINT64_MAX)

entries = st.builds(Entry, uint64, uint64, st.sampled_from(EntryType), small_bytes)
conf_states = st.builds(
    ConfState,
    st.lists(node_ids, max_size=7).map(tuple),
    st.lists(node_ids, max_size=7).map(tuple),
)
snapshot_metadata = st.builds(SnapshotMetadata, uint64, uint64, conf_states)
snapshots = st.builds(Snapshot, snapshot_metadata, small_bytes)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=node_ids,
    from_=node_ids,
    term=uint64,
    log_term=uint64,
    index=uint64,
    entries=st.lists(entries, max_size=5),
    commit=uint64,
    reject=st.booleans(),
    reject_hint=uint64,
    snapshot=st.none() | snapshots,
    snapshot_offset=uint64,
    snapshot_done=st.booleans(),
    context=small_bytes,
    stamp=uint64,
)


# Round trips of each type


@pytest.mark.parametrize(
    "entry",
    [
        Entry(0, 0),
        Entry(1, 1, EntryType.NORMAL, b"put k v"),
        Entry(7, 42, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_LEARNER, 4).encode()),
        Entry(UINT64_MAX, UINT64_MAX, EntryType.NORMAL, bytes(range(256))),
    ],
)
def test_entry_round_trip(entry: Entry) -> None:
    decoded = codec.entry_from_proto(through_wire(codec.entry_to_proto(entry)))
    assert decoded == entry
    assert type(decoded.type) is EntryType


@pytest.mark.parametrize(
    "hard_state", [HardState(), HardState(term=3, vote=2, commit=17), HardState(UINT64_MAX, 1, 0)]
)
def test_hard_state_round_trip(hard_state: HardState) -> None:
    assert codec.hard_state_from_proto(through_wire(codec.hard_state_to_proto(hard_state))) == (
        hard_state
    )


@pytest.mark.parametrize("role", list(Role))
def test_soft_state_round_trip(role: Role) -> None:
    soft_state = SoftState(leader_id=3, role=role)
    decoded = codec.soft_state_from_proto(through_wire(codec.soft_state_to_proto(soft_state)))
    assert decoded == soft_state
    assert type(decoded.role) is Role


@pytest.mark.parametrize(
    "conf_state",
    [ConfState(), ConfState(voters=(1, 2, 3)), ConfState(voters=(3, 1), learners=(5, 4))],
)
def test_conf_state_round_trip(conf_state: ConfState) -> None:
    decoded = codec.conf_state_from_proto(through_wire(codec.conf_state_to_proto(conf_state)))
    assert decoded == conf_state
    assert type(decoded.voters) is tuple
    assert type(decoded.learners) is tuple


def test_snapshot_metadata_round_trip() -> None:
    metadata = SnapshotMetadata(index=10, term=2, conf_state=ConfState((1, 2, 3), (4,)))
    proto = codec.snapshot_metadata_to_proto(metadata)
    assert codec.snapshot_metadata_from_proto(through_wire(proto)) == metadata


@pytest.mark.parametrize(
    "snapshot",
    [
        Snapshot(),
        Snapshot(SnapshotMetadata(10, 2, ConfState((1, 2, 3), (4,))), b"\x00image\xff"),
    ],
)
def test_snapshot_round_trip(snapshot: Snapshot) -> None:
    assert codec.snapshot_from_proto(through_wire(codec.snapshot_to_proto(snapshot))) == snapshot


def test_read_state_round_trip() -> None:
    read_state = ReadState(index=99, context=b"request-7")
    proto = codec.read_state_to_proto(read_state)
    assert codec.read_state_from_proto(through_wire(proto)) == read_state


@pytest.mark.parametrize("change_type", list(ConfChangeType))
def test_conf_change_round_trip(change_type: ConfChangeType) -> None:
    conf_change = ConfChange(change_type, node_id=12, context=b"addr=127.0.0.1:7001")
    decoded = codec.conf_change_from_proto(through_wire(codec.conf_change_to_proto(conf_change)))
    assert decoded == conf_change
    assert type(decoded.type) is ConfChangeType


# Message


def test_message_sender_travels_as_from_node() -> None:
    proto = codec.message_to_proto(Message(MessageType.VOTE, to=2, from_=1, term=4))
    assert proto.from_node == 1
    assert proto.to == 2
    assert codec.message_from_proto(through_wire(proto)).from_ == 1


def test_message_without_snapshot_has_none() -> None:
    proto = codec.message_to_proto(Message(MessageType.HEARTBEAT, to=2, from_=1, stamp=5))
    assert not proto.HasField("snapshot")
    assert codec.message_from_proto(through_wire(proto)).snapshot is None


def test_message_with_empty_snapshot_keeps_it() -> None:
    """An all-default snapshot is still a snapshot: presence, not content, decides."""
    message = Message(MessageType.SNAPSHOT, to=2, from_=1, snapshot=Snapshot())
    proto = codec.message_to_proto(message)
    assert proto.HasField("snapshot")
    assert codec.message_from_proto(through_wire(proto)).snapshot == Snapshot()


def test_snapshot_chunk_message_round_trip() -> None:
    message = Message(
        MessageType.SNAPSHOT,
        to=3,
        from_=1,
        term=5,
        snapshot=Snapshot(SnapshotMetadata(100, 4, ConfState((1, 2, 3))), b"chunk"),
        snapshot_offset=4096,
        snapshot_done=True,
    )
    assert codec.message_from_proto(through_wire(codec.message_to_proto(message))) == message


def test_append_message_round_trip_keeps_entry_order_and_types() -> None:
    message = Message(
        MessageType.APPEND,
        to=2,
        from_=1,
        term=3,
        log_term=3,
        index=10,
        entries=[
            Entry(3, 11, EntryType.NORMAL, b"a"),
            Entry(3, 12, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, 4).encode()),
            Entry(3, 13),
        ],
        commit=10,
    )
    decoded = codec.message_from_proto(through_wire(codec.message_to_proto(message)))
    assert decoded == message
    assert type(decoded.type) is MessageType
    assert type(decoded.entries) is list
    assert [type(entry.type) for entry in decoded.entries] == [EntryType] * 3


@given(messages)
def test_message_round_trip_property(message: Message) -> None:
    decoded = codec.message_from_proto(through_wire(codec.message_to_proto(message)))
    assert decoded == message


def test_unknown_message_type_is_a_clear_error() -> None:
    proto = raft_pb2.Message()
    # An open proto3 enum keeps numbers it does not know, as a newer peer might send.
    proto.type = 99  # type: ignore[assignment]
    with pytest.raises(ValueError, match="unknown message type number 99"):
        codec.message_from_proto(through_wire(proto))


# Enum numbers


ENUM_TWINS: list[tuple[type[enum.IntEnum], str, str]] = [
    (Role, "Role", "ROLE_"),
    (EntryType, "EntryType", "ENTRY_TYPE_"),
    (MessageType, "MessageType", "MESSAGE_TYPE_"),
    (ConfChangeType, "ConfChangeType", "CONF_CHANGE_TYPE_"),
]


@pytest.mark.parametrize(("python_enum", "proto_name", "prefix"), ENUM_TWINS)
def test_proto_enum_numbers_equal_python_enum(
    python_enum: type[enum.IntEnum], proto_name: str, prefix: str
) -> None:
    descriptor = raft_pb2.DESCRIPTOR.enum_types_by_name[proto_name]
    proto_numbers = {value.name: value.number for value in descriptor.values}
    python_numbers = {prefix + member.name: member.value for member in python_enum}
    assert proto_numbers == python_numbers


def test_every_python_enum_has_a_twin() -> None:
    """A new enum in types.py needs a twin in raft.proto and a row in ENUM_TWINS."""
    python_enums = {
        value
        for value in vars(raft_types).values()
        if isinstance(value, type)
        and issubclass(value, enum.IntEnum)
        and value.__module__ == raft_types.__name__
    }
    assert {python_enum for python_enum, _, _ in ENUM_TWINS} == python_enums
    assert {proto_name for _, proto_name, _ in ENUM_TWINS} == set(
        raft_pb2.DESCRIPTOR.enum_types_by_name
    )


# Field names: a field added on one side only must fail here, not on the wire.

WIRE_NAMES = {"from_": "from_node"}


@pytest.mark.parametrize(
    "value_type",
    [
        value
        for value in vars(raft_types).values()
        if dataclasses.is_dataclass(value)
        and isinstance(value, type)
        and value.__module__ == raft_types.__name__
    ],
    ids=lambda value_type: value_type.__name__,
)
def test_every_raft_value_type_has_a_proto_twin_with_the_same_fields(value_type: type) -> None:
    descriptor = raft_pb2.DESCRIPTOR.message_types_by_name.get(value_type.__name__)
    assert descriptor is not None, f"raft.proto has no message {value_type.__name__}"
    python_fields = [
        WIRE_NAMES.get(field.name, field.name) for field in dataclasses.fields(value_type)
    ]
    assert sorted(python_fields) == sorted(field.name for field in descriptor.fields)
