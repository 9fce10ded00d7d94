"""Size limits on what users store, checked at the router and at the node.

A key is at most ``MAX_KEY_BYTES`` and never empty; a value at most
``MAX_VALUE_BYTES``; one command at most ``MAX_OPERATIONS`` operations. The
value limit keeps one Raft entry well inside a transport message (etcd's
default request limit is 1.5 MiB; ours leaves room for batching); the key
limit keeps keys cheap to compare and to carry in every scan page.
``check_command`` raises ``InvalidArgument`` naming the limit and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardkv.errors import InvalidArgument
from shardkv.v1 import kv_pb2

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_OPERATIONS",
    "MAX_VALUE_BYTES",
    "check_command",
    "check_key",
    "check_txn",
    "check_txn_step",
]

MAX_KEY_BYTES = 4 * 1024
MAX_VALUE_BYTES = 1024 * 1024
MAX_OPERATIONS = 10_000


def check_key(key: bytes) -> None:
    if not key:
        raise InvalidArgument("the key is empty; keys must be 1 or more bytes")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidArgument(
            f"the key is {len(key)} bytes; keys may be at most {MAX_KEY_BYTES} bytes"
        )


def _check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidArgument(
            f"the value is {len(value)} bytes; values may be at most {MAX_VALUE_BYTES} bytes: "
            "split it over several keys"
        )


def check_command(command: kv_pb2.Command) -> None:
    if command.client_id and command.acked_seq >= command.seq:
        raise InvalidArgument(
            f"acked_seq {command.acked_seq} is not below seq {command.seq}: a command "
            "cannot be among its client's finished ones"
        )
    if command.HasField("ring"):
        if command.operations or command.puts:
            raise InvalidArgument("a ring command carries no operations")
        return
    if command.HasField("migrate"):
        if command.operations or command.puts or command.client_id:
            raise InvalidArgument("a migration step carries no operations and no session")
        if not command.migrate.WhichOneof("kind"):
            raise InvalidArgument("the migration step names no kind")
        return
    if command.HasField("txn"):
        if command.operations or command.puts:
            raise InvalidArgument("a transaction step carries no other operations")
        check_txn_step(command)
        return
    count = len(command.operations) + len(command.puts)
    if not count:
        raise InvalidArgument("the command has no operations")
    if count > MAX_OPERATIONS:
        raise InvalidArgument(
            f"the command has {count} operations; at most {MAX_OPERATIONS} fit in one: send several"
        )
    for put in command.puts:
        check_key(put.key)
        _check_value(put.value)
    for operation in command.operations:
        kind = operation.WhichOneof("kind")
        if kind == "put":
            check_key(operation.put.key)
            _check_value(operation.put.value)
        elif kind == "delete":
            check_key(operation.delete.key)
        elif kind == "compare_and_set":
            check_key(operation.compare_and_set.key)
            _check_value(operation.compare_and_set.value)
            _check_value(operation.compare_and_set.expected)
        elif kind == "get":
            raise InvalidArgument("a get is an operation of a transaction only")
        else:
            raise InvalidArgument("an operation names no kind (put, delete or compare_and_set)")


def check_txn_step(command: kv_pb2.Command) -> None:
    """A transaction step: a prepare's keys, values and branches within limits."""
    step = command.txn
    kind = step.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument("a transaction step names no kind")
    if kind != "prepare":
        return
    if not command.client_id:
        raise InvalidArgument("a transaction's prepare needs a session (client_id and seq)")
    prepare = step.prepare
    check_txn(prepare.compares, prepare.then_ops, prepare.else_ops)


def check_txn(
    compares: Sequence[kv_pb2.Compare],
    then_ops: Sequence[kv_pb2.Operation],
    else_ops: Sequence[kv_pb2.Operation],
) -> None:
    """A transaction within limits: sizes, operation kinds, and no key written twice in a branch."""
    count = len(compares) + len(then_ops) + len(else_ops)
    if count > MAX_OPERATIONS:
        raise InvalidArgument(
            f"the transaction has {count} compares and operations; at most {MAX_OPERATIONS}"
        )
    for compare in compares:
        check_key(compare.key)
        _check_value(compare.value)
    for name, branch in (("success", then_ops), ("failure", else_ops)):
        written: set[bytes] = set()
        for operation in branch:
            kind = operation.WhichOneof("kind")
            if kind == "put":
                key = operation.put.key
                _check_value(operation.put.value)
            elif kind == "delete":
                key = operation.delete.key
            elif kind == "get":
                check_key(operation.get.key)
                continue
            else:
                raise InvalidArgument(
                    f"a transaction's {name} operations are put, delete and get; "
                    "use compares for conditions"
                )
            check_key(key)
            if key in written:
                raise InvalidArgument(
                    f"the {name} branch writes {key!r} twice; a branch writes a key at most once"
                )
            written.add(key)
