"""shardkv.etcd speaks etcd's v3 gRPC API byte for byte.

etcd's clients (etcdctl, the etcd3 Python client) must talk to the router
unchanged, so what they see on the wire must be etcd's: the gRPC method paths
(``/etcdserverpb.KV/Range``...), and every field's number and type. The tables
below are copied from etcd v3.5's api/etcdserverpb/rpc.proto,
api/mvccpb/kv.proto and api/authpb/auth.proto, independently of our .proto
files, and checked against the generated descriptors; the wire encodings are
written by hand from the protobuf encoding rules (a tag is
``field_number << 3 | wire_type``: 0 varint, 2 length-delimited).
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message

from shardkv.etcd import auth_pb2, kv_pb2, rpc_pb2, rpc_pb2_grpc

FD = descriptor.FieldDescriptor

# service -> [(method, request, response, client streams, server streams)]
SERVICES: dict[str, list[tuple[str, str, str, bool, bool]]] = {
    "etcdserverpb.KV": [
        ("Range", "RangeRequest", "RangeResponse", False, False),
        ("Put", "PutRequest", "PutResponse", False, False),
        ("DeleteRange", "DeleteRangeRequest", "DeleteRangeResponse", False, False),
        ("Txn", "TxnRequest", "TxnResponse", False, False),
        ("Compact", "CompactionRequest", "CompactionResponse", False, False),
    ],
    "etcdserverpb.Watch": [
        ("Watch", "WatchRequest", "WatchResponse", True, True),
    ],
    "etcdserverpb.Lease": [
        ("LeaseGrant", "LeaseGrantRequest", "LeaseGrantResponse", False, False),
        ("LeaseRevoke", "LeaseRevokeRequest", "LeaseRevokeResponse", False, False),
        ("LeaseKeepAlive", "LeaseKeepAliveRequest", "LeaseKeepAliveResponse", True, True),
        ("LeaseTimeToLive", "LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse", False, False),
        ("LeaseLeases", "LeaseLeasesRequest", "LeaseLeasesResponse", False, False),
    ],
    "etcdserverpb.Cluster": [
        ("MemberAdd", "MemberAddRequest", "MemberAddResponse", False, False),
        ("MemberRemove", "MemberRemoveRequest", "MemberRemoveResponse", False, False),
        ("MemberUpdate", "MemberUpdateRequest", "MemberUpdateResponse", False, False),
        ("MemberList", "MemberListRequest", "MemberListResponse", False, False),
        ("MemberPromote", "MemberPromoteRequest", "MemberPromoteResponse", False, False),
    ],
    "etcdserverpb.Maintenance": [
        ("Alarm", "AlarmRequest", "AlarmResponse", False, False),
        ("Status", "StatusRequest", "StatusResponse", False, False),
        ("Defragment", "DefragmentRequest", "DefragmentResponse", False, False),
        ("Hash", "HashRequest", "HashResponse", False, False),
        ("HashKV", "HashKVRequest", "HashKVResponse", False, False),
        ("Snapshot", "SnapshotRequest", "SnapshotResponse", False, True),
        ("MoveLeader", "MoveLeaderRequest", "MoveLeaderResponse", False, False),
        ("Downgrade", "DowngradeRequest", "DowngradeResponse", False, False),
    ],
    "etcdserverpb.Auth": [
        ("AuthEnable", "AuthEnableRequest", "AuthEnableResponse", False, False),
        ("AuthDisable", "AuthDisableRequest", "AuthDisableResponse", False, False),
        ("AuthStatus", "AuthStatusRequest", "AuthStatusResponse", False, False),
        ("Authenticate", "AuthenticateRequest", "AuthenticateResponse", False, False),
        ("UserAdd", "AuthUserAddRequest", "AuthUserAddResponse", False, False),
        ("UserGet", "AuthUserGetRequest", "AuthUserGetResponse", False, False),
        ("UserList", "AuthUserListRequest", "AuthUserListResponse", False, False),
        ("UserDelete", "AuthUserDeleteRequest", "AuthUserDeleteResponse", False, False),
        (
            "UserChangePassword",
            "AuthUserChangePasswordRequest",
            "AuthUserChangePasswordResponse",
            False,
            False,
        ),
        ("UserGrantRole", "AuthUserGrantRoleRequest", "AuthUserGrantRoleResponse", False, False),
        ("UserRevokeRole", "AuthUserRevokeRoleRequest", "AuthUserRevokeRoleResponse", False, False),
        ("RoleAdd", "AuthRoleAddRequest", "AuthRoleAddResponse", False, False),
        ("RoleGet", "AuthRoleGetRequest", "AuthRoleGetResponse", False, False),
        ("RoleList", "AuthRoleListRequest", "AuthRoleListResponse", False, False),
        ("RoleDelete", "AuthRoleDeleteRequest", "AuthRoleDeleteResponse", False, False),
        (
            "RoleGrantPermission",
            "AuthRoleGrantPermissionRequest",
            "AuthRoleGrantPermissionResponse",
            False,
            False,
        ),
        (
            "RoleRevokePermission",
            "AuthRoleRevokePermissionRequest",
            "AuthRoleRevokePermissionResponse",
            False,
            False,
        ),
    ],
}

I64, U64, U32, BOOL = FD.TYPE_INT64, FD.TYPE_UINT64, FD.TYPE_UINT32, FD.TYPE_BOOL
BYTES, STR, ENUM, MSG = FD.TYPE_BYTES, FD.TYPE_STRING, FD.TYPE_ENUM, FD.TYPE_MESSAGE

# (message full name, field, number, type), as etcd v3.5 declares them.
FIELDS: list[tuple[str, str, int, int]] = [
    ("etcdserverpb.ResponseHeader", "cluster_id", 1, U64),
    ("etcdserverpb.ResponseHeader", "member_id", 2, U64),
    ("etcdserverpb.ResponseHeader", "revision", 3, I64),
    ("etcdserverpb.ResponseHeader", "raft_term", 4, U64),
    ("etcdserverpb.RangeRequest", "key", 1, BYTES),
    ("etcdserverpb.RangeRequest", "range_end", 2, BYTES),
    ("etcdserverpb.RangeRequest", "limit", 3, I64),
    ("etcdserverpb.RangeRequest", "revision", 4, I64),
    ("etcdserverpb.RangeRequest", "sort_order", 5, ENUM),
    ("etcdserverpb.RangeRequest", "sort_target", 6, ENUM),
    ("etcdserverpb.RangeRequest", "serializable", 7, BOOL),
    ("etcdserverpb.RangeRequest", "keys_only", 8, BOOL),
    ("etcdserverpb.RangeRequest", "count_only", 9, BOOL),
    ("etcdserverpb.RangeRequest", "min_mod_revision", 10, I64),
    ("etcdserverpb.RangeRequest", "max_mod_revision", 11, I64),
    ("etcdserverpb.RangeRequest", "min_create_revision", 12, I64),
    ("etcdserverpb.RangeRequest", "max_create_revision", 13, I64),
    ("etcdserverpb.RangeResponse", "header", 1, MSG),
    ("etcdserverpb.RangeResponse", "kvs", 2, MSG),
    ("etcdserverpb.RangeResponse", "more", 3, BOOL),
    ("etcdserverpb.RangeResponse", "count", 4, I64),
    ("etcdserverpb.PutRequest", "key", 1, BYTES),
    ("etcdserverpb.PutRequest", "value", 2, BYTES),
    ("etcdserverpb.PutRequest", "lease", 3, I64),
    ("etcdserverpb.PutRequest", "prev_kv", 4, BOOL),
    ("etcdserverpb.PutRequest", "ignore_value", 5, BOOL),
    ("etcdserverpb.PutRequest", "ignore_lease", 6, BOOL),
    ("etcdserverpb.PutResponse", "prev_kv", 2, MSG),
    ("etcdserverpb.DeleteRangeRequest", "prev_kv", 3, BOOL),
    ("etcdserverpb.DeleteRangeResponse", "deleted", 2, I64),
    ("etcdserverpb.DeleteRangeResponse", "prev_kvs", 3, MSG),
    ("etcdserverpb.RequestOp", "request_range", 1, MSG),
    ("etcdserverpb.RequestOp", "request_put", 2, MSG),
    ("etcdserverpb.RequestOp", "request_delete_range", 3, MSG),
    ("etcdserverpb.RequestOp", "request_txn", 4, MSG),
    ("etcdserverpb.ResponseOp", "response_txn", 4, MSG),
    ("etcdserverpb.Compare", "result", 1, ENUM),
    ("etcdserverpb.Compare", "target", 2, ENUM),
    ("etcdserverpb.Compare", "key", 3, BYTES),
    ("etcdserverpb.Compare", "version", 4, I64),
    ("etcdserverpb.Compare", "create_revision", 5, I64),
    ("etcdserverpb.Compare", "mod_revision", 6, I64),
    ("etcdserverpb.Compare", "value", 7, BYTES),
    ("etcdserverpb.Compare", "lease", 8, I64),
    ("etcdserverpb.Compare", "range_end", 64, BYTES),
    ("etcdserverpb.TxnRequest", "compare", 1, MSG),
    ("etcdserverpb.TxnRequest", "success", 2, MSG),
    ("etcdserverpb.TxnRequest", "failure", 3, MSG),
    ("etcdserverpb.TxnResponse", "succeeded", 2, BOOL),
    ("etcdserverpb.TxnResponse", "responses", 3, MSG),
    ("etcdserverpb.CompactionRequest", "revision", 1, I64),
    ("etcdserverpb.CompactionRequest", "physical", 2, BOOL),
    ("etcdserverpb.WatchRequest", "create_request", 1, MSG),
    ("etcdserverpb.WatchRequest", "cancel_request", 2, MSG),
    ("etcdserverpb.WatchRequest", "progress_request", 3, MSG),
    ("etcdserverpb.WatchCreateRequest", "start_revision", 3, I64),
    ("etcdserverpb.WatchCreateRequest", "progress_notify", 4, BOOL),
    ("etcdserverpb.WatchCreateRequest", "filters", 5, ENUM),
    ("etcdserverpb.WatchCreateRequest", "prev_kv", 6, BOOL),
    ("etcdserverpb.WatchCreateRequest", "watch_id", 7, I64),
    ("etcdserverpb.WatchCreateRequest", "fragment", 8, BOOL),
    ("etcdserverpb.WatchCancelRequest", "watch_id", 1, I64),
    ("etcdserverpb.WatchResponse", "watch_id", 2, I64),
    ("etcdserverpb.WatchResponse", "created", 3, BOOL),
    ("etcdserverpb.WatchResponse", "canceled", 4, BOOL),
    ("etcdserverpb.WatchResponse", "compact_revision", 5, I64),
    ("etcdserverpb.WatchResponse", "cancel_reason", 6, STR),
    ("etcdserverpb.WatchResponse", "fragment", 7, BOOL),
    ("etcdserverpb.WatchResponse", "events", 11, MSG),
    ("etcdserverpb.LeaseGrantRequest", "TTL", 1, I64),
    ("etcdserverpb.LeaseGrantRequest", "ID", 2, I64),
    ("etcdserverpb.LeaseGrantResponse", "ID", 2, I64),
    ("etcdserverpb.LeaseGrantResponse", "TTL", 3, I64),
    ("etcdserverpb.LeaseGrantResponse", "error", 4, STR),
    ("etcdserverpb.LeaseRevokeRequest", "ID", 1, I64),
    ("etcdserverpb.LeaseCheckpoint", "remaining_TTL", 2, I64),
    ("etcdserverpb.LeaseKeepAliveRequest", "ID", 1, I64),
    ("etcdserverpb.LeaseKeepAliveResponse", "TTL", 3, I64),
    ("etcdserverpb.LeaseTimeToLiveRequest", "keys", 2, BOOL),
    ("etcdserverpb.LeaseTimeToLiveResponse", "grantedTTL", 4, I64),
    ("etcdserverpb.LeaseTimeToLiveResponse", "keys", 5, BYTES),
    ("etcdserverpb.LeaseStatus", "ID", 1, I64),
    ("etcdserverpb.LeaseLeasesResponse", "leases", 2, MSG),
    ("etcdserverpb.Member", "ID", 1, U64),
    ("etcdserverpb.Member", "name", 2, STR),
    ("etcdserverpb.Member", "peerURLs", 3, STR),
    ("etcdserverpb.Member", "clientURLs", 4, STR),
    ("etcdserverpb.Member", "isLearner", 5, BOOL),
    ("etcdserverpb.MemberAddRequest", "isLearner", 2, BOOL),
    ("etcdserverpb.MemberAddResponse", "members", 3, MSG),
    ("etcdserverpb.MemberListRequest", "linearizable", 1, BOOL),
    ("etcdserverpb.MemberListResponse", "members", 2, MSG),
    ("etcdserverpb.MoveLeaderRequest", "targetID", 1, U64),
    ("etcdserverpb.AlarmRequest", "action", 1, ENUM),
    ("etcdserverpb.AlarmRequest", "memberID", 2, U64),
    ("etcdserverpb.AlarmRequest", "alarm", 3, ENUM),
    ("etcdserverpb.HashKVResponse", "hash", 2, U32),
    ("etcdserverpb.HashKVResponse", "compact_revision", 3, I64),
    ("etcdserverpb.SnapshotResponse", "remaining_bytes", 2, U64),
    ("etcdserverpb.SnapshotResponse", "blob", 3, BYTES),
    ("etcdserverpb.DowngradeRequest", "version", 2, STR),
    ("etcdserverpb.StatusResponse", "version", 2, STR),
    ("etcdserverpb.StatusResponse", "dbSize", 3, I64),
    ("etcdserverpb.StatusResponse", "leader", 4, U64),
    ("etcdserverpb.StatusResponse", "raftIndex", 5, U64),
    ("etcdserverpb.StatusResponse", "raftTerm", 6, U64),
    ("etcdserverpb.StatusResponse", "raftAppliedIndex", 7, U64),
    ("etcdserverpb.StatusResponse", "errors", 8, STR),
    ("etcdserverpb.StatusResponse", "dbSizeInUse", 9, I64),
    ("etcdserverpb.StatusResponse", "isLearner", 10, BOOL),
    ("etcdserverpb.AuthUserAddRequest", "options", 3, MSG),
    ("etcdserverpb.AuthUserAddRequest", "hashedPassword", 4, STR),
    ("etcdserverpb.AuthStatusResponse", "authRevision", 3, U64),
    ("etcdserverpb.AuthenticateResponse", "token", 2, STR),
    ("etcdserverpb.AuthRoleGetResponse", "perm", 2, MSG),
    ("etcdserverpb.AuthRoleRevokePermissionRequest", "range_end", 3, BYTES),
    ("mvccpb.KeyValue", "key", 1, BYTES),
    ("mvccpb.KeyValue", "create_revision", 2, I64),
    ("mvccpb.KeyValue", "mod_revision", 3, I64),
    ("mvccpb.KeyValue", "version", 4, I64),
    ("mvccpb.KeyValue", "value", 5, BYTES),
    ("mvccpb.KeyValue", "lease", 6, I64),
    ("mvccpb.Event", "type", 1, ENUM),
    ("mvccpb.Event", "kv", 2, MSG),
    ("mvccpb.Event", "prev_kv", 3, MSG),
    ("authpb.UserAddOptions", "no_password", 1, BOOL),
    ("authpb.Permission", "permType", 1, ENUM),
    ("authpb.Permission", "key", 2, BYTES),
    ("authpb.Permission", "range_end", 3, BYTES),
]

# (enum full name, {value name: number})
ENUMS: list[tuple[str, dict[str, int]]] = [
    ("etcdserverpb.RangeRequest.SortOrder", {"NONE": 0, "ASCEND": 1, "DESCEND": 2}),
    (
        "etcdserverpb.RangeRequest.SortTarget",
        {"KEY": 0, "VERSION": 1, "CREATE": 2, "MOD": 3, "VALUE": 4},
    ),
    ("etcdserverpb.Compare.CompareResult", {"EQUAL": 0, "GREATER": 1, "LESS": 2, "NOT_EQUAL": 3}),
    (
        "etcdserverpb.Compare.CompareTarget",
        {"VERSION": 0, "CREATE": 1, "MOD": 2, "VALUE": 3, "LEASE": 4},
    ),
    ("etcdserverpb.WatchCreateRequest.FilterType", {"NOPUT": 0, "NODELETE": 1}),
    ("etcdserverpb.AlarmType", {"NONE": 0, "NOSPACE": 1, "CORRUPT": 2}),
    ("etcdserverpb.AlarmRequest.AlarmAction", {"GET": 0, "ACTIVATE": 1, "DEACTIVATE": 2}),
    ("etcdserverpb.DowngradeRequest.DowngradeAction", {"VALIDATE": 0, "ENABLE": 1, "CANCEL": 2}),
    ("mvccpb.Event.EventType", {"PUT": 0, "DELETE": 1}),
    ("authpb.Permission.Type", {"READ": 0, "WRITE": 1, "READWRITE": 2}),
]

FILES = (rpc_pb2.DESCRIPTOR, kv_pb2.DESCRIPTOR, auth_pb2.DESCRIPTOR)


def message_descriptor(full_name: str) -> descriptor.Descriptor:
    return rpc_pb2.DESCRIPTOR.pool.FindMessageTypeByName(full_name)


def test_packages_are_etcds() -> None:
    assert [f.package for f in FILES] == ["etcdserverpb", "mvccpb", "authpb"]


def test_services_and_methods_are_etcds() -> None:
    services = rpc_pb2.DESCRIPTOR.services_by_name.values()
    assert sorted(s.full_name for s in services) == sorted(SERVICES)
    for service in services:
        got = [
            (
                m.name,
                m.input_type.name,
                m.output_type.name,
                m.client_streaming,
                m.server_streaming,
            )
            for m in service.methods
        ]
        assert got == SERVICES[service.full_name], service.full_name
        for m in service.methods:
            assert m.input_type.full_name == f"etcdserverpb.{m.input_type.name}"


class RecordingChannel:
    """Stands in for a grpc.Channel: records the method paths a stub asks for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __getattr__(self, kind: str) -> Any:
        def multicallable(path: str, *args: Any, **kwargs: Any) -> None:
            self.paths.append(path)

        return multicallable


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_grpc_paths_are_etcds(service: str) -> None:
    # The paths a client sends in its HTTP/2 :path header, e.g. /etcdserverpb.KV/Range.
    channel = RecordingChannel()
    getattr(rpc_pb2_grpc, f"{service.removeprefix('etcdserverpb.')}Stub")(channel)
    assert channel.paths == [f"/{service}/{m[0]}" for m in SERVICES[service]]


def test_the_field_table_is_large() -> None:
    assert len(FIELDS) >= 40
    assert len({(m, f) for m, f, _, _ in FIELDS}) == len(FIELDS)


@pytest.mark.parametrize(("message", "field", "number", "type_"), FIELDS)
def test_field_number_and_type_are_etcds(message: str, field: str, number: int, type_: int) -> None:
    fd = message_descriptor(message).fields_by_name.get(field)
    assert fd is not None, f"{message} has no field {field}"
    assert (fd.number, fd.type) == (number, type_)


@pytest.mark.parametrize(("enum", "values"), ENUMS)
def test_enum_values_are_etcds(enum: str, values: dict[str, int]) -> None:
    ed = rpc_pb2.DESCRIPTOR.pool.FindEnumTypeByName(enum)
    assert {v.name: v.number for v in ed.values} == values


def test_oneofs_are_etcds() -> None:
    # A oneof changes nothing on the wire, but which fields share it is API.
    def members(message: str, oneof: str) -> list[str]:
        return [f.name for f in message_descriptor(message).oneofs_by_name[oneof].fields]

    assert members("etcdserverpb.Compare", "target_union") == [
        "version",
        "create_revision",
        "mod_revision",
        "value",
        "lease",
    ]
    assert members("etcdserverpb.RequestOp", "request") == [
        "request_range",
        "request_put",
        "request_delete_range",
        "request_txn",
    ]
    assert members("etcdserverpb.WatchRequest", "request_union") == [
        "create_request",
        "cancel_request",
        "progress_request",
    ]


# (message, wire bytes written by hand, the same message built in Python)
WIRE: list[tuple[str, bytes, Message]] = [
    (
        # key (1, LEN) "a", value (2, LEN) "b", lease (3, varint) 5
        "put",
        b"\x0a\x01a" + b"\x12\x01b" + b"\x18\x05",
        rpc_pb2.PutRequest(key=b"a", value=b"b", lease=5),
    ),
    (
        # key (1) "foo", range_end (2) "fop" (the prefix "fo"+1), limit (3) 10,
        # count_only (9, tag 9<<3 = 0x48) true
        "range",
        b"\x0a\x03foo" + b"\x12\x03fop" + b"\x18\x0a" + b"\x48\x01",
        rpc_pb2.RangeRequest(key=b"foo", range_end=b"fop", limit=10, count_only=True),
    ),
    (
        # target (2) MOD = 2, key (3) "k", mod_revision (6) 300 = varint ac 02,
        # range_end (64, tag 64<<3|2 = 514 = varint 82 04) "l"
        "compare",
        b"\x10\x02" + b"\x1a\x01k" + b"\x30\xac\x02" + b"\x82\x04\x01l",
        rpc_pb2.Compare(target=rpc_pb2.Compare.MOD, key=b"k", mod_revision=300, range_end=b"l"),
    ),
    (
        # create_request (1, LEN 8) { key (1) "a", filters (5, packed) [NODELETE],
        # prev_kv (6) true }
        "watch",
        b"\x0a\x08" + b"\x0a\x01a" + b"\x2a\x01\x01" + b"\x30\x01",
        rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=b"a", filters=[rpc_pb2.WatchCreateRequest.NODELETE], prev_kv=True
            )
        ),
    ),
    (
        # header (1) { revision (3) 7, raft_term (4) 2 }, watch_id (2) 1,
        # events (11, tag 0x5a) { type (1) DELETE, kv (2) { key "a", mod_revision (3) 7 } }
        "watch event",
        b"\x0a\x04\x18\x07\x20\x02"
        + b"\x10\x01"
        + b"\x5a\x09"
        + b"\x08\x01"
        + b"\x12\x05\x0a\x01a\x18\x07",
        rpc_pb2.WatchResponse(
            header=rpc_pb2.ResponseHeader(revision=7, raft_term=2),
            watch_id=1,
            events=[
                kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"a", mod_revision=7))
            ],
        ),
    ),
    (
        # ID (2) 1, TTL (3) -1: a negative int64 is a ten-byte varint
        "lease ttl -1",
        b"\x10\x01" + b"\x18" + b"\xff" * 9 + b"\x01",
        rpc_pb2.LeaseTimeToLiveResponse(ID=1, TTL=-1),
    ),
]


@pytest.mark.parametrize(("wire", "message"), [w[1:] for w in WIRE], ids=[w[0] for w in WIRE])
def test_hand_written_wire_bytes_round_trip(wire: bytes, message: Message) -> None:
    parsed = type(message).FromString(wire)
    assert parsed == message
    assert message.SerializeToString(deterministic=True) == wire


def test_put_request_from_hand_written_bytes_has_the_right_fields() -> None:
    put = rpc_pb2.PutRequest.FromString(b"\x0a\x01a\x12\x01b\x18\x05")
    assert (put.key, put.value, put.lease, put.prev_kv) == (b"a", b"b", 5, False)
