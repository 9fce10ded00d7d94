from shardkv.v1 import cluster_pb2 as _cluster_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Put(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class Delete(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class CompareAndSet(_message.Message):
    __slots__ = ("key", "expected", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expected: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., expected: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("put", "delete", "compare_and_set")
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SET_FIELD_NUMBER: _ClassVar[int]
    put: Put
    delete: Delete
    compare_and_set: CompareAndSet
    def __init__(self, put: _Optional[_Union[Put, _Mapping]] = ..., delete: _Optional[_Union[Delete, _Mapping]] = ..., compare_and_set: _Optional[_Union[CompareAndSet, _Mapping]] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("client_id", "seq", "operations", "acked_seq", "ring", "batch", "epoch", "puts")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PUTS_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    acked_seq: int
    ring: _cluster_pb2.Ring
    batch: _containers.RepeatedCompositeFieldContainer[Command]
    epoch: int
    puts: _containers.RepeatedCompositeFieldContainer[KeyValue]
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., acked_seq: _Optional[int] = ..., ring: _Optional[_Union[_cluster_pb2.Ring, _Mapping]] = ..., batch: _Optional[_Iterable[_Union[Command, _Mapping]]] = ..., epoch: _Optional[int] = ..., puts: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value", "version", "create_revision", "mod_revision")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    version: int
    create_revision: int
    mod_revision: int
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ...) -> None: ...

class OperationResult(_message.Message):
    __slots__ = ("succeeded", "previous")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    previous: KeyValue
    def __init__(self, succeeded: _Optional[bool] = ..., previous: _Optional[_Union[KeyValue, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("results", "revision", "wrong_group", "stale", "puts_written")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    WRONG_GROUP_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    PUTS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[OperationResult]
    revision: int
    wrong_group: WrongGroup
    stale: bool
    puts_written: int
    def __init__(self, results: _Optional[_Iterable[_Union[OperationResult, _Mapping]]] = ..., revision: _Optional[int] = ..., wrong_group: _Optional[_Union[WrongGroup, _Mapping]] = ..., stale: _Optional[bool] = ..., puts_written: _Optional[int] = ...) -> None: ...

class WrongGroup(_message.Message):
    __slots__ = ("group_id", "epoch", "key")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    epoch: int
    key: bytes
    def __init__(self, group_id: _Optional[int] = ..., epoch: _Optional[int] = ..., key: _Optional[bytes] = ...) -> None: ...
