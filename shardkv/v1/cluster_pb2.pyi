from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_PENDING: _ClassVar[ReplicaPhase]
    REPLICA_LEARNING: _ClassVar[ReplicaPhase]
    REPLICA_VOTING: _ClassVar[ReplicaPhase]

class MovePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOVE_PENDING: _ClassVar[MovePhase]
    MOVE_COPYING: _ClassVar[MovePhase]
    MOVE_FROZEN: _ClassVar[MovePhase]
    MOVE_ACTIVE: _ClassVar[MovePhase]
    MOVE_DONE: _ClassVar[MovePhase]

class ArcState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARC_NONE: _ClassVar[ArcState]
    ARC_OUT_COPYING: _ClassVar[ArcState]
    ARC_OUT_FROZEN: _ClassVar[ArcState]
    ARC_OUT_SEALED: _ClassVar[ArcState]
    ARC_OUT_RELEASED: _ClassVar[ArcState]
    ARC_IN_IMPORTING: _ClassVar[ArcState]
    ARC_IN_ACTIVE: _ClassVar[ArcState]
REPLICA_PENDING: ReplicaPhase
REPLICA_LEARNING: ReplicaPhase
REPLICA_VOTING: ReplicaPhase
MOVE_PENDING: MovePhase
MOVE_COPYING: MovePhase
MOVE_FROZEN: MovePhase
MOVE_ACTIVE: MovePhase
MOVE_DONE: MovePhase
ARC_NONE: ArcState
ARC_OUT_COPYING: ArcState
ARC_OUT_FROZEN: ArcState
ARC_OUT_SEALED: ArcState
ARC_OUT_RELEASED: ArcState
ARC_IN_IMPORTING: ArcState
ARC_IN_ACTIVE: ArcState

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "address", "state")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    address: str
    state: str
    def __init__(self, node_id: _Optional[int] = ..., address: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class GroupInfo(_message.Message):
    __slots__ = ("group_id", "replicas", "weight", "preferred_leader", "learners", "conf_index", "retired")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    CONF_INDEX_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    replicas: _containers.RepeatedScalarFieldContainer[int]
    weight: int
    preferred_leader: int
    learners: _containers.RepeatedScalarFieldContainer[int]
    conf_index: int
    retired: bool
    def __init__(self, group_id: _Optional[int] = ..., replicas: _Optional[_Iterable[int]] = ..., weight: _Optional[int] = ..., preferred_leader: _Optional[int] = ..., learners: _Optional[_Iterable[int]] = ..., conf_index: _Optional[int] = ..., retired: _Optional[bool] = ...) -> None: ...

class Ring(_message.Message):
    __slots__ = ("epoch", "groups")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupWeight]
    def __init__(self, epoch: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupWeight, _Mapping]]] = ...) -> None: ...

class GroupWeight(_message.Message):
    __slots__ = ("group_id", "weight")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    weight: int
    def __init__(self, group_id: _Optional[int] = ..., weight: _Optional[int] = ...) -> None: ...

class ClusterMap(_message.Message):
    __slots__ = ("cluster_id", "version", "ring", "nodes", "groups", "migration", "replica_moves")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    REPLICA_MOVES_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    version: int
    ring: Ring
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    groups: _containers.RepeatedCompositeFieldContainer[GroupInfo]
    migration: Migration
    replica_moves: _containers.RepeatedCompositeFieldContainer[ReplicaMove]
    def __init__(self, cluster_id: _Optional[str] = ..., version: _Optional[int] = ..., ring: _Optional[_Union[Ring, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupInfo, _Mapping]]] = ..., migration: _Optional[_Union[Migration, _Mapping]] = ..., replica_moves: _Optional[_Iterable[_Union[ReplicaMove, _Mapping]]] = ...) -> None: ...

class ReplicaMove(_message.Message):
    __slots__ = ("group_id", "from_node", "to_node", "phase", "started_ms", "phase_started_ms", "stuck")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_NODE_FIELD_NUMBER: _ClassVar[int]
    TO_NODE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    PHASE_STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    STUCK_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    from_node: int
    to_node: int
    phase: ReplicaPhase
    started_ms: int
    phase_started_ms: int
    stuck: str
    def __init__(self, group_id: _Optional[int] = ..., from_node: _Optional[int] = ..., to_node: _Optional[int] = ..., phase: _Optional[_Union[ReplicaPhase, str]] = ..., started_ms: _Optional[int] = ..., phase_started_ms: _Optional[int] = ..., stuck: _Optional[str] = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("target", "moves", "started_ms", "reason", "retiring", "max_keys_per_second")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MOVES_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETIRING_FIELD_NUMBER: _ClassVar[int]
    MAX_KEYS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    target: Ring
    moves: _containers.RepeatedCompositeFieldContainer[Move]
    started_ms: int
    reason: str
    retiring: _containers.RepeatedScalarFieldContainer[int]
    max_keys_per_second: int
    def __init__(self, target: _Optional[_Union[Ring, _Mapping]] = ..., moves: _Optional[_Iterable[_Union[Move, _Mapping]]] = ..., started_ms: _Optional[int] = ..., reason: _Optional[str] = ..., retiring: _Optional[_Iterable[int]] = ..., max_keys_per_second: _Optional[int] = ...) -> None: ...

class Move(_message.Message):
    __slots__ = ("source", "target", "phase", "keys_copied", "bytes_copied", "keys_estimate", "started_ms", "phase_started_ms", "finished_ms", "stuck", "frozen_ms")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    KEYS_COPIED_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    KEYS_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    PHASE_STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    STUCK_FIELD_NUMBER: _ClassVar[int]
    FROZEN_MS_FIELD_NUMBER: _ClassVar[int]
    source: int
    target: int
    phase: MovePhase
    keys_copied: int
    bytes_copied: int
    keys_estimate: int
    started_ms: int
    phase_started_ms: int
    finished_ms: int
    stuck: str
    frozen_ms: int
    def __init__(self, source: _Optional[int] = ..., target: _Optional[int] = ..., phase: _Optional[_Union[MovePhase, str]] = ..., keys_copied: _Optional[int] = ..., bytes_copied: _Optional[int] = ..., keys_estimate: _Optional[int] = ..., started_ms: _Optional[int] = ..., phase_started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., stuck: _Optional[str] = ..., frozen_ms: _Optional[int] = ...) -> None: ...

class GroupMigration(_message.Message):
    __slots__ = ("epoch", "target", "outgoing", "incoming", "driver", "counted_out", "bulk_imports")
    class OutgoingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: ArcState
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[ArcState, str]] = ...) -> None: ...
    class IncomingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: ArcState
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[ArcState, str]] = ...) -> None: ...
    class BulkImportsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: BulkImport
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[BulkImport, _Mapping]] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    COUNTED_OUT_FIELD_NUMBER: _ClassVar[int]
    BULK_IMPORTS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    target: Ring
    outgoing: _containers.ScalarMap[int, ArcState]
    incoming: _containers.ScalarMap[int, ArcState]
    driver: int
    counted_out: _containers.RepeatedScalarFieldContainer[int]
    bulk_imports: _containers.MessageMap[int, BulkImport]
    def __init__(self, epoch: _Optional[int] = ..., target: _Optional[_Union[Ring, _Mapping]] = ..., outgoing: _Optional[_Mapping[int, ArcState]] = ..., incoming: _Optional[_Mapping[int, ArcState]] = ..., driver: _Optional[int] = ..., counted_out: _Optional[_Iterable[int]] = ..., bulk_imports: _Optional[_Mapping[int, BulkImport]] = ...) -> None: ...

class BulkImport(_message.Message):
    __slots__ = ("bulk_pass", "last_key")
    BULK_PASS_FIELD_NUMBER: _ClassVar[int]
    LAST_KEY_FIELD_NUMBER: _ClassVar[int]
    bulk_pass: int
    last_key: bytes
    def __init__(self, bulk_pass: _Optional[int] = ..., last_key: _Optional[bytes] = ...) -> None: ...
