"""What the network-namespace test runs inside its client namespace.

The test process lives in the host's namespace and must not dial the
namespaces' 10.x addresses itself, so everything that talks to the cluster
runs here, as ``ip netns exec <client namespace> python -m
tests.fault.netns_client <command>``, and hands its results back through a
file or stdout:

``ready --router A --groups 1,2``
    Waits (bounded) until the router answers with a leader for every group.
``workload --router A --clients N --seconds S --out FILE``
    N ``AsyncClient`` tasks do put, get, cas and delete on a few keys for S
    seconds (the nemesis' register workload, ``tests.fault.workloads``: a
    write whose outcome is unknown is recorded with ``ret=None``), then the
    history is written to FILE as JSON lines (``write_history``), all at
    once through a rename, so a FILE that exists is complete.
``leaders --nodes A,B,C``
    Prints ``{"group id": "leader address"}`` (JSON) from the nodes' own
    Status answers: for each group, the claim with the highest term. A node
    that does not answer within a second is left out.
``probe --router A``
    Writes a fresh key and reads it back; exit status 0 if both worked.

Times are ``time.monotonic()``, the same clock as the test's (one machine,
one boot), so a fault schedule printed by the test lines up with the history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from router import AsyncClient
from shardkv.v1 import node_pb2, node_pb2_grpc, router_pb2_grpc
from tests.checkers.linearizability import Operation
from tests.fault.workloads import RegisterWorkload
from tests.integration.routers import wait_ready

__all__ = ["main", "read_history", "write_history"]

_STATUS_TIMEOUT = 1.0
_PROBE_TIMEOUT = 10.0


# -- the history file -----------------------------------------------------------------


def _encode(value: object) -> object:
    """Bytes as {"bytes": hex}; bool and None as they are (JSON has them)."""
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(f"cannot record an output of type {type(value).__name__}")


def _decode(value: object) -> object:
    if isinstance(value, dict):
        return bytes.fromhex(value["bytes"])
    return value


def _decode_bytes(value: object) -> bytes | None:
    decoded = _decode(value)
    assert decoded is None or isinstance(decoded, bytes), decoded
    return decoded


def write_history(history: Sequence[Operation], path: Path) -> None:
    """One JSON object per line; written to a temporary file, then renamed into place."""
    lines = [
        json.dumps(
            {
                "client_id": operation.client_id,
                "kind": operation.kind,
                "key": _encode(operation.key),
                "value": _encode(operation.value),
                "expected": _encode(operation.expected),
                "output": _encode(operation.output),
                "call": operation.call,
                "ret": operation.ret,
            }
        )
        for operation in history
    ]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in lines))
    partial.replace(path)


def read_history(path: Path) -> list[Operation]:
    operations = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        key = _decode_bytes(record["key"])
        assert key is not None
        operations.append(
            Operation(
                client_id=record["client_id"],
                kind=record["kind"],
                key=key,
                value=_decode_bytes(record["value"]),
                expected=_decode_bytes(record["expected"]),
                output=_decode(record["output"]),
                call=record["call"],
                ret=record["ret"],
            )
        )
    return operations


# -- commands -------------------------------------------------------------------------


def _ready(router: str, groups: str) -> int:
    with grpc.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
        wait_ready(stub, tuple(int(group) for group in groups.split(",")))
    return 0


async def _workload(router: str, clients: int, seconds: float, out: Path) -> int:
    workload = RegisterWorkload(clients=clients)
    await workload.run([router], seconds, seed=0)
    history = workload.history
    write_history(history, out)
    answered = sum(operation.ret is not None for operation in history)
    print(f"{len(history)} operations, {answered} answered")
    return 0


def _leaders(nodes: str) -> int:
    claims: dict[int, tuple[int, str]] = {}
    for address in nodes.split(","):
        with grpc.insecure_channel(address) as channel:
            stub = node_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]
            try:
                status: node_pb2.StatusResponse = stub.Status(
                    node_pb2.StatusRequest(), timeout=_STATUS_TIMEOUT
                )
            except grpc.RpcError:
                continue
        for group in status.groups:
            if group.role == "leader" and group.term > claims.get(group.group_id, (-1, ""))[0]:
                claims[group.group_id] = (group.term, address)
    print(json.dumps({str(group_id): address for group_id, (_, address) in claims.items()}))
    return 0


async def _probe(router: str) -> int:
    key = f"probe/{os.getpid()}/{time.monotonic_ns()}".encode()
    async with AsyncClient(router, timeout=_PROBE_TIMEOUT) as client:
        await client.put(key, b"after-heal")
        value = await client.get(key)
    if value != b"after-heal":
        print(f"probe read back {value!r}", file=sys.stderr)
        return 1
    print("probe ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault.netns_client")
    commands = parser.add_subparsers(dest="command", required=True)
    ready = commands.add_parser("ready")
    ready.add_argument("--router", required=True)
    ready.add_argument("--groups", required=True)
    workload = commands.add_parser("workload")
    workload.add_argument("--router", required=True)
    workload.add_argument("--clients", type=int, default=8)
    workload.add_argument("--seconds", type=float, required=True)
    workload.add_argument("--out", type=Path, required=True)
    leaders = commands.add_parser("leaders")
    leaders.add_argument("--nodes", required=True)
    probe = commands.add_parser("probe")
    probe.add_argument("--router", required=True)
    arguments = parser.parse_args(argv)
    if arguments.command == "ready":
        return _ready(arguments.router, arguments.groups)
    if arguments.command == "workload":
        return asyncio.run(
            _workload(arguments.router, arguments.clients, arguments.seconds, arguments.out)
        )
    if arguments.command == "leaders":
        return _leaders(arguments.nodes)
    return asyncio.run(_probe(arguments.router))


if __name__ == "__main__":
    sys.exit(main())
