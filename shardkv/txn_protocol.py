"""How anyone finishes a transaction it did not start: the recovery half of 2PC.

Shared by the router (a read or write that meets a lock; the admin commands)
and the node's background resolver, so that both follow exactly one protocol.
It does no I/O of its own: the caller passes ``GroupCalls``, which sends a
command to a group's leader and reads a group's transactions.

A lock names its transaction and the transaction's primary key; the group
that owns the primary key keeps the record (``shardkv.fsm.txn``). To settle a
lock met in group G:

1. Ask the primary for the transaction (``find``).
2. A record: finish the transaction in G as it says.
3. No record, and the lock's deadline has passed: write ABORTED at the
   primary (``TxnDecide`` without commit: it writes only if no record exists,
   so a coordinator's commit that got there first wins, and a late commit
   loses), then finish in G as the record now says.
4. No record before the deadline. If the client's session floor at the
   primary is below the transaction's seq, no record was ever written (a
   record is forgotten only once the floor passed its seq): the transaction
   is ``RUNNING``, and the value under the lock, which is the one before it,
   was current when the primary answered. A reader may return it. With the
   floor past the seq (the client gave up on it, or the record came and
   went) it is ``UNDECIDED``: look again.

``finish_everywhere`` drives a decided transaction to the end: every
participant finished, then the record marked forgettable.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from shardkv.v1 import kv_pb2, node_pb2

__all__ = [
    "GroupCalls",
    "Settled",
    "decide_command",
    "expired",
    "finish_command",
    "finish_everywhere",
    "forget_command",
    "now_ms",
    "operation_key",
    "settle_lock",
    "step_keys",
    "txn_name",
]


class GroupCalls(Protocol):
    def group_for(self, key: bytes) -> int:
        """The group that owns ``key`` in the caller's ring."""
        ...

    async def propose(self, group_id: int, command: kv_pb2.Command) -> kv_pb2.CommandResult:
        """Apply ``command`` in the group (through its leader); raise when it cannot."""
        ...

    async def find(
        self, group_id: int, txn: kv_pb2.TxnRef, key: bytes = b""
    ) -> node_pb2.ListTxnsResponse:
        """The transaction's prepare and record in the group (linearizable read).

        With ``key`` (the primary key), a group that does not keep that key's
        records (it moved) refuses rather than answer "no record"."""
        ...


class Settled(enum.Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"
    # No record, and none was ever written (the client's session floor at the
    # primary is below the seq): the value under the lock is current as of
    # the primary's answer.
    RUNNING = "running"
    # No record now, but one may have come and gone: look again.
    UNDECIDED = "undecided"


def now_ms() -> int:
    return int(time.time() * 1000)


def expired(lock: kv_pb2.LockInfo, now: int | None = None) -> bool:
    return (now if now is not None else now_ms()) > lock.deadline_ms


def txn_name(txn: kv_pb2.TxnRef) -> str:
    """How people and the CLI name a transaction: ``client_id:seq``, the client id in hex."""
    return f"{txn.client_id:x}:{txn.seq}"


def operation_key(operation: kv_pb2.Operation) -> bytes:
    kind = operation.WhichOneof("kind")
    if kind is None:
        raise ValueError("an operation names no kind")
    key: bytes = getattr(operation, kind).key
    return key


def step_keys(prepare: kv_pb2.TxnPrepare) -> list[bytes]:
    """Every key a prepare touches (compared, read or written), each once, in order."""
    found: dict[bytes, None] = {}
    for compare in prepare.compares:
        found[compare.key] = None
    for operation in (*prepare.then_ops, *prepare.else_ops):
        found[operation_key(operation)] = None
    return list(found)


def finish_command(record: kv_pb2.TxnRecord) -> kv_pb2.Command:
    return kv_pb2.Command(
        txn=kv_pb2.TxnStep(
            finish=kv_pb2.TxnFinish(
                txn=record.txn,
                commit=record.state == kv_pb2.TXN_COMMITTED,
                then_branch=record.then_branch,
            )
        )
    )


def forget_command(txn: kv_pb2.TxnRef) -> kv_pb2.Command:
    return kv_pb2.Command(txn=kv_pb2.TxnStep(forget=kv_pb2.TxnForget(txn=txn)))


def decide_command(
    txn: kv_pb2.TxnRef, commit: bool, then_branch: bool, primary_key: bytes
) -> kv_pb2.Command:
    """The decision at the primary; the group refuses it unless it keeps ``primary_key``."""
    return kv_pb2.Command(
        txn=kv_pb2.TxnStep(
            decide=kv_pb2.TxnDecide(
                txn=txn, commit=commit, then_branch=then_branch, primary_key=primary_key
            )
        )
    )


async def settle_lock(
    calls: GroupCalls,
    group_id: int,
    lock: kv_pb2.LockInfo,
    *,
    after_record: Callable[[], None] | None = None,
) -> Settled:
    """Settle ``lock``, met in ``group_id``, as the module docstring says.

    ``after_record``, if given, is called once the record at the primary is
    known (found, or just written ABORTED) and before ``group_id`` is
    finished: the node's resolver puts its failpoint there.
    """
    primary = calls.group_for(lock.primary_key)
    found = await calls.find(primary, lock.txn, lock.primary_key)
    record = found.records[0] if found.records else None
    if record is None:
        if not expired(lock):
            return Settled.RUNNING if found.session_floor < lock.txn.seq else Settled.UNDECIDED
        abort = decide_command(lock.txn, False, False, lock.primary_key)
        decided = await calls.propose(primary, abort)
        record = decided.txn.record
    if after_record is not None:
        after_record()
    if group_id != primary:
        # (At the primary, deciding finished its own part in the same entry.)
        await calls.propose(group_id, finish_command(record))
    return Settled.COMMITTED if record.state == kv_pb2.TXN_COMMITTED else Settled.ABORTED


async def finish_everywhere(
    calls: GroupCalls,
    record: kv_pb2.TxnRecord,
    primary: int,
    groups: Iterable[int] | None = None,
    *,
    after_first: Callable[[], None] | None = None,
) -> None:
    """Finish every participant of a decided transaction, then let its record go.

    The participants are ``groups`` when the caller knows them (a coordinator:
    an ABORTED record may name none), otherwise the record's participant keys'
    groups. ``after_first``, if given, is called once the first of them
    finished: the coordinator puts its failpoint there.
    """
    if groups is None:
        groups = {calls.group_for(key) for key in record.participant_keys}
    others = sorted(set(groups) - {primary})
    finish = finish_command(record)
    for count, done in enumerate(
        asyncio.as_completed([calls.propose(group_id, finish) for group_id in others])
    ):
        await done
        if count == 0 and after_first is not None:
            after_first()
    await calls.propose(primary, forget_command(record.txn))
