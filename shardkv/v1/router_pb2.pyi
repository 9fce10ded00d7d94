from shardkv.v1 import cluster_pb2 as _cluster_pb2
from shardkv.v1 import kv_pb2 as _kv_pb2
from shardkv.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TxnRequest(_message.Message):
    __slots__ = ("compares", "success", "failure", "session", "started_ms")
    COMPARES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    compares: _containers.RepeatedCompositeFieldContainer[_kv_pb2.Compare]
    success: _containers.RepeatedCompositeFieldContainer[_kv_pb2.Operation]
    failure: _containers.RepeatedCompositeFieldContainer[_kv_pb2.Operation]
    session: Session
    started_ms: int
    def __init__(self, compares: _Optional[_Iterable[_Union[_kv_pb2.Compare, _Mapping]]] = ..., success: _Optional[_Iterable[_Union[_kv_pb2.Operation, _Mapping]]] = ..., failure: _Optional[_Iterable[_Union[_kv_pb2.Operation, _Mapping]]] = ..., session: _Optional[_Union[Session, _Mapping]] = ..., started_ms: _Optional[int] = ...) -> None: ...

class TxnResponse(_message.Message):
    __slots__ = ("succeeded", "results", "results_unknown", "revision")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    results: _containers.RepeatedCompositeFieldContainer[_kv_pb2.OperationResult]
    results_unknown: bool
    revision: int
    def __init__(self, succeeded: _Optional[bool] = ..., results: _Optional[_Iterable[_Union[_kv_pb2.OperationResult, _Mapping]]] = ..., results_unknown: _Optional[bool] = ..., revision: _Optional[int] = ...) -> None: ...

class TxnSummary(_message.Message):
    __slots__ = ("txn", "state", "primary_key", "primary_group", "prepared_groups", "deadline_ms", "locked_keys")
    TXN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_GROUP_FIELD_NUMBER: _ClassVar[int]
    PREPARED_GROUPS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    LOCKED_KEYS_FIELD_NUMBER: _ClassVar[int]
    txn: _kv_pb2.TxnRef
    state: _kv_pb2.TxnState
    primary_key: bytes
    primary_group: int
    prepared_groups: _containers.RepeatedScalarFieldContainer[int]
    deadline_ms: int
    locked_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, txn: _Optional[_Union[_kv_pb2.TxnRef, _Mapping]] = ..., state: _Optional[_Union[_kv_pb2.TxnState, str]] = ..., primary_key: _Optional[bytes] = ..., primary_group: _Optional[int] = ..., prepared_groups: _Optional[_Iterable[int]] = ..., deadline_ms: _Optional[int] = ..., locked_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ListTransactionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("txns",)
    TXNS_FIELD_NUMBER: _ClassVar[int]
    txns: _containers.RepeatedCompositeFieldContainer[TxnSummary]
    def __init__(self, txns: _Optional[_Iterable[_Union[TxnSummary, _Mapping]]] = ...) -> None: ...

class ShowTxnRequest(_message.Message):
    __slots__ = ("txn",)
    TXN_FIELD_NUMBER: _ClassVar[int]
    txn: _kv_pb2.TxnRef
    def __init__(self, txn: _Optional[_Union[_kv_pb2.TxnRef, _Mapping]] = ...) -> None: ...

class ShowTxnResponse(_message.Message):
    __slots__ = ("txn", "record", "prepared")
    TXN_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    txn: TxnSummary
    record: _kv_pb2.TxnRecord
    prepared: _containers.RepeatedCompositeFieldContainer[_kv_pb2.PreparedTxn]
    def __init__(self, txn: _Optional[_Union[TxnSummary, _Mapping]] = ..., record: _Optional[_Union[_kv_pb2.TxnRecord, _Mapping]] = ..., prepared: _Optional[_Iterable[_Union[_kv_pb2.PreparedTxn, _Mapping]]] = ...) -> None: ...

class ResolveTxnRequest(_message.Message):
    __slots__ = ("txn", "commit")
    TXN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    txn: _kv_pb2.TxnRef
    commit: bool
    def __init__(self, txn: _Optional[_Union[_kv_pb2.TxnRef, _Mapping]] = ..., commit: _Optional[bool] = ...) -> None: ...

class ResolveTxnResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: _kv_pb2.TxnRecord
    def __init__(self, record: _Optional[_Union[_kv_pb2.TxnRecord, _Mapping]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("client_id", "seq", "acked_seq")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    acked_seq: int
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., acked_seq: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("kv",)
    KV_FIELD_NUMBER: _ClassVar[int]
    kv: _kv_pb2.KeyValue
    def __init__(self, kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value", "session")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    session: Session
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("kv",)
    KV_FIELD_NUMBER: _ClassVar[int]
    kv: _kv_pb2.KeyValue
    def __init__(self, kv: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key", "session")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    session: Session
    def __init__(self, key: _Optional[bytes] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class CompareAndSetRequest(_message.Message):
    __slots__ = ("key", "expected", "value", "session")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    expected: bytes
    value: bytes
    session: Session
    def __init__(self, key: _Optional[bytes] = ..., expected: _Optional[bytes] = ..., value: _Optional[bytes] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class CompareAndSetResponse(_message.Message):
    __slots__ = ("succeeded", "previous")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    previous: _kv_pb2.KeyValue
    def __init__(self, succeeded: _Optional[bool] = ..., previous: _Optional[_Union[_kv_pb2.KeyValue, _Mapping]] = ...) -> None: ...

class PutManyRequest(_message.Message):
    __slots__ = ("items", "session")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    session: Session
    def __init__(self, items: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ..., session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class PutManyResponse(_message.Message):
    __slots__ = ("written",)
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    written: int
    def __init__(self, written: _Optional[int] = ...) -> None: ...

class GetManyRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetManyResponse(_message.Message):
    __slots__ = ("kvs",)
    KVS_FIELD_NUMBER: _ClassVar[int]
    kvs: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    def __init__(self, kvs: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ...) -> None: ...

class ScanKeysRequest(_message.Message):
    __slots__ = ("start", "end", "prefix", "limit", "continuation")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    prefix: bytes
    limit: int
    continuation: bytes
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., prefix: _Optional[bytes] = ..., limit: _Optional[int] = ..., continuation: _Optional[bytes] = ...) -> None: ...

class ScanKeysResponse(_message.Message):
    __slots__ = ("kvs", "continuation")
    KVS_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    kvs: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    continuation: bytes
    def __init__(self, kvs: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ..., continuation: _Optional[bytes] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("get", "put", "delete", "compare_and_set")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SET_FIELD_NUMBER: _ClassVar[int]
    get: GetRequest
    put: PutRequest
    delete: DeleteRequest
    compare_and_set: CompareAndSetRequest
    def __init__(self, get: _Optional[_Union[GetRequest, _Mapping]] = ..., put: _Optional[_Union[PutRequest, _Mapping]] = ..., delete: _Optional[_Union[DeleteRequest, _Mapping]] = ..., compare_and_set: _Optional[_Union[CompareAndSetRequest, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("get", "put", "delete", "compare_and_set", "code", "message")
    GET_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SET_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    get: GetResponse
    put: PutResponse
    delete: DeleteResponse
    compare_and_set: CompareAndSetResponse
    code: int
    message: str
    def __init__(self, get: _Optional[_Union[GetResponse, _Mapping]] = ..., put: _Optional[_Union[PutResponse, _Mapping]] = ..., delete: _Optional[_Union[DeleteResponse, _Mapping]] = ..., compare_and_set: _Optional[_Union[CompareAndSetResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[Request]
    def __init__(self, requests: _Optional[_Iterable[_Union[Request, _Mapping]]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[Response]
    def __init__(self, responses: _Optional[_Iterable[_Union[Response, _Mapping]]] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeReport(_message.Message):
    __slots__ = ("node_id", "address", "error", "status")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    error: str
    status: _node_pb2.StatusResponse
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., error: _Optional[str] = ..., status: _Optional[_Union[_node_pb2.StatusResponse, _Mapping]] = ...) -> None: ...

class GroupShare(_message.Message):
    __slots__ = ("group_id", "share")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    share: float
    def __init__(self, group_id: _Optional[int] = ..., share: _Optional[float] = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("map", "nodes", "shares")
    MAP_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    map: _cluster_pb2.ClusterMap
    nodes: _containers.RepeatedCompositeFieldContainer[NodeReport]
    shares: _containers.RepeatedCompositeFieldContainer[GroupShare]
    def __init__(self, map: _Optional[_Union[_cluster_pb2.ClusterMap, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodeReport, _Mapping]]] = ..., shares: _Optional[_Iterable[_Union[GroupShare, _Mapping]]] = ...) -> None: ...
