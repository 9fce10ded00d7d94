from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("group_id", "replicas", "weight")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    group_id: int
    replicas: _containers.RepeatedScalarFieldContainer[int]
    weight: int
    def __init__(self, group_id: _Optional[int] = ..., replicas: _Optional[_Iterable[int]] = ..., weight: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("cluster_id", "version", "ring", "nodes", "groups")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    version: int
    ring: Ring
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    groups: _containers.RepeatedCompositeFieldContainer[GroupInfo]
    def __init__(self, cluster_id: _Optional[str] = ..., version: _Optional[int] = ..., ring: _Optional[_Union[Ring, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[GroupInfo, _Mapping]]] = ...) -> None: ...
