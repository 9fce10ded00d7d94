"""Bad input: every public RPC of the router and the node, fuzzed; garbage bytes on their ports.

One cluster (3 nodes, 2 groups) and one router serve the whole module. Each
RPC of ``shardkv.v1.Router`` and ``shardkv.v1.Node`` (the node's are public
to admin tools too) is called through a generic channel method with raw
bytes, so any input can be sent:

1. random bytes, and the empty message;
2. valid messages drawn from strategies built from the message descriptors:
   random field values, bytes and strings at and over ``shardkv.limits``,
   huge integers, unknown enum values, nested and over-long repeated fields;
3. truncated and bit-flipped encodings of such messages.

Every answer must be OK, or a status other than UNKNOWN and INTERNAL (an
exception a servicer did not handle) and DEADLINE_EXCEEDED (a wedge: every
call has a deadline), with details that say what went wrong. After each
call every process is still running; after each test a put and a get
through the router still work.

Admin calls with valid content would really change the cluster, so their
drawn content is tamed (``_tame``): changes are dry runs or name groups and
nodes that do not exist, joins name another cluster, node writes carry no
migration steps. Random bytes and mutated encodings are sent as they are.

Garbage on the ports: raw TCP connections to every node and the router send
random bytes, an HTTP/1.1 request, a cut HTTP/2 preface, a valid preface
followed by broken frames, 50 connections dropped at once, and a slowloris
that sends one byte and hangs while the port keeps serving others.

Hypothesis runs derandomized (the same examples on every run, no example
database), so a failure in CI reproduces locally.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.client import Client
from shardkv.limits import MAX_KEY_BYTES, MAX_OPERATIONS, MAX_VALUE_BYTES
from shardkv.node.cluster import CLUSTER_MAP_KEY
from shardkv.v1 import kv_pb2, node_pb2, router_pb2
from tests.integration.conftest import Cluster, Settings, wait_until
from tests.integration.routers import RouterProcess

pytestmark = [pytest.mark.fault, pytest.mark.integration]

# Every call's deadline: a malformed request answered later than this wedged its server.
DEADLINE = 5.0
# Streams that never end by design, and the messages read of one before it is cancelled.
ENDLESS = frozenset({"/shardkv.v1.Node/Watch"})
STREAM_MESSAGES = 3
# How long the cluster may take to serve a put and a get after a test.
RECOVERY = 10.0
SETTINGS = Settings(nodes=3, groups=2, cluster_id="fuzz")
# The groups of the cluster (the meta group and the data groups), and ids that none has.
GROUPS = (0, *range(1, SETTINGS.groups + 1))
NODES = tuple(range(1, SETTINGS.nodes + 1))
NONEXISTENT = 1000
# Codes that mean a servicer raised what it did not handle, or never answered.
BAD_CODES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED)

# Examples per RPC and kind of input; more for a longer hunt (the run stays reproducible).
EXAMPLES = int(os.environ.get("SHARDKV_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- the RPCs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    service: str  # "Router" or "Node"
    name: str
    path: str
    request: Descriptor
    streaming: bool  # server streaming (Export)

    def __str__(self) -> str:
        return f"{self.service}.{self.name}"


def _rpcs() -> list[Rpc]:
    rpcs = []
    for file, service_name in ((router_pb2, "Router"), (node_pb2, "Node")):
        service = file.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            assert not method.client_streaming, "the fuzzer sends one request message"
            rpcs.append(
                Rpc(
                    service=service_name,
                    name=method.name,
                    path=f"/{service.full_name}/{method.name}",
                    request=method.input_type,
                    streaming=method.server_streaming,
                )
            )
    return rpcs


RPCS = _rpcs()
RPC_BY_NAME = {str(rpc): rpc for rpc in RPCS}


# -- messages drawn from descriptors -------------------------------------------------------

# Sizes that sit at and just over the limits users meet.
_EDGE_SIZES = (MAX_KEY_BYTES, MAX_KEY_BYTES + 1, MAX_VALUE_BYTES + 1)
_MAX_DEPTH = 3
_UINT64 = 2**64 - 1
_UINT32 = 2**32 - 1


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Small ids (the cluster's groups and nodes), the edges, and anything in range."""
    edges = [
        value
        for value in (low, -1, 0, 1, 2, 3, high - 1, high, 2**31, 2**63)
        if low <= value <= high
    ]
    return st.one_of(st.integers(0, 4), st.sampled_from(edges), st.integers(low, high))


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_UINT64: _integers(0, _UINT64),
    FieldDescriptor.TYPE_FIXED64: _integers(0, _UINT64),
    FieldDescriptor.TYPE_UINT32: _integers(0, _UINT32),
    FieldDescriptor.TYPE_FIXED32: _integers(0, _UINT32),
    FieldDescriptor.TYPE_INT64: _integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: _integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: _integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_INT32: _integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: _integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: _integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
}


def _bytes(huge: bool) -> st.SearchStrategy[bytes]:
    small = st.binary(max_size=24)
    if not huge:
        return small
    return st.one_of(small, small, st.sampled_from(_EDGE_SIZES).map(lambda size: b"k" * size))


def _text(huge: bool) -> st.SearchStrategy[str]:
    small = st.text(max_size=16)
    if not huge:
        return small
    return st.one_of(small, small, st.sampled_from(_EDGE_SIZES).map(lambda size: "\u00e9" * size))


def _enum(field: FieldDescriptor) -> st.SearchStrategy[int]:
    assert field.enum_type is not None
    known = [value.number for value in field.enum_type.values]
    # proto3 enums are open: any int32 travels, and a server must cope with one it does not know.
    return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _value(field: FieldDescriptor, depth: int, huge: bool) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return messages(field.message_type, depth + 1, huge=huge and depth < 1)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes(huge)
    if field.type == FieldDescriptor.TYPE_STRING:
        return _text(huge)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum(field)
    return _SCALARS[field.type]


def _repeated(field: FieldDescriptor, depth: int, huge: bool) -> st.SearchStrategy[list[Any]]:
    short = st.lists(_value(field, depth, huge), max_size=3)
    if depth > 0:
        return short
    # One small item repeated past the per-call limit: refused, never served.
    long = _value(field, _MAX_DEPTH, huge=False).map(lambda item: [item] * (MAX_OPERATIONS + 1))
    return st.one_of(short, short, short, long)


def messages(
    descriptor: Descriptor, depth: int = 0, huge: bool = True
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor`` with any subset of fields set to drawn values.

    Below ``_MAX_DEPTH`` levels messages are empty; only the top levels get
    huge bytes and over-long repeated fields, so one message stays a few MiB.
    Map fields are left out (no request has one).
    """
    message_class = GetMessageClass(descriptor)
    if depth >= _MAX_DEPTH:
        return st.just(message_class())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if _is_map(field):
            continue
        if field.is_repeated:
            optional[field.name] = _repeated(field, depth, huge)
        else:
            optional[field.name] = _value(field, depth, huge)

    def build(values: dict[str, Any]) -> Message:
        message = message_class()
        for name, value in values.items():
            target = getattr(message, name)
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                target.extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


# -- taming admin calls ----------------------------------------------------------------------


def _missing(number: int) -> int:
    """An id no group or node of the cluster has."""
    return NONEXISTENT + number % NONEXISTENT


def _tame(rpc: Rpc, message: Any, strict: bool) -> None:
    """Keep a drawn admin request from changing the cluster (see the module docstring).

    ``strict`` for requests about to be mutated: a flipped bit may turn a dry
    run into a real one, so they name missing groups and nodes even then, in
    a way one flipped bit cannot undo.
    """
    real = strict or not getattr(message, "dry_run", True)
    if rpc.name == "ChangeRing" and real:
        change = message.WhichOneof("change")
        if change == "add_group":
            message.add_group.group_id = 1  # exists
            message.add_group.nodes[:] = [_missing(node) for node in (1, 2, 3)]  # not members
        elif change == "remove_group":
            message.remove_group = _missing(message.remove_group)
        elif change == "set_weight":
            message.set_weight.group_id = _missing(message.set_weight.group_id)
    elif rpc.name == "ChangePlacement" and real:
        change = message.WhichOneof("change")
        if change == "move_replica":
            message.move_replica.group_id = _missing(message.move_replica.group_id)
        elif change == "remove_node":
            message.remove_node = _missing(message.remove_node)
        elif change == "transfer_leader":
            message.transfer_leader.group_id = _missing(message.transfer_leader.group_id)
        elif change == "rebalance":
            # Deliberately swaps the oneof: a rebalance could really move replicas,
            # a leader transfer of a missing group changes nothing.
            message.transfer_leader.group_id = _missing(0)
    elif rpc.name == "Reconfigure" and message.group_id in GROUPS:
        if strict:
            message.group_id = _missing(message.group_id)
        elif message.kind == node_pb2.RECONFIGURE_ADD_LEARNER:
            message.node_id = NODES[message.node_id % len(NODES)]  # a voter already: no change
        else:
            message.node_id = _missing(message.node_id)  # no member: nothing to remove or promote
    elif rpc.name == "Join" and message.cluster_id == SETTINGS.cluster_id:
        message.cluster_id += "-other"
    elif rpc.name == "Write" and message.group_id in GROUPS:
        message.command.ClearField("migrate")
    elif rpc.name == "WriteBatch" and message.group_id in GROUPS:
        for command in message.commands:
            command.ClearField("migrate")


def requests(rpc: Rpc, huge: bool = True, strict: bool = False) -> st.SearchStrategy[bytes]:
    """Valid encodings of ``rpc``'s request, tamed."""

    def encode(message: Message) -> bytes:
        _tame(rpc, message, strict)
        return message.SerializeToString()

    return messages(rpc.request, huge=huge).map(encode)


@st.composite
def _mutated(draw: st.DrawFn, encoded: bytes) -> bytes:
    if not encoded:
        return draw(st.binary(min_size=1, max_size=8))
    position = draw(st.integers(0, len(encoded) - 1))
    how = draw(st.sampled_from(["truncate", "flip", "insert", "length"]))
    if how == "truncate":
        return encoded[:position]
    if how == "flip":
        bit = 1 << draw(st.integers(0, 7))
        return encoded[:position] + bytes([encoded[position] ^ bit]) + encoded[position + 1 :]
    if how == "insert":
        return encoded[:position] + draw(st.binary(min_size=1, max_size=8)) + encoded[position:]
    # A length-delimited field that claims far more bytes than follow.
    return encoded[:position] + b"\x0a\xff\xff\xff\xff\x0f" + encoded[position:]


def mutated(rpc: Rpc) -> st.SearchStrategy[bytes]:
    """Truncated, bit-flipped, spliced encodings of valid requests of ``rpc``."""
    return requests(rpc, huge=False, strict=True).flatmap(_mutated)


# -- the cluster -----------------------------------------------------------------------------


class Fuzzed:
    """The module's cluster and router, and raw channels to each of them."""

    def __init__(self, cluster: Cluster, router: RouterProcess, client: Client) -> None:
        self.cluster = cluster
        self.router = router
        self.client = client
        self._channels: dict[str, grpc.Channel] = {}
        self._checks = itertools.count(1)

    def address(self, rpc: Rpc, node_id: int) -> str:
        return self.router.address if rpc.service == "Router" else self.cluster.addresses[node_id]

    def channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            # Unbounded on our side: only the server's limits are under test.
            channel = grpc.insecure_channel(
                address,
                options=[
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.max_send_message_length", -1),
                ],
            )
            self._channels[address] = channel
        return channel

    def call(self, rpc: Rpc, node_id: int, data: bytes) -> tuple[grpc.StatusCode, str]:
        """Send ``data`` as the request of ``rpc``; the status and details of the answer."""
        channel = self.channel(self.address(rpc, node_id))
        try:
            if rpc.streaming:
                # Read to the end; a stream that never ends by design (a watch)
                # answered once it sent a few messages: it is cancelled then.
                responses = channel.unary_stream(rpc.path, None, None)(data, timeout=DEADLINE)
                for count, _ in enumerate(responses, start=1):
                    if rpc.path in ENDLESS and count >= STREAM_MESSAGES:
                        responses.cancel()  # type: ignore[no-untyped-call]
                        break
            else:
                channel.unary_unary(rpc.path, None, None)(data, timeout=DEADLINE)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            details: str = error.details() or ""
            return code, details
        return grpc.StatusCode.OK, ""

    def dead(self) -> list[str]:
        """Processes that are no longer running, with their exit status."""
        dead = [
            f"node {node_id} (exit {process.returncode})"
            for node_id, process in self.cluster.processes.items()
            if process.poll() is not None
        ]
        if not self.router.alive():
            dead.append("the router")
        return dead

    def check(self, rpc: Rpc, node_id: int, data: bytes) -> None:
        """Call, and fail with the input unless the answer is a clear one and all still run."""
        code, details = self.call(rpc, node_id, data)
        where = f"{rpc} at {self.address(rpc, node_id)}"
        shown = data[:200] + (b"..." if len(data) > 200 else b"")
        assert code not in BAD_CODES, (
            f"{where} answered {code.name}: {details!r}\ninput ({len(data)} bytes): {shown!r}"
        )
        assert code == grpc.StatusCode.OK or details, (
            f"{where} answered {code.name} with no details\ninput: {shown!r}"
        )
        dead = self.dead()
        assert not dead, f"after {where} with {shown!r}: {', '.join(dead)} stopped"

    def assert_serving(self) -> None:
        """All run, every node answers Status, a put and a get through the router work."""
        dead = self.dead()
        assert not dead, f"{', '.join(dead)} stopped"
        for node_id in NODES:
            status = functools.partial(self.cluster.status, node_id)
            wait_until(f"node {node_id} to answer Status", status, RECOVERY)
        key = f"fuzz-alive/{next(self._checks)}/{random.getrandbits(64):016x}"
        value = f"value of {key}".encode()
        self.client.put(key, value, timeout=RECOVERY)
        assert self.client.get(key, timeout=RECOVERY) == value

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    cluster = Cluster(tmp_path_factory.mktemp("fuzz"), SETTINGS)
    router = RouterProcess(cluster, "router-1")
    client: Client | None = None
    fuzz: Fuzzed | None = None
    try:
        cluster.start_all()
        router.start()
        client = Client(router.address, timeout=RECOVERY)
        fuzz = Fuzzed(cluster, router, client)
        yield fuzz
    finally:
        if fuzz is not None:
            fuzz.close()
        if client is not None:
            client.close()
        router.close()
        cluster.close()


@pytest.fixture
def serving(fuzzed: Fuzzed) -> Iterator[Fuzzed]:
    """The cluster, checked to still serve after the test."""
    yield fuzzed
    fuzzed.assert_serving()


_NODE_IDS = st.sampled_from(NODES)
_BY_RPC = pytest.mark.parametrize("rpc", RPCS, ids=str)


# -- 1. every RPC ----------------------------------------------------------------------------


@_BY_RPC
@FUZZ
@given(data=st.binary(max_size=512), node_id=_NODE_IDS)
@example(data=b"", node_id=1)
@example(data=b"\x00", node_id=2)
@example(data=b"\xff" * 16, node_id=3)
def test_random_bytes(serving: Fuzzed, rpc: Rpc, data: bytes, node_id: int) -> None:
    serving.check(rpc, node_id, data)


@_BY_RPC
@FUZZ
@given(draw=st.data(), node_id=_NODE_IDS)
def test_drawn_messages(serving: Fuzzed, rpc: Rpc, draw: st.DataObject, node_id: int) -> None:
    data = draw.draw(requests(rpc), label=f"{rpc.request.name} (encoded)")
    serving.check(rpc, node_id, data)


@_BY_RPC
@FUZZ
@given(draw=st.data(), node_id=_NODE_IDS)
def test_mutated_encodings(serving: Fuzzed, rpc: Rpc, draw: st.DataObject, node_id: int) -> None:
    data = draw.draw(mutated(rpc), label=f"{rpc.request.name} (mutated)")
    serving.check(rpc, node_id, data)


# Hard cases written out: edges the strategies reach only by luck, checked on every run.
_U64 = _UINT64
_PUT = kv_pb2.Operation(put=kv_pb2.Put(key=b"edge", value=b"v"))
_FAR = kv_pb2.TxnRef(client_id=_U64, seq=_U64)
EDGE_REQUESTS: list[tuple[str, Message]] = [
    ("Router.Txn", router_pb2.TxnRequest(started_ms=_U64, success=[_PUT])),
    (
        "Router.Put",
        router_pb2.PutRequest(
            key=b"edge", session=router_pb2.Session(client_id=_U64, seq=_U64, acked_seq=_U64 - 1)
        ),
    ),
    ("Router.ScanKeys", router_pb2.ScanKeysRequest(prefix=b"\xff\xff")),
    ("Router.ScanKeys", router_pb2.ScanKeysRequest(start=b"z", end=b"a")),
    ("Router.ScanKeys", router_pb2.ScanKeysRequest(start=b"z", end=b"a", continuation=b"m")),
    (
        "Router.ScanKeys",
        router_pb2.ScanKeysRequest(prefix=b"a", continuation=b"k" * (MAX_KEY_BYTES + 1)),
    ),
    ("Router.ShowTxn", router_pb2.ShowTxnRequest(txn=_FAR)),
    ("Router.ResolveTxn", router_pb2.ResolveTxnRequest(txn=_FAR, commit=True)),
    (
        "Router.ChangeRing",
        node_pb2.ChangeRingRequest(
            dry_run=True,
            add_group=node_pb2.AddGroup(group_id=_U64, weight=_UINT32, nodes=[_U64, 0, 0]),
        ),
    ),
    (
        "Router.ChangeRing",
        node_pb2.ChangeRingRequest(
            dry_run=True, set_weight=node_pb2.SetWeight(group_id=0, weight=3)
        ),
    ),
    (
        "Router.ChangePlacement",
        node_pb2.ChangePlacementRequest(
            dry_run=True, move_replica=node_pb2.MoveReplica(group_id=1, from_node=1, to_node=_U64)
        ),
    ),
    ("Router.ChangePlacement", node_pb2.ChangePlacementRequest(dry_run=True, remove_node=1)),
    ("Node.ListTxns", node_pb2.ListTxnsRequest(group_id=1, key=b"k" * (MAX_KEY_BYTES + 1))),
    ("Node.Scan", node_pb2.ScanRequest(group_id=1, epoch=_U64, groups=[_U64])),
    (
        "Node.Export",
        node_pb2.ExportRequest(group_id=1, epoch=_U64, target=_U64, chunk_keys=_UINT32),
    ),
    (
        "Node.Reconfigure",
        node_pb2.ReconfigureRequest(
            group_id=1, kind=cast("node_pb2.ReconfigureKind", 7), node_id=1
        ),
    ),
    (
        "Node.Write",
        node_pb2.WriteRequest(group_id=1, command=kv_pb2.Command(epoch=_U64, operations=[_PUT])),
    ),
    (
        "Node.Write",
        node_pb2.WriteRequest(
            group_id=1,
            command=kv_pb2.Command(
                client_id=_U64,
                seq=_U64,
                txn=kv_pb2.TxnStep(decide=kv_pb2.TxnDecide(txn=_FAR, commit=True)),
            ),
        ),
    ),
    (
        "Node.WriteBatch",
        node_pb2.WriteBatchRequest(
            group_id=1, commands=[kv_pb2.Command(client_id=_U64, seq=1, operations=[_PUT])] * 3
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "request_message"),
    EDGE_REQUESTS,
    ids=[f"{name}-{index}" for index, (name, _) in enumerate(EDGE_REQUESTS)],
)
def test_edge_requests(serving: Fuzzed, name: str, request_message: Message) -> None:
    for node_id in NODES:
        serving.check(RPC_BY_NAME[name], node_id, request_message.SerializeToString())


def test_the_cluster_map_cannot_be_overwritten(serving: Fuzzed) -> None:
    """Found by this fuzzer: a Write to the meta group replaced the map with garbage."""
    garbage = kv_pb2.Command(
        operations=[kv_pb2.Operation(put=kv_pb2.Put(key=CLUSTER_MAP_KEY, value=b"\xff\xff"))]
    )
    writes = {
        "Node.Write": node_pb2.WriteRequest(group_id=0, command=garbage),
        "Node.WriteBatch": node_pb2.WriteBatchRequest(group_id=0, commands=[garbage]),
    }
    for name, write in writes.items():
        for node_id in NODES:
            code, details = serving.call(RPC_BY_NAME[name], node_id, write.SerializeToString())
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {code.name} {details}"
    # Admin calls still read the map.
    plan = node_pb2.ChangeRingRequest(
        dry_run=True, set_weight=node_pb2.SetWeight(group_id=1, weight=2)
    )
    change_ring = RPC_BY_NAME["Router.ChangeRing"]
    assert serving.call(change_ring, 1, plan.SerializeToString())[0] == grpc.StatusCode.OK


@pytest.mark.parametrize("rpc", [rpc for rpc in RPCS if rpc.service == "Node"], ids=str)
def test_the_node_refuses_undecodable_requests(serving: Fuzzed, rpc: Rpc) -> None:
    code, details = serving.call(rpc, 1, b"\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details}"


# -- 2. garbage on the ports -----------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# How long a raw connection waits for the server to answer or close.
SOCKET_WAIT = 1.0


def _frame(
    kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None
) -> bytes:
    """One HTTP/2 frame; ``length`` may lie about the payload's size."""
    size = len(payload) if length is None else length
    return (
        struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload
    )


# Frames a server must refuse without falling over (RFC 9113 section numbers).
BROKEN_FRAMES = {
    "settings with a ragged length (6.5)": _frame(4, 0, 0, b"\x00\x01\x00"),
    "settings on a stream (6.5)": _frame(4, 0, 1, b""),
    "data on stream 0 (6.1)": _frame(0, 0, 0, b"data"),
    "headers with a garbage block (6.2)": _frame(1, 4, 1, b"\xff\xfe\xfd\xfc" * 8),
    "continuation without headers (6.10)": _frame(9, 4, 3, b"\x82"),
    "window update of 0 (6.9)": _frame(8, 0, 0, b"\x00\x00\x00\x00"),
    "window overflow (6.9.1)": _frame(8, 0, 0, b"\x7f\xff\xff\xff") * 2,
    "rst on an idle stream (6.4)": _frame(3, 0, 7, b"\x00\x00\x00\x08"),
    "ping of the wrong size (6.7)": _frame(6, 0, 0, b"\x00"),
    "a frame longer than it says (4.2)": _frame(0, 0, 1, b"x" * 64, length=(1 << 24) - 1),
    "an unknown frame type (5.5)": _frame(0xEE, 0xFF, 1, b"extension"),
    "goaway with garbage (6.8)": _frame(7, 0, 0, b"\x00"),
    "a ping flood": _frame(6, 0, 0, b"\x00" * 8) * 2000,
    "priority on stream 0 (6.3)": _frame(2, 0, 0, b"\x00\x00\x00\x00\x10"),
}


def _addresses(fuzzed: Fuzzed) -> list[tuple[str, int]]:
    addresses = [*fuzzed.cluster.addresses.values(), fuzzed.router.address]
    return [(host, int(port)) for host, port in (address.rsplit(":", 1) for address in addresses)]


def _send_all(fuzzed: Fuzzed, payloads: list[bytes]) -> None:
    """Each payload on a connection of its own to every port, all at once.

    Then read what comes back until every server closed its connections or
    ``SOCKET_WAIT`` passed: a server may wait for the rest of a cut message,
    and then we close. A reset is as good an answer as any.
    """
    connections: list[socket.socket] = []
    try:
        for address in _addresses(fuzzed):
            for payload in payloads:
                connection = socket.create_connection(address, timeout=SOCKET_WAIT)
                connections.append(connection)
                try:
                    connection.sendall(payload)
                except OSError:
                    continue
                connection.setblocking(False)
        _drain(connections)
    finally:
        for connection in connections:
            connection.close()


def _drain(connections: list[socket.socket]) -> None:
    with selectors.DefaultSelector() as selector:
        for connection in connections:
            selector.register(connection, selectors.EVENT_READ)
        deadline = time.monotonic() + SOCKET_WAIT
        while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    if ready.recv(65536):
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                selector.unregister(ready)


def test_random_bytes_on_ports(serving: Fuzzed) -> None:
    rng = random.Random(7)
    sizes = (1, 23, 24, 25, 1000, 70_000)
    _send_all(serving, [rng.randbytes(size) for size in sizes] + [PREFACE + rng.randbytes(100)])


def test_http1_and_cut_prefaces(serving: Fuzzed) -> None:
    http1 = b"GET / HTTP/1.1\r\nHost: shardkv\r\nConnection: close\r\n\r\n"
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: shardkv\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    _send_all(serving, [http1, upgrade, b"\r\n" * 1000, PREFACE[:10], PREFACE[:-1], PREFACE])


def test_broken_frames_after_a_valid_preface(serving: Fuzzed) -> None:
    empty_settings = _frame(4, 0, 0, b"")
    _send_all(serving, [PREFACE + empty_settings + frame for frame in BROKEN_FRAMES.values()])


def test_many_connections_dropped_at_once(serving: Fuzzed) -> None:
    connections: list[socket.socket] = []
    try:
        for address in _addresses(serving):
            for index in range(50):
                connection = socket.create_connection(address, timeout=SOCKET_WAIT)
                connections.append(connection)
                if index % 3 == 0:
                    connection.sendall(PREFACE[: index % len(PREFACE)])
                elif index % 3 == 1:
                    # Closed with a reset (RST) instead of a FIN.
                    linger = struct.pack("ii", 1, 0)
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    finally:
        for connection in connections:
            connection.close()


def test_slowloris_does_not_block_others(serving: Fuzzed) -> None:
    hanging: list[socket.socket] = []
    try:
        for address in _addresses(serving):
            connection = socket.create_connection(address, timeout=SOCKET_WAIT)
            hanging.append(connection)
            connection.sendall(PREFACE[:1])
        # While they hang, the same ports serve everyone else.
        serving.assert_serving()
        time.sleep(1.0)
        for connection in hanging:
            connection.sendall(PREFACE[1:2])
        serving.assert_serving()
    finally:
        for connection in hanging:
            connection.close()
