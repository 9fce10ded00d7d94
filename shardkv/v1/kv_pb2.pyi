from shardkv.v1 import cluster_pb2 as _cluster_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TxnState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TXN_UNKNOWN: _ClassVar[TxnState]
    TXN_PREPARED: _ClassVar[TxnState]
    TXN_COMMITTED: _ClassVar[TxnState]
    TXN_ABORTED: _ClassVar[TxnState]
TXN_UNKNOWN: TxnState
TXN_PREPARED: TxnState
TXN_COMMITTED: TxnState
TXN_ABORTED: TxnState

class Put(_message.Message):
    __slots__ = ("key", "value", "lease")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    lease: int
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., lease: _Optional[int] = ...) -> None: ...

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

class Get(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    def __init__(self, key: _Optional[bytes] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("put", "delete", "compare_and_set", "get")
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    COMPARE_AND_SET_FIELD_NUMBER: _ClassVar[int]
    GET_FIELD_NUMBER: _ClassVar[int]
    put: Put
    delete: Delete
    compare_and_set: CompareAndSet
    get: Get
    def __init__(self, put: _Optional[_Union[Put, _Mapping]] = ..., delete: _Optional[_Union[Delete, _Mapping]] = ..., compare_and_set: _Optional[_Union[CompareAndSet, _Mapping]] = ..., get: _Optional[_Union[Get, _Mapping]] = ...) -> None: ...

class Compare(_message.Message):
    __slots__ = ("key", "target", "operator", "value", "number")
    class Target(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VALUE: _ClassVar[Compare.Target]
        VERSION: _ClassVar[Compare.Target]
        CREATE_REVISION: _ClassVar[Compare.Target]
        MOD_REVISION: _ClassVar[Compare.Target]
        LEASE: _ClassVar[Compare.Target]
    VALUE: Compare.Target
    VERSION: Compare.Target
    CREATE_REVISION: Compare.Target
    MOD_REVISION: Compare.Target
    LEASE: Compare.Target
    class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        EQUAL: _ClassVar[Compare.Operator]
        NOT_EQUAL: _ClassVar[Compare.Operator]
        GREATER: _ClassVar[Compare.Operator]
        LESS: _ClassVar[Compare.Operator]
    EQUAL: Compare.Operator
    NOT_EQUAL: Compare.Operator
    GREATER: Compare.Operator
    LESS: Compare.Operator
    KEY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    target: Compare.Target
    operator: Compare.Operator
    value: bytes
    number: int
    def __init__(self, key: _Optional[bytes] = ..., target: _Optional[_Union[Compare.Target, str]] = ..., operator: _Optional[_Union[Compare.Operator, str]] = ..., value: _Optional[bytes] = ..., number: _Optional[int] = ...) -> None: ...

class TxnRef(_message.Message):
    __slots__ = ("client_id", "seq")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class LockInfo(_message.Message):
    __slots__ = ("key", "txn", "primary_key", "deadline_ms", "started_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    txn: TxnRef
    primary_key: bytes
    deadline_ms: int
    started_ms: int
    def __init__(self, key: _Optional[bytes] = ..., txn: _Optional[_Union[TxnRef, _Mapping]] = ..., primary_key: _Optional[bytes] = ..., deadline_ms: _Optional[int] = ..., started_ms: _Optional[int] = ...) -> None: ...

class TxnPrepare(_message.Message):
    __slots__ = ("primary_key", "deadline_ms", "compares", "then_ops", "else_ops", "one_phase", "participant_keys", "started_ms")
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPARES_FIELD_NUMBER: _ClassVar[int]
    THEN_OPS_FIELD_NUMBER: _ClassVar[int]
    ELSE_OPS_FIELD_NUMBER: _ClassVar[int]
    ONE_PHASE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_KEYS_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    primary_key: bytes
    deadline_ms: int
    compares: _containers.RepeatedCompositeFieldContainer[Compare]
    then_ops: _containers.RepeatedCompositeFieldContainer[Operation]
    else_ops: _containers.RepeatedCompositeFieldContainer[Operation]
    one_phase: bool
    participant_keys: _containers.RepeatedScalarFieldContainer[bytes]
    started_ms: int
    def __init__(self, primary_key: _Optional[bytes] = ..., deadline_ms: _Optional[int] = ..., compares: _Optional[_Iterable[_Union[Compare, _Mapping]]] = ..., then_ops: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., else_ops: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., one_phase: _Optional[bool] = ..., participant_keys: _Optional[_Iterable[bytes]] = ..., started_ms: _Optional[int] = ...) -> None: ...

class TxnDecide(_message.Message):
    __slots__ = ("txn", "commit", "then_branch", "primary_key")
    TXN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    THEN_BRANCH_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    txn: TxnRef
    commit: bool
    then_branch: bool
    primary_key: bytes
    def __init__(self, txn: _Optional[_Union[TxnRef, _Mapping]] = ..., commit: _Optional[bool] = ..., then_branch: _Optional[bool] = ..., primary_key: _Optional[bytes] = ...) -> None: ...

class TxnFinish(_message.Message):
    __slots__ = ("txn", "commit", "then_branch")
    TXN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    THEN_BRANCH_FIELD_NUMBER: _ClassVar[int]
    txn: TxnRef
    commit: bool
    then_branch: bool
    def __init__(self, txn: _Optional[_Union[TxnRef, _Mapping]] = ..., commit: _Optional[bool] = ..., then_branch: _Optional[bool] = ...) -> None: ...

class TxnForget(_message.Message):
    __slots__ = ("txn",)
    TXN_FIELD_NUMBER: _ClassVar[int]
    txn: TxnRef
    def __init__(self, txn: _Optional[_Union[TxnRef, _Mapping]] = ...) -> None: ...

class TxnStep(_message.Message):
    __slots__ = ("prepare", "decide", "finish", "forget")
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    DECIDE_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    prepare: TxnPrepare
    decide: TxnDecide
    finish: TxnFinish
    forget: TxnForget
    def __init__(self, prepare: _Optional[_Union[TxnPrepare, _Mapping]] = ..., decide: _Optional[_Union[TxnDecide, _Mapping]] = ..., finish: _Optional[_Union[TxnFinish, _Mapping]] = ..., forget: _Optional[_Union[TxnForget, _Mapping]] = ...) -> None: ...

class TxnRecord(_message.Message):
    __slots__ = ("txn", "state", "then_branch", "participant_keys", "deadline_ms", "finished", "primary_key")
    TXN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    THEN_BRANCH_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_KEYS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    txn: TxnRef
    state: TxnState
    then_branch: bool
    participant_keys: _containers.RepeatedScalarFieldContainer[bytes]
    deadline_ms: int
    finished: bool
    primary_key: bytes
    def __init__(self, txn: _Optional[_Union[TxnRef, _Mapping]] = ..., state: _Optional[_Union[TxnState, str]] = ..., then_branch: _Optional[bool] = ..., participant_keys: _Optional[_Iterable[bytes]] = ..., deadline_ms: _Optional[int] = ..., finished: _Optional[bool] = ..., primary_key: _Optional[bytes] = ...) -> None: ...

class PreparedTxn(_message.Message):
    __slots__ = ("txn", "prepare", "outcome")
    TXN_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    txn: TxnRef
    prepare: TxnPrepare
    outcome: TxnOutcome
    def __init__(self, txn: _Optional[_Union[TxnRef, _Mapping]] = ..., prepare: _Optional[_Union[TxnPrepare, _Mapping]] = ..., outcome: _Optional[_Union[TxnOutcome, _Mapping]] = ...) -> None: ...

class TxnOutcome(_message.Message):
    __slots__ = ("succeeded", "then_results", "else_results", "record", "one_phase")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    THEN_RESULTS_FIELD_NUMBER: _ClassVar[int]
    ELSE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ONE_PHASE_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    then_results: _containers.RepeatedCompositeFieldContainer[OperationResult]
    else_results: _containers.RepeatedCompositeFieldContainer[OperationResult]
    record: TxnRecord
    one_phase: bool
    def __init__(self, succeeded: _Optional[bool] = ..., then_results: _Optional[_Iterable[_Union[OperationResult, _Mapping]]] = ..., else_results: _Optional[_Iterable[_Union[OperationResult, _Mapping]]] = ..., record: _Optional[_Union[TxnRecord, _Mapping]] = ..., one_phase: _Optional[bool] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("client_id", "seq", "operations", "acked_seq", "ring", "batch", "epoch", "puts", "txn", "migrate", "stamp")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PUTS_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_FIELD_NUMBER: _ClassVar[int]
    STAMP_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    acked_seq: int
    ring: _cluster_pb2.Ring
    batch: _containers.RepeatedCompositeFieldContainer[Command]
    epoch: int
    puts: _containers.RepeatedCompositeFieldContainer[KeyValue]
    txn: TxnStep
    migrate: MigrateStep
    stamp: int
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., acked_seq: _Optional[int] = ..., ring: _Optional[_Union[_cluster_pb2.Ring, _Mapping]] = ..., batch: _Optional[_Iterable[_Union[Command, _Mapping]]] = ..., epoch: _Optional[int] = ..., puts: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., txn: _Optional[_Union[TxnStep, _Mapping]] = ..., migrate: _Optional[_Union[MigrateStep, _Mapping]] = ..., stamp: _Optional[int] = ...) -> None: ...

class MigrateStep(_message.Message):
    __slots__ = ("epoch", "source", "target", "begin", "freeze", "seal", "release", "copy", "activate", "collect", "driver", "base", "released_keys", "seal_when_free")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    COLLECT_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_KEYS_FIELD_NUMBER: _ClassVar[int]
    SEAL_WHEN_FREE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    source: int
    target: int
    begin: _cluster_pb2.Ring
    freeze: bool
    seal: bool
    release: bool
    copy: MigrateImport
    activate: bool
    collect: MigrateCollect
    driver: int
    base: _cluster_pb2.Ring
    released_keys: int
    seal_when_free: bool
    def __init__(self, epoch: _Optional[int] = ..., source: _Optional[int] = ..., target: _Optional[int] = ..., begin: _Optional[_Union[_cluster_pb2.Ring, _Mapping]] = ..., freeze: _Optional[bool] = ..., seal: _Optional[bool] = ..., release: _Optional[bool] = ..., copy: _Optional[_Union[MigrateImport, _Mapping]] = ..., activate: _Optional[bool] = ..., collect: _Optional[_Union[MigrateCollect, _Mapping]] = ..., driver: _Optional[int] = ..., base: _Optional[_Union[_cluster_pb2.Ring, _Mapping]] = ..., released_keys: _Optional[int] = ..., seal_when_free: _Optional[bool] = ...) -> None: ...

class MigrateImport(_message.Message):
    __slots__ = ("keys", "records", "deleted", "sessions", "txn_records", "activate", "bulk_pass")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TXN_RECORDS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    BULK_PASS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    deleted: _containers.RepeatedScalarFieldContainer[bytes]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionCopy]
    txn_records: _containers.RepeatedCompositeFieldContainer[TxnRecord]
    activate: bool
    bulk_pass: int
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., records: _Optional[_Iterable[bytes]] = ..., deleted: _Optional[_Iterable[bytes]] = ..., sessions: _Optional[_Iterable[_Union[SessionCopy, _Mapping]]] = ..., txn_records: _Optional[_Iterable[_Union[TxnRecord, _Mapping]]] = ..., activate: _Optional[bool] = ..., bulk_pass: _Optional[int] = ...) -> None: ...

class SessionCopy(_message.Message):
    __slots__ = ("client_id", "floor", "seqs", "results")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    floor: int
    seqs: _containers.RepeatedScalarFieldContainer[int]
    results: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, client_id: _Optional[int] = ..., floor: _Optional[int] = ..., seqs: _Optional[_Iterable[int]] = ..., results: _Optional[_Iterable[bytes]] = ...) -> None: ...

class MigrateCollect(_message.Message):
    __slots__ = ("keys", "last")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    last: bool
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., last: _Optional[bool] = ...) -> None: ...

class MigrateResult(_message.Message):
    __slots__ = ("applied", "reason", "wait", "target_active", "sealed")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TARGET_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    reason: str
    wait: bool
    target_active: bool
    sealed: bool
    def __init__(self, applied: _Optional[bool] = ..., reason: _Optional[str] = ..., wait: _Optional[bool] = ..., target_active: _Optional[bool] = ..., sealed: _Optional[bool] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value", "version", "create_revision", "mod_revision", "lease")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    MOD_REVISION_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    version: int
    create_revision: int
    mod_revision: int
    lease: int
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., create_revision: _Optional[int] = ..., mod_revision: _Optional[int] = ..., lease: _Optional[int] = ...) -> None: ...

class OperationResult(_message.Message):
    __slots__ = ("succeeded", "previous")
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    succeeded: bool
    previous: KeyValue
    def __init__(self, succeeded: _Optional[bool] = ..., previous: _Optional[_Union[KeyValue, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("results", "revision", "wrong_group", "stale", "puts_written", "locked", "txn", "migrate", "shape", "reused", "replayed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    WRONG_GROUP_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    PUTS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    TXN_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[OperationResult]
    revision: int
    wrong_group: WrongGroup
    stale: bool
    puts_written: int
    locked: LockInfo
    txn: TxnOutcome
    migrate: MigrateResult
    shape: int
    reused: bool
    replayed: bool
    def __init__(self, results: _Optional[_Iterable[_Union[OperationResult, _Mapping]]] = ..., revision: _Optional[int] = ..., wrong_group: _Optional[_Union[WrongGroup, _Mapping]] = ..., stale: _Optional[bool] = ..., puts_written: _Optional[int] = ..., locked: _Optional[_Union[LockInfo, _Mapping]] = ..., txn: _Optional[_Union[TxnOutcome, _Mapping]] = ..., migrate: _Optional[_Union[MigrateResult, _Mapping]] = ..., shape: _Optional[int] = ..., reused: _Optional[bool] = ..., replayed: _Optional[bool] = ...) -> None: ...

class WrongGroup(_message.Message):
    __slots__ = ("group_id", "epoch", "key", "moved_to")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MOVED_TO_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    epoch: int
    key: bytes
    moved_to: int
    def __init__(self, group_id: _Optional[int] = ..., epoch: _Optional[int] = ..., key: _Optional[bytes] = ..., moved_to: _Optional[int] = ...) -> None: ...
