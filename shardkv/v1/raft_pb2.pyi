from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_FOLLOWER: _ClassVar[Role]
    ROLE_PRE_CANDIDATE: _ClassVar[Role]
    ROLE_CANDIDATE: _ClassVar[Role]
    ROLE_LEADER: _ClassVar[Role]

class EntryType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_TYPE_NORMAL: _ClassVar[EntryType]
    ENTRY_TYPE_CONF_CHANGE: _ClassVar[EntryType]

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_TYPE_NONE: _ClassVar[MessageType]
    MESSAGE_TYPE_APPEND: _ClassVar[MessageType]
    MESSAGE_TYPE_APPEND_RESPONSE: _ClassVar[MessageType]
    MESSAGE_TYPE_VOTE: _ClassVar[MessageType]
    MESSAGE_TYPE_VOTE_RESPONSE: _ClassVar[MessageType]
    MESSAGE_TYPE_PRE_VOTE: _ClassVar[MessageType]
    MESSAGE_TYPE_PRE_VOTE_RESPONSE: _ClassVar[MessageType]
    MESSAGE_TYPE_SNAPSHOT: _ClassVar[MessageType]
    MESSAGE_TYPE_SNAPSHOT_RESPONSE: _ClassVar[MessageType]
    MESSAGE_TYPE_HEARTBEAT: _ClassVar[MessageType]
    MESSAGE_TYPE_HEARTBEAT_RESPONSE: _ClassVar[MessageType]
    MESSAGE_TYPE_TIMEOUT_NOW: _ClassVar[MessageType]

class ConfChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONF_CHANGE_TYPE_ADD_VOTER: _ClassVar[ConfChangeType]
    CONF_CHANGE_TYPE_REMOVE_NODE: _ClassVar[ConfChangeType]
    CONF_CHANGE_TYPE_ADD_LEARNER: _ClassVar[ConfChangeType]
ROLE_FOLLOWER: Role
ROLE_PRE_CANDIDATE: Role
ROLE_CANDIDATE: Role
ROLE_LEADER: Role
ENTRY_TYPE_NORMAL: EntryType
ENTRY_TYPE_CONF_CHANGE: EntryType
MESSAGE_TYPE_NONE: MessageType
MESSAGE_TYPE_APPEND: MessageType
MESSAGE_TYPE_APPEND_RESPONSE: MessageType
MESSAGE_TYPE_VOTE: MessageType
MESSAGE_TYPE_VOTE_RESPONSE: MessageType
MESSAGE_TYPE_PRE_VOTE: MessageType
MESSAGE_TYPE_PRE_VOTE_RESPONSE: MessageType
MESSAGE_TYPE_SNAPSHOT: MessageType
MESSAGE_TYPE_SNAPSHOT_RESPONSE: MessageType
MESSAGE_TYPE_HEARTBEAT: MessageType
MESSAGE_TYPE_HEARTBEAT_RESPONSE: MessageType
MESSAGE_TYPE_TIMEOUT_NOW: MessageType
CONF_CHANGE_TYPE_ADD_VOTER: ConfChangeType
CONF_CHANGE_TYPE_REMOVE_NODE: ConfChangeType
CONF_CHANGE_TYPE_ADD_LEARNER: ConfChangeType

class Entry(_message.Message):
    __slots__ = ("term", "index", "type", "data")
    TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    term: int
    index: int
    type: EntryType
    data: bytes
    def __init__(self, term: _Optional[int] = ..., index: _Optional[int] = ..., type: _Optional[_Union[EntryType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class HardState(_message.Message):
    __slots__ = ("term", "vote", "commit")
    TERM_FIELD_NUMBER: _ClassVar[int]
    VOTE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    term: int
    vote: int
    commit: int
    def __init__(self, term: _Optional[int] = ..., vote: _Optional[int] = ..., commit: _Optional[int] = ...) -> None: ...

class SoftState(_message.Message):
    __slots__ = ("leader_id", "role")
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    leader_id: int
    role: Role
    def __init__(self, leader_id: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ...) -> None: ...

class ConfState(_message.Message):
    __slots__ = ("voters", "learners")
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ...) -> None: ...

class SnapshotMetadata(_message.Message):
    __slots__ = ("index", "term", "conf_state")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CONF_STATE_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    conf_state: ConfState
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., conf_state: _Optional[_Union[ConfState, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("metadata", "data")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    metadata: SnapshotMetadata
    data: bytes
    def __init__(self, metadata: _Optional[_Union[SnapshotMetadata, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReadState(_message.Message):
    __slots__ = ("index", "context")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    context: bytes
    def __init__(self, index: _Optional[int] = ..., context: _Optional[bytes] = ...) -> None: ...

class ConfChange(_message.Message):
    __slots__ = ("type", "node_id", "context")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    type: ConfChangeType
    node_id: int
    context: bytes
    def __init__(self, type: _Optional[_Union[ConfChangeType, str]] = ..., node_id: _Optional[int] = ..., context: _Optional[bytes] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("type", "to", "from_node", "term", "log_term", "index", "entries", "commit", "reject", "reject_hint", "snapshot", "snapshot_offset", "snapshot_done", "context", "stamp")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DONE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    STAMP_FIELD_NUMBER: _ClassVar[int]
    type: MessageType
    to: int
    from_node: int
    term: int
    log_term: int
    index: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    commit: int
    reject: bool
    reject_hint: int
    snapshot: Snapshot
    snapshot_offset: int
    snapshot_done: bool
    context: bytes
    stamp: int
    def __init__(self, type: _Optional[_Union[MessageType, str]] = ..., to: _Optional[int] = ..., from_node: _Optional[int] = ..., term: _Optional[int] = ..., log_term: _Optional[int] = ..., index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., snapshot_offset: _Optional[int] = ..., snapshot_done: _Optional[bool] = ..., context: _Optional[bytes] = ..., stamp: _Optional[int] = ...) -> None: ...

class GroupMessage(_message.Message):
    __slots__ = ("group_id", "message")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    message: Message
    def __init__(self, group_id: _Optional[int] = ..., message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[GroupMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[GroupMessage, _Mapping]]] = ...) -> None: ...

class RaftBatchAck(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...
