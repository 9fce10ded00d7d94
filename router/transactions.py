"""Transactions for the client: compares, operations, results, interactive transactions.

Two ways to run a transaction, as etcd and TiKV users know them:

1. **One request** (etcd's Txn): ``client.txn(compares, then_ops, else_ops)``.
   If every compare holds, the ``then_ops`` run, otherwise the ``else_ops``;
   atomically across shards. The builders here make the pieces::

       from router import Client
       from router.transactions import absent, get, mod_revision, put, value

       with Client("127.0.0.1:7000") as client:
           result = client.txn(
               [value("config/mode") == b"blue", absent("config/lock")],
               [put("config/mode", b"green"), get("config/epoch")],
               [get("config/mode")],
           )
           if not result.succeeded:
               print("mode is", result.results[0].value)  # a GetResult

   Compares: ``value(key)``, ``version(key)``, ``create_revision(key)`` and
   ``mod_revision(key)`` against bytes (value) or an int, with ``==``,
   ``!=``, ``<`` and ``>``; ``exists(key)`` and ``absent(key)`` are
   ``version(key) > 0`` and ``version(key) == 0``. An absent key has
   version and revisions 0 and no value: a value compare on it is false
   whatever the operator. Operations: ``put(key, value)``, ``delete(key)``,
   ``get(key)`` (a get reads the key as it was before the transaction).

2. **Interactive, optimistic** (TiKV's optimistic transactions)::

       with client.transaction() as t:          # commits at the end of the block
           balance = int(t.get("alice") or 0)
           t.put("alice", str(balance - 10))
           t.put("bob", b"...")

       @client.transaction(retries=5)            # re-run on conflict, up to 5 more times
       def transfer(t, source, target, amount): ...

       transfer("alice", "bob", 10)

   ``t.get`` reads through the client (linearizable) and remembers the key's
   ``mod_revision`` (0 when absent); a second read of the key answers the
   same value without asking again, and a key the transaction wrote reads as
   written. ``t.put`` and ``t.delete`` only stage. ``commit()`` sends ONE
   Txn: the compares are ``mod_revision(key) == seen`` for every key read,
   the then-branch is the staged writes, the else-branch empty. If a
   compare fails (someone wrote a key after it was read),
   ``TransactionConflict`` is raised and nothing is applied. A read-only
   transaction commits too: that is what checks its reads were consistent.
   The asyncio face is the same with ``async with aclient.transaction() as
   t`` and ``await t.get(...)``; the decorator takes ``async def``.

Keys and values are bytes; ``str`` is encoded as UTF-8, and an empty key
raises ``InvalidArgument`` (the client's rules, made here for both).

Results: ``TxnResult(succeeded, results)``, one result per operation of the
branch that ran, in order: ``GetResult`` (``kv``: the key read, or None),
``PutResult`` (``previous``: the key before the put, or None),
``DeleteResult`` (``deleted``: the key existed; ``previous``).

Transactions are named ``hexclient:seq`` (the client id in hex, the seq of
the request); ``parse_txn_id`` reads that name for the admin calls.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

import grpc

from router.errors import ClusterError, InvalidArgument, TransactionConflict
from shardkv.v1 import kv_pb2, router_pb2

if TYPE_CHECKING:
    from router.client import AsyncClient, Client

__all__ = [
    "AsyncTransaction",
    "AsyncTransactionScope",
    "CompareTarget",
    "DeleteResult",
    "GetResult",
    "KeyValue",
    "OpResult",
    "PutResult",
    "Transaction",
    "TransactionScope",
    "TxnResult",
    "absent",
    "create_revision",
    "delete",
    "exists",
    "get",
    "mod_revision",
    "parse_txn_id",
    "put",
    "value",
    "version",
]

Key = bytes | str

_P = ParamSpec("_P")
_R = TypeVar("_R")
_C = TypeVar("_C")
_T = TypeVar("_T")


# -- what users pass in -------------------------------------------------------------


def _to_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def _key(key: object) -> bytes:
    encoded = _to_bytes(key, "a key")
    if not encoded:
        details = "the key is empty; keys must be 1 or more bytes"
        raise InvalidArgument(details, grpc.StatusCode.INVALID_ARGUMENT, details)
    return encoded


# -- compares ---------------------------------------------------------------------------


class CompareTarget:
    """One key's value, version or revision, to compare: ``version(key) == 0``.

    The operators ``==``, ``!=``, ``<`` and ``>`` make a ``kv_pb2.Compare``
    (not a bool). A value compares with bytes or str (bytewise), the others
    with an int >= 0.
    """

    __slots__ = ("key", "target")

    def __init__(self, key: Key, target: kv_pb2.Compare.Target) -> None:
        self.key = _key(key)
        self.target = target

    def __eq__(self, other: object) -> kv_pb2.Compare:  # type: ignore[override]
        return self._compare(kv_pb2.Compare.EQUAL, other)

    def __ne__(self, other: object) -> kv_pb2.Compare:  # type: ignore[override]
        return self._compare(kv_pb2.Compare.NOT_EQUAL, other)

    def __lt__(self, other: object) -> kv_pb2.Compare:
        return self._compare(kv_pb2.Compare.LESS, other)

    def __gt__(self, other: object) -> kv_pb2.Compare:
        return self._compare(kv_pb2.Compare.GREATER, other)

    # Comparing makes a Compare, so a target is no dict key.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{kv_pb2.Compare.Target.Name(self.target).lower()}({self.key!r})"

    def _compare(self, operator: kv_pb2.Compare.Operator, other: object) -> kv_pb2.Compare:
        compare = kv_pb2.Compare(key=self.key, target=self.target, operator=operator)
        if self.target == kv_pb2.Compare.VALUE:
            compare.value = _to_bytes(other, "a value to compare with")
            return compare
        if isinstance(other, bool) or not isinstance(other, int):
            raise TypeError(f"{self!r} compares with an int, not {type(other).__name__}")
        if other < 0:
            raise ValueError(f"{self!r} compares with an int >= 0, not {other}")
        compare.number = other
        return compare


def value(key: Key) -> CompareTarget:
    """The key's value: ``value(key) == b"x"`` (false for an absent key, whatever the operator)."""
    return CompareTarget(key, kv_pb2.Compare.VALUE)


def version(key: Key) -> CompareTarget:
    """Writes to the key since it was created: ``version(key) == 0`` when absent."""
    return CompareTarget(key, kv_pb2.Compare.VERSION)


def create_revision(key: Key) -> CompareTarget:
    """The revision that created the key (0 when absent)."""
    return CompareTarget(key, kv_pb2.Compare.CREATE_REVISION)


def mod_revision(key: Key) -> CompareTarget:
    """The revision that last wrote the key (0 when absent)."""
    return CompareTarget(key, kv_pb2.Compare.MOD_REVISION)


def exists(key: Key) -> kv_pb2.Compare:
    """The key exists: ``version(key) > 0``."""
    return version(key) > 0


def absent(key: Key) -> kv_pb2.Compare:
    """The key does not exist: ``version(key) == 0``."""
    return version(key) == 0


# -- operations -------------------------------------------------------------------------


def put(key: Key, value: Key) -> kv_pb2.Operation:
    """Write ``value`` at ``key``."""
    return kv_pb2.Operation(put=kv_pb2.Put(key=_key(key), value=_to_bytes(value, "a value")))


def delete(key: Key) -> kv_pb2.Operation:
    """Delete ``key`` (nothing happens if it does not exist)."""
    return kv_pb2.Operation(delete=kv_pb2.Delete(key=_key(key)))


def get(key: Key) -> kv_pb2.Operation:
    """Read ``key`` as it was before the transaction."""
    return kv_pb2.Operation(get=kv_pb2.Get(key=_key(key)))


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key with its metadata: ``version`` counts writes since it was created (1 after
    the first); ``create_revision`` and ``mod_revision`` are its group's revision when
    it was created and last written."""

    key: bytes
    value: bytes
    version: int
    create_revision: int
    mod_revision: int

    @classmethod
    def from_proto(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.version, kv.create_revision, kv.mod_revision)


@dataclass(frozen=True, slots=True)
class GetResult:
    """A get in a transaction: the key as it was before the transaction, or None."""

    key: bytes
    kv: KeyValue | None

    @property
    def value(self) -> bytes | None:
        return None if self.kv is None else self.kv.value


@dataclass(frozen=True, slots=True)
class PutResult:
    """A put in a transaction: ``previous`` is the key before it, None if it did not exist."""

    key: bytes
    previous: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """A delete in a transaction: ``deleted`` when the key existed (``previous``: as it was)."""

    key: bytes
    deleted: bool
    previous: KeyValue | None


OpResult = GetResult | PutResult | DeleteResult


@dataclass(frozen=True)
class TxnResult:
    """``succeeded``: every compare held and the then-branch ran (else the else-branch).

    ``results`` has one entry per operation of the branch that ran, in order,
    except when ``results_unknown``: a retry found the transaction committed by
    an earlier attempt planned before the ring moved its keys, whose
    per-operation results are not kept (``results`` is empty then).
    """

    succeeded: bool
    results: list[OpResult]
    results_unknown: bool = False

    @classmethod
    def from_response(
        cls, request: router_pb2.TxnRequest, response: router_pb2.TxnResponse
    ) -> TxnResult:
        """The result of ``request``, answered with ``response`` (ClusterError if they disagree)."""
        operations = request.success if response.succeeded else request.failure
        if response.results_unknown:
            return cls(response.succeeded, [], results_unknown=True)
        if len(operations) != len(response.results):
            raise ClusterError(
                f"Txn: the router answered {len(response.results)} results for "
                f"{len(operations)} operations",
                grpc.StatusCode.INTERNAL,
            )
        return cls(
            response.succeeded,
            [
                _op_result(op, result)
                for op, result in zip(operations, response.results, strict=True)
            ],
        )


def _op_result(operation: kv_pb2.Operation, result: kv_pb2.OperationResult) -> OpResult:
    previous = KeyValue.from_proto(result.previous) if result.HasField("previous") else None
    kind = operation.WhichOneof("kind")
    if kind == "get":
        return GetResult(operation.get.key, previous)
    if kind == "put":
        return PutResult(operation.put.key, previous)
    if kind == "delete":
        return DeleteResult(operation.delete.key, result.succeeded, previous)
    raise ClusterError(f"Txn: the router ran a {kind} operation", grpc.StatusCode.INTERNAL)


# -- transaction names ------------------------------------------------------------------

_TXN_ID = re.compile(r"([0-9a-fA-F]{1,16}):([0-9]{1,20})")


def parse_txn_id(text: str) -> kv_pb2.TxnRef:
    """``hexclient:seq`` (as ``shardkv txn list`` shows it) as a ``TxnRef``."""
    if not isinstance(text, str):
        raise TypeError(f"a transaction id must be a str, not {type(text).__name__}")
    match = _TXN_ID.fullmatch(text.strip())
    client_id = int(match.group(1), 16) if match else 0
    seq = int(match.group(2)) if match else 0
    if not (client_id > 0 and 0 < seq < 1 << 64):
        details = (
            f"{text!r} is not a transaction id: CLIENT:SEQ, the client id in hex "
            "and the seq in decimal, both above 0 (e.g. 3f2a9c:17)"
        )
        raise InvalidArgument(details, grpc.StatusCode.INVALID_ARGUMENT, details)
    return kv_pb2.TxnRef(client_id=client_id, seq=seq)


# -- interactive transactions -----------------------------------------------------------


class _State(Enum):
    OPEN = "open"
    COMMITTED = "committed"
    DISCARDED = "discarded"


class _Staged:
    """What an interactive transaction read and wrote: the part both faces share."""

    def __init__(self) -> None:
        # Key -> as read (None: absent). Its mod_revision is what commit compares.
        self.reads: dict[bytes, KeyValue | None] = {}
        # Key -> staged value (None: deleted), in the order first written.
        self.writes: dict[bytes, bytes | None] = {}
        self.state = _State.OPEN

    def check_open(self, doing: str) -> None:
        if self.state is not _State.OPEN:
            raise RuntimeError(f"{doing}: the transaction is {self.state.value}")

    def known(self, key: bytes) -> tuple[bool, bytes | None]:
        """``(True, value)`` when the transaction already knows the key's value."""
        if key in self.writes:
            return True, self.writes[key]
        if key in self.reads:
            kv = self.reads[key]
            return True, None if kv is None else kv.value
        return False, None

    def remember(self, key: bytes, kv: KeyValue | None) -> bytes | None:
        """Record a read and answer its value.

        The first read of a key wins: a concurrent get of the same key answers
        what the commit will check, not a later version. A read that ends
        after the commit began was not checked by it, so it is an error.
        """
        self.check_open("get")
        kv = self.reads.setdefault(key, kv)
        return None if kv is None else kv.value

    def stage(self, key: bytes, staged: bytes | None) -> None:
        self.check_open("put" if staged is not None else "delete")
        self.writes[key] = staged

    def begin_commit(self) -> tuple[list[kv_pb2.Compare], list[kv_pb2.Operation]]:
        """The commit's compares and operations; from here the transaction is finished."""
        self.check_open("commit")
        self.state = _State.COMMITTED
        compares = [
            mod_revision(key) == (0 if kv is None else kv.mod_revision)
            for key, kv in self.reads.items()
        ]
        operations = [
            delete(key) if staged is None else put(key, staged)
            for key, staged in self.writes.items()
        ]
        return compares, operations

    def end_commit(self, result: TxnResult) -> TxnResult:
        if not result.succeeded:
            raise TransactionConflict(
                f"transaction: a key it read ({_keys_text(self.reads)}) was written since "
                "it was read; nothing was applied: run the transaction again",
                grpc.StatusCode.ABORTED,
            )
        return result

    def discard(self) -> None:
        if self.state is _State.OPEN:
            self.state = _State.DISCARDED


def _keys_text(keys: Collection[bytes]) -> str:
    shown = [repr(key) for key in itertools.islice(keys, 3)]
    more = len(keys) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


class AsyncTransaction:
    """An interactive optimistic transaction on an ``AsyncClient`` (see the module docstring).

    Made by ``AsyncClient.transaction()``. ``timeout`` applies to each call
    (every ``get`` and the commit) as in the client's methods.
    """

    def __init__(self, client: AsyncClient, *, timeout: float | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._staged = _Staged()

    async def get(self, key: Key) -> bytes | None:
        """The key's value (None: absent), as staged, as read before, or read now."""
        self._staged.check_open("get")
        encoded = _key(key)
        found, known = self._staged.known(encoded)
        if found:
            return known
        kv = await self._client.get_kv(encoded, timeout=self._timeout)
        return self._staged.remember(encoded, kv)

    def put(self, key: Key, value: Key) -> None:
        """Stage a write of ``value`` at ``key`` (sent at commit)."""
        self._staged.stage(_key(key), _to_bytes(value, "a value"))

    def delete(self, key: Key) -> None:
        """Stage the deletion of ``key`` (sent at commit)."""
        self._staged.stage(_key(key), None)

    async def commit(self) -> TxnResult:
        """Send the transaction; ``TransactionConflict`` if a key read has changed since."""
        compares, operations = self._staged.begin_commit()
        result = await self._client.txn(compares, operations, timeout=self._timeout)
        return self._staged.end_commit(result)

    def discard(self) -> None:
        """Drop the transaction: nothing is sent. Harmless once committed or discarded."""
        self._staged.discard()


class Transaction:
    """An interactive optimistic transaction on a blocking ``Client``; as ``AsyncTransaction``."""

    def __init__(self, client: Client, *, timeout: float | None = None) -> None:
        self._client = client
        self._timeout = timeout
        self._staged = _Staged()

    def get(self, key: Key) -> bytes | None:
        """The key's value (None: absent), as staged, as read before, or read now."""
        self._staged.check_open("get")
        encoded = _key(key)
        found, known = self._staged.known(encoded)
        if found:
            return known
        kv = self._client.get_kv(encoded, timeout=self._timeout)
        return self._staged.remember(encoded, kv)

    def put(self, key: Key, value: Key) -> None:
        """Stage a write of ``value`` at ``key`` (sent at commit)."""
        self._staged.stage(_key(key), _to_bytes(value, "a value"))

    def delete(self, key: Key) -> None:
        """Stage the deletion of ``key`` (sent at commit)."""
        self._staged.stage(_key(key), None)

    def commit(self) -> TxnResult:
        """Send the transaction; ``TransactionConflict`` if a key read has changed since."""
        compares, operations = self._staged.begin_commit()
        result = self._client.txn(compares, operations, timeout=self._timeout)
        return self._staged.end_commit(result)

    def discard(self) -> None:
        """Drop the transaction: nothing is sent. Harmless once committed or discarded."""
        self._staged.discard()


# -- client.transaction(): a context manager and a decorator ----------------------------

_WITH_RETRIES = (
    "transaction(retries=...) re-runs a decorated function; a with block cannot be "
    "re-run: use transaction() in a with, or decorate a function"
)


def _retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    return retries


class _Scope(Generic[_C, _T]):
    """What both scopes share: their settings and the one block at a time they run."""

    def __init__(
        self,
        client: _C,
        *,
        retries: int,
        timeout: float | None,
        backoff: Callable[[int], float],
    ) -> None:
        self._client = client
        self._retries = _retries(retries)
        self._timeout = timeout
        self._backoff = backoff
        self._current: _T | None = None

    def _open(self, transaction: _T) -> _T:
        if self._retries:
            raise ValueError(_WITH_RETRIES)
        if self._current is not None:
            raise RuntimeError("this transaction() is in use: call transaction() for each block")
        self._current = transaction
        return transaction

    def _close(self) -> _T:
        transaction, self._current = self._current, None
        assert transaction is not None
        return transaction


class TransactionScope(_Scope["Client", "Transaction"]):
    """What ``Client.transaction()`` returns.

    As a context manager, ``with`` gives a fresh ``Transaction`` and commits it
    when the block ends normally (unless the block committed it), or discards
    it when the block raises. As a decorator on ``f(t, *args)``, calling
    ``f(*args)`` runs ``f`` with a fresh transaction and commits it, running
    it again on ``TransactionConflict`` up to ``retries`` more times (after a
    jittered backoff), and returns what ``f`` returned.
    """

    def __enter__(self) -> Transaction:
        return self._open(Transaction(self._client, timeout=self._timeout))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        transaction = self._close()
        if exc_type is not None:
            transaction.discard()
        elif transaction._staged.state is _State.OPEN:
            transaction.commit()

    def __call__(self, function: Callable[Concatenate[Transaction, _P], _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            for attempt in itertools.count():
                transaction = Transaction(self._client, timeout=self._timeout)
                try:
                    returned = function(transaction, *args, **kwargs)
                    if transaction._staged.state is _State.OPEN:
                        transaction.commit()
                    return returned
                except TransactionConflict:
                    if attempt >= self._retries:
                        raise
                finally:
                    transaction.discard()
                time.sleep(self._backoff(attempt))
            raise AssertionError("unreachable")

        return run


class AsyncTransactionScope(_Scope["AsyncClient", "AsyncTransaction"]):
    """What ``AsyncClient.transaction()`` returns: as ``TransactionScope``, with
    ``async with`` and ``async def`` functions."""

    async def __aenter__(self) -> AsyncTransaction:
        return self._open(AsyncTransaction(self._client, timeout=self._timeout))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        transaction = self._close()
        if exc_type is not None:
            transaction.discard()
        elif transaction._staged.state is _State.OPEN:
            await transaction.commit()

    def __call__(
        self, function: Callable[Concatenate[AsyncTransaction, _P], Awaitable[_R]]
    ) -> Callable[_P, Coroutine[Any, Any, _R]]:
        @functools.wraps(function)
        async def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            for attempt in itertools.count():
                transaction = AsyncTransaction(self._client, timeout=self._timeout)
                try:
                    returned = await function(transaction, *args, **kwargs)
                    if transaction._staged.state is _State.OPEN:
                        await transaction.commit()
                    return returned
                except TransactionConflict:
                    if attempt >= self._retries:
                        raise
                finally:
                    transaction.discard()
                await asyncio.sleep(self._backoff(attempt))
            raise AssertionError("unreachable")

        return run
