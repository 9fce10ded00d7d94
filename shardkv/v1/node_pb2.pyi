from shardkv.v1 import kv_pb2 as _kv_pb2
from shardkv.v1 import cluster_pb2 as _cluster_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReconfigureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECONFIGURE_ADD_LEARNER: _ClassVar[ReconfigureKind]
    RECONFIGURE_PROMOTE: _ClassVar[ReconfigureKind]
    RECONFIGURE_REMOVE: _ClassVar[ReconfigureKind]

class ExportKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_ALL: _ClassVar[ExportKind]
    EXPORT_CHANGES: _ClassVar[ExportKind]
    EXPORT_KEYS: _ClassVar[ExportKind]
RECONFIGURE_ADD_LEARNER: ReconfigureKind
RECONFIGURE_PROMOTE: ReconfigureKind
RECONFIGURE_REMOVE: ReconfigureKind
EXPORT_ALL: ExportKind
EXPORT_CHANGES: ExportKind
EXPORT_KEYS: ExportKind

class WatchRequest(_message.Message):
    __slots__ = ("group_id", "start_revision", "key", "range_end")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    START_REVISION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RANGE_END_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    start_revision: int
    key: bytes
    range_end: bytes
    def __init__(self, group_id: _Optional[int] = ..., start_revision: _Optional[int] = ..., key: _Optional[bytes] = ..., range_end: _Optional[bytes] = ...) -> None: ...

class WatchBatch(_message.Message):
    __slots__ = ("error", "events", "progress", "compact_revision")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    COMPACT_REVISION_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    events: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    progress: int
    compact_revision: int
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ..., progress: _Optional[int] = ..., compact_revision: _Optional[int] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("group_id", "lease_id", "renew")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    lease_id: int
    renew: bool
    def __init__(self, group_id: _Optional[int] = ..., lease_id: _Optional[int] = ..., renew: _Optional[bool] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("error", "found", "ttl", "remaining_ms")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    found: bool
    ttl: int
    remaining_ms: int
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., found: _Optional[bool] = ..., ttl: _Optional[int] = ..., remaining_ms: _Optional[int] = ...) -> None: ...

class MoveReplica(_message.Message):
    __slots__ = ("group_id", "from_node", "to_node")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    from_node: int
    to_node: int
    def __init__(self, group_id: _Optional[int] = ..., from_node: _Optional[int] = ..., to_node: _Optional[int] = ...) -> None: ...

class TransferLeader(_message.Message):
    __slots__ = ("group_id", "to_node")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    to_node: int
    def __init__(self, group_id: _Optional[int] = ..., to_node: _Optional[int] = ...) -> None: ...

class ChangePlacementRequest(_message.Message):
    __slots__ = ("move_replica", "remove_node", "transfer_leader", "rebalance", "dry_run")
    MOVE_REPLICA_FIELD_NUMBER: _ClassVar[int]
    REMOVE_NODE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_LEADER_FIELD_NUMBER: _ClassVar[int]
    REBALANCE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    move_replica: MoveReplica
    remove_node: int
    transfer_leader: TransferLeader
    rebalance: bool
    dry_run: bool
    def __init__(self, move_replica: _Optional[_Union[MoveReplica, _Mapping]] = ..., remove_node: _Optional[int] = ..., transfer_leader: _Optional[_Union[TransferLeader, _Mapping]] = ..., rebalance: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ChangePlacementResponse(_message.Message):
    __slots__ = ("error", "map")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    map: _cluster_pb2.ClusterMap
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., map: _Optional[_Union[_cluster_pb2.ClusterMap, _Mapping]] = ...) -> None: ...

class ReconfigureRequest(_message.Message):
    __slots__ = ("group_id", "kind", "node_id")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    kind: ReconfigureKind
    node_id: int
    def __init__(self, group_id: _Optional[int] = ..., kind: _Optional[_Union[ReconfigureKind, str]] = ..., node_id: _Optional[int] = ...) -> None: ...

class ReconfigureResponse(_message.Message):
    __slots__ = ("error", "done", "reason", "voters", "learners", "index")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    done: bool
    reason: str
    voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    index: int
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., done: _Optional[bool] = ..., reason: _Optional[str] = ..., voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ..., index: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("group_id", "epoch", "target", "kind", "since_revision", "chunk_keys")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_KEYS_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    epoch: int
    target: int
    kind: ExportKind
    since_revision: int
    chunk_keys: int
    def __init__(self, group_id: _Optional[int] = ..., epoch: _Optional[int] = ..., target: _Optional[int] = ..., kind: _Optional[_Union[ExportKind, str]] = ..., since_revision: _Optional[int] = ..., chunk_keys: _Optional[int] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("error", "data", "revision", "key_count", "frozen")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KEY_COUNT_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    data: _kv_pb2.MigrateImport
    revision: int
    key_count: int
    frozen: bool
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., data: _Optional[_Union[_kv_pb2.MigrateImport, _Mapping]] = ..., revision: _Optional[int] = ..., key_count: _Optional[int] = ..., frozen: _Optional[bool] = ...) -> None: ...

class AddGroup(_message.Message):
    __slots__ = ("group_id", "weight", "nodes")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    weight: int
    nodes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, group_id: _Optional[int] = ..., weight: _Optional[int] = ..., nodes: _Optional[_Iterable[int]] = ...) -> None: ...

class SetWeight(_message.Message):
    __slots__ = ("group_id", "weight")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    weight: int
    def __init__(self, group_id: _Optional[int] = ..., weight: _Optional[int] = ...) -> None: ...

class ChangeRingRequest(_message.Message):
    __slots__ = ("add_group", "remove_group", "set_weight", "move_rate", "dry_run", "max_keys_per_second")
    ADD_GROUP_FIELD_NUMBER: _ClassVar[int]
    REMOVE_GROUP_FIELD_NUMBER: _ClassVar[int]
    SET_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MOVE_RATE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MAX_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    add_group: AddGroup
    remove_group: int
    set_weight: SetWeight
    move_rate: int
    dry_run: bool
    max_keys_per_second: int
    def __init__(self, add_group: _Optional[_Union[AddGroup, _Mapping]] = ..., remove_group: _Optional[int] = ..., set_weight: _Optional[_Union[SetWeight, _Mapping]] = ..., move_rate: _Optional[int] = ..., dry_run: _Optional[bool] = ..., max_keys_per_second: _Optional[int] = ...) -> None: ...

class ChangeRingResponse(_message.Message):
    __slots__ = ("error", "map")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    map: _cluster_pb2.ClusterMap
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., map: _Optional[_Union[_cluster_pb2.ClusterMap, _Mapping]] = ...) -> None: ...

class ListTxnsRequest(_message.Message):
    __slots__ = ("group_id", "txn", "key")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    txn: _kv_pb2.TxnRef
    key: bytes
    def __init__(self, group_id: _Optional[int] = ..., txn: _Optional[_Union[_kv_pb2.TxnRef, _Mapping]] = ..., key: _Optional[bytes] = ...) -> None: ...

class ListTxnsResponse(_message.Message):
    __slots__ = ("error", "prepared", "records", "session_floor")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FLOOR_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    prepared: _containers.RepeatedCompositeFieldContainer[_kv_pb2.PreparedTxn]
    records: _containers.RepeatedCompositeFieldContainer[_kv_pb2.TxnRecord]
    session_floor: int
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., prepared: _Optional[_Iterable[_Union[_kv_pb2.PreparedTxn, _Mapping]]] = ..., records: _Optional[_Iterable[_Union[_kv_pb2.TxnRecord, _Mapping]]] = ..., session_floor: _Optional[int] = ...) -> None: ...

class NotLeader(_message.Message):
    __slots__ = ("group_id", "leader_id", "leader_address")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    leader_id: int
    leader_address: str
    def __init__(self, group_id: _Optional[int] = ..., leader_id: _Optional[int] = ..., leader_address: _Optional[str] = ...) -> None: ...

class UnknownGroup(_message.Message):
    __slots__ = ("group_id",)
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    def __init__(self, group_id: _Optional[int] = ...) -> None: ...

class GroupError(_message.Message):
    __slots__ = ("not_leader", "unknown_group", "wrong_group")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_GROUP_FIELD_NUMBER: _ClassVar[int]
    WRONG_GROUP_FIELD_NUMBER: _ClassVar[int]
    not_leader: NotLeader
    unknown_group: UnknownGroup
    wrong_group: _kv_pb2.WrongGroup
    def __init__(self, not_leader: _Optional[_Union[NotLeader, _Mapping]] = ..., unknown_group: _Optional[_Union[UnknownGroup, _Mapping]] = ..., wrong_group: _Optional[_Union[_kv_pb2.WrongGroup, _Mapping]] = ...) -> None: ...

class WriteBatchRequest(_message.Message):
    __slots__ = ("group_id", "commands")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    commands: _containers.RepeatedCompositeFieldContainer[_kv_pb2.Command]
    def __init__(self, group_id: _Optional[int] = ..., commands: _Optional[_Iterable[_Union[_kv_pb2.Command, _Mapping]]] = ...) -> None: ...

class WriteOutcome(_message.Message):
    __slots__ = ("result", "code", "message")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    result: _kv_pb2.CommandResult
    code: int
    message: str
    def __init__(self, result: _Optional[_Union[_kv_pb2.CommandResult, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class WriteBatchResponse(_message.Message):
    __slots__ = ("error", "outcomes")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    outcomes: _containers.RepeatedCompositeFieldContainer[WriteOutcome]
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., outcomes: _Optional[_Iterable[_Union[WriteOutcome, _Mapping]]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("node_id", "address", "cluster_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    cluster_id: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("error", "map")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    map: _cluster_pb2.ClusterMap
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., map: _Optional[_Union[_cluster_pb2.ClusterMap, _Mapping]] = ...) -> None: ...

class GetClusterMapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterMapResponse(_message.Message):
    __slots__ = ("map", "node_id")
    MAP_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    map: _cluster_pb2.ClusterMap
    node_id: int
    def __init__(self, map: _Optional[_Union[_cluster_pb2.ClusterMap, _Mapping]] = ..., node_id: _Optional[int] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("group_id", "command")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    command: _kv_pb2.Command
    def __init__(self, group_id: _Optional[int] = ..., command: _Optional[_Union[_kv_pb2.Command, _Mapping]] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("error", "result")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    result: _kv_pb2.CommandResult
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., result: _Optional[_Union[_kv_pb2.CommandResult, _Mapping]] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("group_id", "keys")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, group_id: _Optional[int] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("error", "kvs", "locks")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KVS_FIELD_NUMBER: _ClassVar[int]
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    kvs: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    locks: _containers.RepeatedCompositeFieldContainer[_kv_pb2.LockInfo]
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., kvs: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ..., locks: _Optional[_Iterable[_Union[_kv_pb2.LockInfo, _Mapping]]] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("group_id", "start", "end", "prefix", "limit", "epoch", "groups")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    start: bytes
    end: bytes
    prefix: bytes
    limit: int
    epoch: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, group_id: _Optional[int] = ..., start: _Optional[bytes] = ..., end: _Optional[bytes] = ..., prefix: _Optional[bytes] = ..., limit: _Optional[int] = ..., epoch: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("error", "kvs", "more", "locks")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KVS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    LOCKS_FIELD_NUMBER: _ClassVar[int]
    error: GroupError
    kvs: _containers.RepeatedCompositeFieldContainer[_kv_pb2.KeyValue]
    more: bool
    locks: _containers.RepeatedCompositeFieldContainer[_kv_pb2.LockInfo]
    def __init__(self, error: _Optional[_Union[GroupError, _Mapping]] = ..., kvs: _Optional[_Iterable[_Union[_kv_pb2.KeyValue, _Mapping]]] = ..., more: _Optional[bool] = ..., locks: _Optional[_Iterable[_Union[_kv_pb2.LockInfo, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GroupStatus(_message.Message):
    __slots__ = ("group_id", "role", "leader_id", "term", "commit", "applied", "first_index", "last_index", "key_count", "voters", "learners", "epoch")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    role: str
    leader_id: int
    term: int
    commit: int
    applied: int
    first_index: int
    last_index: int
    key_count: int
    voters: _containers.RepeatedScalarFieldContainer[int]
    learners: _containers.RepeatedScalarFieldContainer[int]
    epoch: int
    def __init__(self, group_id: _Optional[int] = ..., role: _Optional[str] = ..., leader_id: _Optional[int] = ..., term: _Optional[int] = ..., commit: _Optional[int] = ..., applied: _Optional[int] = ..., first_index: _Optional[int] = ..., last_index: _Optional[int] = ..., key_count: _Optional[int] = ..., voters: _Optional[_Iterable[int]] = ..., learners: _Optional[_Iterable[int]] = ..., epoch: _Optional[int] = ...) -> None: ...

class RuntimeCounters(_message.Message):
    __slots__ = ("rounds", "synced_writes", "unsynced_writes", "messages_sent", "messages_stepped", "entries_applied")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SYNCED_WRITES_FIELD_NUMBER: _ClassVar[int]
    UNSYNCED_WRITES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_SENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_STEPPED_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    rounds: int
    synced_writes: int
    unsynced_writes: int
    messages_sent: int
    messages_stepped: int
    entries_applied: int
    def __init__(self, rounds: _Optional[int] = ..., synced_writes: _Optional[int] = ..., unsynced_writes: _Optional[int] = ..., messages_sent: _Optional[int] = ..., messages_stepped: _Optional[int] = ..., entries_applied: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node_id", "groups", "counters")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupStatus]
    counters: RuntimeCounters
    def __init__(self, node_id: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupStatus, _Mapping]]] = ..., counters: _Optional[_Union[RuntimeCounters, _Mapping]] = ...) -> None: ...
