"""The shardkv client: ``AsyncClient`` (asyncio) and ``Client`` (blocking), over routers.

What it promises:

1. **Keys and values are bytes.** ``str`` is encoded as UTF-8; values come
   back as ``bytes``. An empty key raises ``InvalidArgument`` and a key or
   value of another type ``TypeError`` before anything is sent; sizes are
   left to the router, which knows the limits.
2. **Exactly-once writes.** Each client picks a random 63-bit ``client_id``
   and numbers its writes 1, 2, 3, ... Every write RPC carries
   ``Session(client_id, seq, acked_seq)``, where ``acked_seq`` is the highest
   seq at or below which every write has finished (answered or given up), so
   the cluster may forget those results. A retry of a write reuses its seq,
   so the cluster applies it at most once whichever router it reaches.
3. **Retries within one deadline.** UNAVAILABLE (which is also how gRPC
   reports a router it cannot connect to) is retried with jittered, capped
   exponential backoff, each retry at the next router address, until the
   call's deadline (``timeout`` of the constructor, default 10 s, or of the
   call). Other errors are raised at once. A read that runs out of time
   raises ``Unavailable`` with the router's last message; a write raises
   ``DeadlineExceeded`` saying it may or may not have applied.
4. **Errors** are ``router.errors.ClientError`` and its subclasses, made in
   one place (``router.errors.from_rpc_error``).
   RESOURCE_EXHAUSTED with the router's ``retry-after-ms`` hint (it is at a
   limit: ``router.limits``) is retried too, after at least that long and at
   the same router; one without the hint (the request is too large) is not.
   ``token=`` is sent on every call as ``authorization: Bearer <token>``
   (``router.auth``); without one the router answers UNAUTHENTICATED when it
   requires tokens.
5. **One implementation.** ``AsyncClient`` holds all the logic. ``Client``
   runs an ``AsyncClient`` on a private event loop in a daemon thread and
   waits for each call; ``close()`` stops that thread. A ``Client`` may be
   used from any thread, including one that runs its own event loop (the
   call then blocks that loop: in async code use ``AsyncClient``), but not
   from inside a ``progress`` callback, which runs on the client's thread.
6. **Transactions** (``txn``, ``transaction``; builders and results in
   ``router.transactions``) are writes with a session like the others: an
   unknown outcome is retried with the same seq, never started anew. A
   conflict (ABORTED: nothing applied) is retried with a new seq, up to
   ``conflict_retries`` (default 10), then raised as ``TransactionConflict``.
7. **Ring changes** (``add_group``, ``remove_group``, ``set_weight``; for
   operators) return the ``ClusterMap`` with the change: its ``migration``
   holds the moves, which then run in the background (``status`` shows
   them). With ``dry_run=True`` it is the plan, and nothing changes. They
   are retried on UNAVAILABLE like reads: a repeat of the change under way
   is answered with the map as it is, never applied twice, and any other
   change is refused while one runs (FAILED_PRECONDITION). So that a repeat
   cannot add two groups,
   ``add_group`` without ``group_id`` first asks for the plan and then adds
   the group id the plan gave. ``max_keys_per_second`` holds the change
   back (its copies to that many keys per second over all its moves, its
   collects to as many apart; 0: no limit) so that the writes sharing the
   nodes keep their latency; ``set_move_rate`` changes it while the change
   runs (asking the change again keeps the limit it has).
8. **Placement changes** (``move_replica``, ``remove_node``,
   ``transfer_leader``, ``rebalance_replicas``; for operators) return the
   ``ClusterMap`` with the change: replica moves in ``replica_moves`` (each
   adds the new node as a Raft learner, promotes it once caught up, then
   removes the old one, in the background: ``status`` shows them), node
   states, preferred leaders. With ``dry_run=True`` it is the plan. Retried
   on UNAVAILABLE like ring changes: a repeat of a move that did start is
   refused (FAILED_PRECONDITION: the group has a move under way), and
   ``remove_node`` and ``transfer_leader`` asked again change nothing more.

Channels: one ``grpc.aio`` channel per router address, made on first use and
kept until ``close()``, with 64 MiB message limits. With ``tls=TlsFiles(ca,
cert, key)`` (``shardkv.tls``; also ``router.TlsFiles``) they are mutual TLS:
the router's certificate must be signed by that CA and name the host dialed,
and the client presents its own. The files are read by the constructor,
which raises ``shardkv.tls.TlsError`` if one is missing or not PEM. Calls stick to one router
until it fails, then move to the next.

Coalescing (``get``, ``put``, ``delete``, ``cas``): while fewer than
``DEFAULT_MAX_IN_FLIGHT`` (16) of these calls are out, each goes alone as its own RPC;
calls made while that many are out wait and leave together in one ``Batch``
RPC (at most 1,000 per call), each answered, retried and timed out
on its own exactly as if sent alone. So one client used by many tasks at
once costs the router a few calls, not one per operation, and a lone caller
pays nothing for it.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Sized,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from router.auth import bearer_metadata
from router.errors import ClientError, TransactionConflict, from_rpc_error
from router.limits import RETRY_AFTER_KEY
from router.transactions import (
    AsyncTransactionScope,
    KeyValue,
    TransactionScope,
    TxnResult,
    _key,
    _to_bytes,
    parse_txn_id,
)
from shardkv.tls import TlsFiles, open_channel
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, router_pb2, router_pb2_grpc

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONFLICT_RETRIES",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "Client",
    "Progress",
    "RetryPolicy",
    "SessionNumbers",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_PAGE_SIZE = 1000
DEFAULT_BATCH_SIZE = 1000
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_IN_FLIGHT = 16
DEFAULT_CONFLICT_RETRIES = 10
_MAX_BATCH = 1000
_KIND_OF_METHOD = {
    "Get": "get",
    "Put": "put",
    "Delete": "delete",
    "CompareAndSet": "compare_and_set",
}

_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
)

Key = bytes | str
# ``True`` for a live line on stderr, or a callable ``(done, total)``; total
# is None when the items have no length (a generator).
Progress = bool | Callable[[int, int | None], object]

_T = TypeVar("_T")
# Mapping is invariant in its key type: these let dict[str, str], dict[bytes, bytes]
# and mixed dicts all type-check as put_many's items.
_KeyT = TypeVar("_KeyT", bound=bytes | str)
_ValueT = TypeVar("_ValueT", bound=bytes | str)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between retries of one call.

    Retry n (from 0) waits a random time in [c/2, c] with
    c = min(max_backoff, initial_backoff * multiplier**n).

    With more than one router address, one attempt at one router lasts at
    most ``attempt_timeout``; past it the next router is tried (with the same
    session), so a paused or wedged router costs that long, not the whole
    deadline.
    """

    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    attempt_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("RetryPolicy needs 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy needs multiplier >= 1")
        if not self.attempt_timeout > 0:
            raise ValueError("RetryPolicy needs attempt_timeout > 0")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        # Capping the exponent keeps the float finite however long a call retries.
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(attempt, 64))
        return rng.uniform(ceiling / 2, ceiling)


# -- what users pass in -------------------------------------------------------------


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be 1 or more, not {value}")
    return value


def _whole(name: str, value: int, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not least <= value < 1 << 32:
        raise ValueError(f"{name} must be from {least} to {(1 << 32) - 1}, not {value}")
    return value


def _flag(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def _timeout(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"timeout must be more than 0 seconds, not {value}")
    return float(value)


def parse_addresses(addresses: str | Sequence[str]) -> tuple[str, ...]:
    """Router addresses ``host:port``: one, a comma-separated list, or a sequence of them."""
    if isinstance(addresses, str):
        items: Sequence[object] = addresses.split(",")
    elif isinstance(addresses, Sequence):
        items = addresses
    else:
        raise TypeError(f"addresses must be a str or a sequence of str, not {type(addresses)}")
    parsed: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"a router address must be a str, not {type(item).__name__}")
        address = item.strip()
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"router address {item!r} is not host:port (e.g. 127.0.0.1:7000)")
        parsed.append(address)
    if not parsed:
        raise ValueError("no router address given")
    return tuple(parsed)


# -- coalescing -------------------------------------------------------------------

_STATUS_OF_VALUE = {status.value[0]: status for status in grpc.StatusCode}


@dataclass(slots=True)
class _Queued:
    """A single-key call waiting to leave in a Batch, or to be retried in one."""

    method: str
    request: Any
    seq: int | None
    deadline: float
    future: asyncio.Future[Any]
    attempt: int = 0

    def succeed(self, response: Any) -> None:
        if not self.future.done():
            self.future.set_result(response)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


# -- sessions -----------------------------------------------------------------------


class SessionNumbers:
    """Numbers one client's writes and knows the floor below which all are finished.

    Shared with the router, which numbers the writes that come without a session.
    """

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.acked_seq = 0
        self._next_seq = 1
        # Finished seqs above acked_seq, waiting for the ones below them.
        self._finished_above: set[int] = set()

    def begin(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def finish(self, seq: int) -> None:
        """``seq`` was answered or given up: it is never sent again."""
        self._finished_above.add(seq)
        while self.acked_seq + 1 in self._finished_above:
            self.acked_seq += 1
            self._finished_above.remove(self.acked_seq)

    def stamp(self, session: router_pb2.Session, seq: int) -> None:
        session.client_id = self.client_id
        session.seq = seq
        session.acked_seq = self.acked_seq


def _new_client_id() -> int:
    return random.SystemRandom().randrange(1, 1 << 63)


# -- progress -----------------------------------------------------------------------


class _ProgressLine:
    """``done / total keys, N keys/s`` on stderr: rewritten in place on a terminal."""

    _INTERVAL_TTY = 0.2
    _INTERVAL_LOG = 5.0

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._shown_at = 0.0
        self._last = ""

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        tty = sys.stderr.isatty()
        if now - self._shown_at < (self._INTERVAL_TTY if tty else self._INTERVAL_LOG):
            self._last = self._text(done, total, now)
            return
        self._shown_at = now
        self._last = ""
        self._write(self._text(done, total, now), tty)

    def close(self, done: int, total: int | None) -> None:
        self._write(self._text(done, total, time.monotonic()), sys.stderr.isatty())
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        sys.stderr.flush()

    def _text(self, done: int, total: int | None, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        of_total = f" / {total}" if total is not None else ""
        return f"put_many: {done}{of_total} keys, {done / elapsed:,.0f} keys/s"

    @staticmethod
    def _write(text: str, tty: bool) -> None:
        sys.stderr.write(f"\r{text}\x1b[K" if tty else f"{text}\n")
        sys.stderr.flush()


# -- running many calls -------------------------------------------------------------


async def _run_bounded(jobs: Iterable[Awaitable[None]], concurrency: int) -> None:
    """Await ``jobs`` with at most ``concurrency`` at once; the first failure cancels the rest.

    ``jobs`` is consumed lazily, so a long generator of batches is never all in memory.
    """
    pending: set[asyncio.Future[None]] = set()

    async def drain(until: int) -> None:
        nonlocal pending
        while len(pending) > until:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            # Every failure is retrieved (asyncio warns of unretrieved ones); the first is raised.
            failures = [
                error
                for error in (task.exception() for task in done if not task.cancelled())
                if error is not None
            ]
            if failures:
                raise failures[0]

    iterator = iter(jobs)
    try:
        while True:
            # A slot first, then the next job: a job made is a job awaited.
            await drain(concurrency - 1)
            job = next(iterator, None)
            if job is None:
                break
            pending.add(asyncio.ensure_future(job))
        await drain(0)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _batches(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- the client ---------------------------------------------------------------------


class AsyncClient:
    """The asyncio client. ``async with AsyncClient("127.0.0.1:7000") as client: ...``."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        tls: TlsFiles | None = None,
        token: str | None = None,
    ) -> None:
        self._addresses = parse_addresses(addresses)
        self._metadata = bearer_metadata(token) if token else None
        self._timeout = _timeout(timeout)
        self._tls = tls.load() if tls is not None else None
        self._retry = retry if retry is not None else RetryPolicy()
        self._rng = random.Random()
        self._sessions = SessionNumbers(_new_client_id())
        self._channels: list[grpc.aio.Channel | None] = [None] * len(self._addresses)
        self._stubs: list[Any] = [None] * len(self._addresses)
        # The router calls go to until it fails.
        self._current = 0
        self._closed = False
        # Coalescing of single-key calls (see the module docstring).
        self._max_in_flight = DEFAULT_MAX_IN_FLIGHT
        self._in_flight = 0
        self._queue: list[_Queued] = []
        self._batches: set[asyncio.Task[None]] = set()

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._addresses

    @property
    def client_id(self) -> int:
        return self._sessions.client_id

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every channel. Closing twice is harmless; calls after it raise RuntimeError."""
        self._closed = True
        queued, self._queue = self._queue, []
        for waiting in queued:
            waiting.fail(RuntimeError(f"{waiting.method}: the shardkv client was closed"))
        channels = [channel for channel in self._channels if channel is not None]
        self._channels = [None] * len(self._addresses)
        self._stubs = [None] * len(self._addresses)
        for channel in channels:
            await channel.close(grace=None)

    # -- single keys --

    async def get(self, key: Key, *, timeout: float | None = None) -> bytes | None:
        """The key's value, or None when it does not exist."""
        kv = await self.get_kv(key, timeout=timeout)
        return None if kv is None else kv.value

    async def get_kv(self, key: Key, *, timeout: float | None = None) -> KeyValue | None:
        """The key with its version and revisions, or None when it does not exist."""
        request = router_pb2.GetRequest(key=_key(key))
        response: router_pb2.GetResponse = await self._single("Get", request, timeout, None)
        return KeyValue.from_proto(response.kv) if response.HasField("kv") else None

    async def put(self, key: Key, value: Key, *, timeout: float | None = None) -> None:
        request = router_pb2.PutRequest(key=_key(key), value=_to_bytes(value, "a value"))
        await self._write("Put", request, timeout)

    async def delete(self, key: Key, *, timeout: float | None = None) -> bool:
        """Delete the key; True if it existed."""
        request = router_pb2.DeleteRequest(key=_key(key))
        response: router_pb2.DeleteResponse = await self._write("Delete", request, timeout)
        return response.deleted

    async def cas(
        self, key: Key, expected: Key | None, value: Key, *, timeout: float | None = None
    ) -> bool:
        """Write ``value`` if the key holds ``expected`` (None: if absent); True if written."""
        request = router_pb2.CompareAndSetRequest(key=_key(key), value=_to_bytes(value, "a value"))
        if expected is not None:
            request.expected = _to_bytes(expected, "expected")
        response: router_pb2.CompareAndSetResponse = await self._write(
            "CompareAndSet", request, timeout
        )
        return response.succeeded

    # -- transactions --

    async def txn(
        self,
        compares: Iterable[kv_pb2.Compare],
        then_ops: Iterable[kv_pb2.Operation],
        else_ops: Iterable[kv_pb2.Operation] = (),
        *,
        conflict_retries: int = DEFAULT_CONFLICT_RETRIES,
        timeout: float | None = None,
    ) -> TxnResult:
        """Atomically, across shards: ``then_ops`` if every compare holds, else ``else_ops``.

        Build the pieces with ``router.transactions`` (``value(k) == b"x"``,
        ``put(k, v)``, ...). One write with one session: a retry after
        UNAVAILABLE, or at another router after an attempt timed out, reuses
        the seq, and the router finds the transaction's outcome instead of
        applying it twice. ABORTED (it met another transaction; nothing was
        applied) is retried with a new seq after a jittered backoff, up to
        ``conflict_retries`` times, then raised as ``TransactionConflict``.
        ``timeout`` covers all of it; when it passes during an attempt,
        ``DeadlineExceeded`` says the outcome is unknown.
        """
        if isinstance(conflict_retries, bool) or not isinstance(conflict_retries, int):
            raise TypeError(
                f"conflict_retries must be an int, not {type(conflict_retries).__name__}"
            )
        if conflict_retries < 0:
            raise ValueError(f"conflict_retries must be 0 or more, not {conflict_retries}")
        request = router_pb2.TxnRequest(
            compares=compares,
            success=then_ops,
            failure=else_ops,
            # Its age, kept across conflict retries (wait-die: older ones win).
            started_ms=int(time.time() * 1000),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._timeout if timeout is None else _timeout(timeout))
        attempt = 0
        while True:
            try:
                response: router_pb2.TxnResponse = await self._write(
                    "Txn", request, max(deadline - loop.time(), 0.001)
                )
            except TransactionConflict as conflict:
                delay = self._backoff(attempt)
                attempt += 1
                if attempt > conflict_retries or loop.time() + delay >= deadline:
                    conflict.add_note(f"Txn: gave up after {attempt} attempts, each with a new seq")
                    raise
                await asyncio.sleep(delay)
                continue
            return TxnResult.from_response(request, response)

    def transaction(
        self, retries: int = 0, *, timeout: float | None = None
    ) -> AsyncTransactionScope:
        """An interactive optimistic transaction (``router.transactions``).

        ``async with client.transaction() as t:`` commits when the block ends,
        discards if it raises. ``@client.transaction(retries=5)`` on
        ``async def f(t, *args)`` makes ``f(*args)`` run with a fresh
        transaction, again on ``TransactionConflict`` up to ``retries`` times.
        ``timeout`` applies to each call the transaction makes.
        """
        return AsyncTransactionScope(self, retries=retries, timeout=timeout, backoff=self._backoff)

    # -- many keys --

    async def put_many(
        self,
        items: Mapping[_KeyT, _ValueT] | Iterable[tuple[Key, Key]],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress = False,
        timeout: float | None = None,
    ) -> int:
        """Write many keys, ``batch_size`` per PutMany call, ``concurrency`` calls at once.

        Each batch is one write with its own seq and its own deadline
        (``timeout``); batches are atomic per group, not across groups. Items
        are read and checked lazily, so a generator works and a bad item
        fails the call after the batches before it were sent. On the first
        failure the batches in flight are given up and the error raised.
        Returns the number of items written.
        """
        _positive("batch_size", batch_size)
        _positive("concurrency", concurrency)
        total = len(items) if isinstance(items, Sized) else None
        pairs: Iterable[tuple[Key, Key]] = items.items() if isinstance(items, Mapping) else items
        line = _ProgressLine() if progress is True else None
        report = _progress_callback(progress, line)
        done = 0

        async def send(request: router_pb2.PutManyRequest) -> None:
            nonlocal done
            await self._write("PutMany", request, timeout)
            done += len(request.items)
            if report is not None:
                report(done, total)

        try:
            await _run_bounded(
                (send(request) for request in _put_many_requests(pairs, batch_size)), concurrency
            )
        finally:
            if line is not None:
                line.close(done, total)
        return done

    async def get_many(
        self,
        keys: Iterable[Key],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float | None = None,
    ) -> dict[bytes, bytes]:
        """The values of the keys that exist (missing keys are absent from the dict)."""
        _positive("batch_size", batch_size)
        _positive("concurrency", concurrency)
        found: dict[bytes, bytes] = {}

        async def fetch(batch: list[bytes]) -> None:
            request = router_pb2.GetManyRequest(keys=batch)
            response: router_pb2.GetManyResponse = await self._call(
                "GetMany", request, timeout, None
            )
            for kv in response.kvs:
                found[kv.key] = kv.value

        await _run_bounded(
            (fetch(batch) for batch in _batches(map(_key, keys), batch_size)), concurrency
        )
        return found

    def scan(
        self,
        prefix: Key | None = None,
        start: Key | None = None,
        end: Key | None = None,
        limit: int | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """``(key, value)`` in key order: keys with ``prefix``, or in [start, end).

        Pages of ``page_size`` keys are fetched as the iteration goes, each
        with its own deadline; ``limit`` caps the keys yielded in all.
        """
        request = _scan_request(prefix, start, end, limit, page_size)
        return _flatten(self._scan_pages(request, limit, page_size, timeout))

    async def _scan_pages(
        self,
        request: router_pb2.ScanKeysRequest,
        limit: int | None,
        page_size: int,
        timeout: float | None,
    ) -> AsyncGenerator[list[tuple[bytes, bytes]], None]:
        remaining = limit
        while remaining is None or remaining > 0:
            request.limit = page_size if remaining is None else min(page_size, remaining)
            response: router_pb2.ScanKeysResponse = await self._call(
                "ScanKeys", request, timeout, None
            )
            page = [(kv.key, kv.value) for kv in response.kvs]
            if remaining is not None:
                # The router sends at most request.limit keys.
                remaining -= len(page)
            if page:
                yield page
            if not response.continuation:
                return
            request.continuation = response.continuation

    async def status(self, *, timeout: float | None = None) -> router_pb2.ClusterStatusResponse:
        """The cluster map, every node's report and every group's share of the ring."""
        response: router_pb2.ClusterStatusResponse = await self._call(
            "ClusterStatus", router_pb2.ClusterStatusRequest(), timeout, None
        )
        return response

    # -- transactions, for operators --

    async def list_transactions(
        self, *, timeout: float | None = None
    ) -> list[router_pb2.TxnSummary]:
        """Transactions not finished (prepared somewhere), oldest deadline first."""
        response: router_pb2.ListTransactionsResponse = await self._call(
            "ListTransactions", router_pb2.ListTransactionsRequest(), timeout, None
        )
        return list(response.txns)

    async def show_transaction(
        self, txn_id: str, *, timeout: float | None = None
    ) -> router_pb2.ShowTxnResponse:
        """One transaction (``hexclient:seq``): its record and its prepares; NotFound if none."""
        request = router_pb2.ShowTxnRequest(txn=parse_txn_id(txn_id))
        response: router_pb2.ShowTxnResponse = await self._call("ShowTxn", request, timeout, None)
        return response

    async def resolve_transaction(
        self, txn_id: str, commit: bool, *, timeout: float | None = None
    ) -> kv_pb2.TxnRecord:
        """Finish a stuck transaction (``hexclient:seq``) as committed or aborted.

        The router refuses (``ClusterError``, FAILED_PRECONDITION) what the
        transaction's record contradicts, and a commit while a participant is
        not prepared. Resolving is idempotent, so it is retried like a read.
        Returns the record as it stands.
        """
        if not isinstance(commit, bool):
            raise TypeError(f"commit must be a bool, not {type(commit).__name__}")
        request = router_pb2.ResolveTxnRequest(txn=parse_txn_id(txn_id), commit=commit)
        response: router_pb2.ResolveTxnResponse = await self._call(
            "ResolveTxn", request, timeout, None
        )
        return response.record

    # -- ring changes, for operators --

    async def add_group(
        self,
        weight: int = 1,
        nodes: Sequence[int] | None = None,
        group_id: int = 0,
        dry_run: bool = False,
        *,
        max_keys_per_second: int = 0,
        timeout: float | None = None,
    ) -> cluster_pb2.ClusterMap:
        """Add a data group of ``weight`` on ``nodes`` (default: the least loaded nodes).

        ``group_id`` 0 takes the next free id. Returns the map with the
        change (see the module docstring, 7); ``ClusterError`` with
        FAILED_PRECONDITION while another ring change is under way. The
        plan and the change share one ``timeout``.
        """
        loop = asyncio.get_running_loop()
        ends = loop.time() + (self._timeout if timeout is None else _timeout(timeout))
        add = node_pb2.AddGroup(
            group_id=_whole("group_id", group_id, 0),
            weight=_whole("weight", weight, 1),
            nodes=[_whole("node id", node, 1) for node in nodes or ()],
        )
        rate = _whole("max_keys_per_second", max_keys_per_second, 0)
        if not _flag("dry_run", dry_run) and add.group_id == 0:
            plan = await self._change(
                "ChangeRing",
                node_pb2.ChangeRingRequest(add_group=add, dry_run=True),
                max(ends - loop.time(), 0.001),
            )
            added = _added_group(plan)
            if added is not None:
                add.group_id = added
        return await self._change(
            "ChangeRing",
            node_pb2.ChangeRingRequest(add_group=add, dry_run=dry_run, max_keys_per_second=rate),
            max(ends - loop.time(), 0.001),
        )

    async def remove_group(
        self,
        group_id: int,
        dry_run: bool = False,
        *,
        max_keys_per_second: int = 0,
        timeout: float | None = None,
    ) -> cluster_pb2.ClusterMap:
        """Move every key of data group ``group_id`` to the others, then retire it."""
        request = node_pb2.ChangeRingRequest(
            remove_group=_whole("group_id", group_id, 1),
            dry_run=_flag("dry_run", dry_run),
            max_keys_per_second=_whole("max_keys_per_second", max_keys_per_second, 0),
        )
        return await self._change("ChangeRing", request, timeout)

    async def set_weight(
        self,
        group_id: int,
        weight: int,
        dry_run: bool = False,
        *,
        max_keys_per_second: int = 0,
        timeout: float | None = None,
    ) -> cluster_pb2.ClusterMap:
        """Give data group ``group_id`` ``weight``: its share of the ring follows its share
        of the weights; weight 0 takes it off the ring (it keeps its replicas)."""
        request = node_pb2.ChangeRingRequest(
            set_weight=node_pb2.SetWeight(
                group_id=_whole("group_id", group_id, 1), weight=_whole("weight", weight, 0)
            ),
            dry_run=_flag("dry_run", dry_run),
            max_keys_per_second=_whole("max_keys_per_second", max_keys_per_second, 0),
        )
        return await self._change("ChangeRing", request, timeout)

    async def set_move_rate(
        self, max_keys_per_second: int, *, timeout: float | None = None
    ) -> cluster_pb2.ClusterMap:
        """Limit the ring change under way to ``max_keys_per_second`` keys copied per
        second over all its moves, and as many collected apart (0: no limit), from
        its next chunk on. FAILED_PRECONDITION when no ring change is under way."""
        rate = _whole("max_keys_per_second", max_keys_per_second, 0)
        request = node_pb2.ChangeRingRequest(move_rate=rate)
        return await self._change("ChangeRing", request, timeout)

    # -- placement changes, for operators --

    async def move_replica(
        self,
        group_id: int,
        from_node: int,
        to_node: int,
        dry_run: bool = False,
        *,
        timeout: float | None = None,
    ) -> cluster_pb2.ClusterMap:
        """Move group ``group_id``'s replica from node ``from_node`` to node ``to_node``.

        Returns the map with the move in ``replica_moves`` (see the module
        docstring, 8); FAILED_PRECONDITION when the group has a move under
        way, ``from_node`` holds no replica of it, or ``to_node`` is not an up
        node without one.
        """
        request = node_pb2.ChangePlacementRequest(
            move_replica=node_pb2.MoveReplica(
                group_id=_whole("group_id", group_id, 0),
                from_node=_whole("from_node", from_node, 1),
                to_node=_whole("to_node", to_node, 1),
            ),
            dry_run=_flag("dry_run", dry_run),
        )
        return await self._change("ChangePlacement", request, timeout)

    async def remove_node(
        self, node_id: int, dry_run: bool = False, *, timeout: float | None = None
    ) -> cluster_pb2.ClusterMap:
        """Decommission node ``node_id``: it becomes "leaving", each of its replicas moves
        to another up node, then it is "removed" (and may be stopped)."""
        request = node_pb2.ChangePlacementRequest(
            remove_node=_whole("node_id", node_id, 1), dry_run=_flag("dry_run", dry_run)
        )
        return await self._change("ChangePlacement", request, timeout)

    async def transfer_leader(
        self, group_id: int, to_node: int, dry_run: bool = False, *, timeout: float | None = None
    ) -> cluster_pb2.ClusterMap:
        """Make node ``to_node``, a voter of group ``group_id``, its preferred leader: the
        lead moves there and stays (``GroupInfo.preferred_leader``)."""
        request = node_pb2.ChangePlacementRequest(
            transfer_leader=node_pb2.TransferLeader(
                group_id=_whole("group_id", group_id, 0), to_node=_whole("to_node", to_node, 1)
            ),
            dry_run=_flag("dry_run", dry_run),
        )
        return await self._change("ChangePlacement", request, timeout)

    async def rebalance_replicas(
        self, dry_run: bool = False, *, timeout: float | None = None
    ) -> cluster_pb2.ClusterMap:
        """Even out replicas per up node (replica moves) and spread preferred leaders."""
        request = node_pb2.ChangePlacementRequest(rebalance=True, dry_run=_flag("dry_run", dry_run))
        return await self._change("ChangePlacement", request, timeout)

    async def _change(
        self,
        method: str,
        request: node_pb2.ChangeRingRequest | node_pb2.ChangePlacementRequest,
        timeout: float | None,
    ) -> cluster_pb2.ClusterMap:
        """A ring (``ChangeRing``) or placement (``ChangePlacement``) change: the map it answers."""
        response: node_pb2.ChangeRingResponse | node_pb2.ChangePlacementResponse = await self._call(
            method, request, timeout, None
        )
        return response.map

    # -- calls --

    def _backoff(self, attempt: int) -> float:
        return self._retry.backoff(attempt, self._rng)

    async def _write(self, method: str, request: Any, timeout: float | None) -> Any:
        seq = self._sessions.begin()
        try:
            if method in _KIND_OF_METHOD:
                return await self._single(method, request, timeout, seq)
            return await self._call(method, request, timeout, seq)
        finally:
            self._sessions.finish(seq)

    async def _single(
        self, method: str, request: Any, timeout: float | None, seq: int | None
    ) -> Any:
        """A single-key call: alone when few are out, else coalesced into a Batch."""
        if self._closed:
            raise RuntimeError("the shardkv client is closed")
        if self._in_flight < self._max_in_flight and not self._queue:
            self._in_flight += 1
            try:
                return await self._call(method, request, timeout, seq)
            finally:
                self._in_flight -= 1
                self._send_queued()
        loop = asyncio.get_running_loop()
        budget = self._timeout if timeout is None else _timeout(timeout)
        queued = _Queued(method, request, seq, loop.time() + budget, loop.create_future())
        self._queue.append(queued)
        self._send_queued()
        try:
            return await queued.future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise RuntimeError(
                    f"{method}: the shardkv client was closed during the call"
                ) from None
            raise

    def _send_queued(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight and not self._closed:
            batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            self._in_flight += 1
            task = asyncio.create_task(self._send_batch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _send_batch(self, batch: list[_Queued]) -> None:
        loop = asyncio.get_running_loop()
        try:
            request = router_pb2.BatchRequest()
            for queued in batch:
                item = request.requests.add()
                getattr(item, _KIND_OF_METHOD[queued.method]).CopyFrom(queued.request)
                if queued.seq is not None:
                    self._sessions.stamp(
                        getattr(item, _KIND_OF_METHOD[queued.method]).session, queued.seq
                    )
            deadline = max(queued.deadline for queued in batch)
            try:
                response: router_pb2.BatchResponse = await self._call(
                    "Batch", request, max(deadline - loop.time(), 0.001), None
                )
            except ClientError as error:
                for queued in batch:
                    code = error.code
                    if queued.seq is not None and code is grpc.StatusCode.UNAVAILABLE:
                        code = grpc.StatusCode.DEADLINE_EXCEEDED  # a write may have applied
                    queued.fail(
                        from_rpc_error(
                            code, error.details, method=queued.method, write=queued.seq is not None
                        )
                    )
                return
            except BaseException as error:  # closed, or cancelled: every caller hears of it
                for queued in batch:
                    queued.fail(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                return
            for queued, answer in zip(batch, response.responses, strict=True):
                self._settle(queued, answer)
        finally:
            self._in_flight -= 1
            self._send_queued()

    def _settle(self, queued: _Queued, answer: router_pb2.Response) -> None:
        if answer.code == 0:
            queued.succeed(getattr(answer, _KIND_OF_METHOD[queued.method]))
            return
        code = _STATUS_OF_VALUE.get(answer.code, grpc.StatusCode.UNKNOWN)
        write = queued.seq is not None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            # Only the router answers an item RESOURCE_EXHAUSTED: at a limit, nothing sent.
            queued.attempt += 1
            loop = asyncio.get_running_loop()
            delay = self._retry.backoff(queued.attempt - 1, self._rng)
            if loop.time() + delay < queued.deadline:
                loop.call_later(delay, self._requeue, queued)
                return
            if code is grpc.StatusCode.UNAVAILABLE and write:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
        queued.fail(from_rpc_error(code, answer.message, method=queued.method, write=write))

    def _requeue(self, queued: _Queued) -> None:
        if queued.future.done():
            return
        if self._closed:
            queued.fail(
                RuntimeError(f"{queued.method}: the shardkv client was closed during the call")
            )
            return
        self._queue.append(queued)
        self._send_queued()

    def _stub(self, index: int) -> Any:
        stub = self._stubs[index]
        if stub is None:
            channel = open_channel(self._addresses[index], self._tls, options=_CHANNEL_OPTIONS)
            stub = router_pb2_grpc.RouterStub(channel)  # type: ignore[no-untyped-call]
            self._channels[index] = channel
            self._stubs[index] = stub
        return stub

    async def _call(self, method: str, request: Any, timeout: float | None, seq: int | None) -> Any:
        """One RPC, retried on UNAVAILABLE at the next router until the deadline.

        ``seq`` is the write's number (None for reads); every attempt carries
        it, with the acked floor as it is at that attempt.
        """
        if self._closed:
            raise RuntimeError("the shardkv client is closed")
        loop = asyncio.get_running_loop()
        budget = self._timeout if timeout is None else _timeout(timeout)
        deadline = loop.time() + budget
        write = seq is not None
        attempt = 0
        # The router's last UNAVAILABLE message: once there is one, running out
        # of time is "gave up retrying", whether it happens while backing off
        # or during the last attempt.
        unavailable: str | None = None
        while True:
            index = self._current
            if seq is not None:
                self._sessions.stamp(request.session, seq)
            attempt += 1
            attempt_deadline = deadline
            if len(self._addresses) > 1:
                attempt_deadline = min(deadline, loop.time() + self._retry.attempt_timeout)
            started = loop.time()
            try:
                return await getattr(self._stub(index), method)(
                    request,
                    timeout=max(attempt_deadline - started, 0.001),
                    metadata=self._metadata,
                )
            except asyncio.CancelledError:
                # close() cancels the calls in flight on its channels; that is
                # not a cancellation of the caller's task.
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    raise RuntimeError(
                        f"{method}: the shardkv client was closed during the call"
                    ) from None
                raise
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                address = self._addresses[index]
                if (
                    code is grpc.StatusCode.DEADLINE_EXCEEDED
                    and attempt_deadline < deadline
                    and loop.time() >= attempt_deadline
                ):
                    # Only this attempt ran out: that router is slow or wedged.
                    unavailable = (
                        f"router {address} gave no answer in {self._retry.attempt_timeout:g} s"
                    )
                    if self._current == index:
                        self._current = (index + 1) % len(self._addresses)
                    continue
                retry_after = _retry_after(exc)
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None:
                    # The router is at a limit and applied nothing: the same router,
                    # later; only if that attempt has as long as this refusal took,
                    # else it would just run out the deadline (and hide the refusal).
                    delay = max(retry_after, self._retry.backoff(attempt - 1, self._rng))
                    refused_in = loop.time() - started
                    if loop.time() + delay + refused_in < deadline:
                        await asyncio.sleep(delay)
                        continue
                if code is grpc.StatusCode.UNAVAILABLE:
                    unavailable = details
                    if self._current == index:
                        self._current = (index + 1) % len(self._addresses)
                    delay = self._retry.backoff(attempt - 1, self._rng)
                    if loop.time() + delay < deadline:
                        await asyncio.sleep(delay)
                        continue
                elif code is not grpc.StatusCode.DEADLINE_EXCEEDED or unavailable is None:
                    where = f"at {address}" if attempt == 1 else f"attempt {attempt}, at {address}"
                    raise from_rpc_error(
                        code,
                        details,
                        method=method,
                        write=write,
                        context=where,
                        retry_after=retry_after,
                    ) from exc
                # A read that gave up reports why the router could not serve
                # it; a write reports the deadline, since it may yet apply.
                raise from_rpc_error(
                    grpc.StatusCode.DEADLINE_EXCEEDED if write else grpc.StatusCode.UNAVAILABLE,
                    unavailable,
                    method=method,
                    write=write,
                    context=f"gave up after {attempt} attempts in {budget:g} s, "
                    f"the last at {address}",
                ) from exc


def _added_group(plan: cluster_pb2.ClusterMap) -> int | None:
    """The one group a planned ``add_group`` puts on the ring, if the plan says which."""
    before = {entry.group_id for entry in plan.ring.groups}
    added = {entry.group_id for entry in plan.migration.target.groups} - before
    return added.pop() if len(added) == 1 else None


def _retry_after(error: grpc.aio.AioRpcError) -> float | None:
    """A RESOURCE_EXHAUSTED's ``retry-after-ms`` hint, in seconds; None without one."""
    # The stubs type the metadata as one item; under grpc.aio it is (key, value) pairs.
    pairs = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in pairs:
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, int(value)) / 1000
            except ValueError:
                return None
    return None


def _progress_callback(
    progress: Progress, line: _ProgressLine | None
) -> Callable[[int, int | None], object] | None:
    if line is not None:
        return line
    if progress is False:
        return None
    if progress is True or not callable(progress):
        raise TypeError(f"progress must be a bool or a callable(done, total), not {progress!r}")
    return progress


def _scan_request(
    prefix: Key | None, start: Key | None, end: Key | None, limit: int | None, page_size: int
) -> router_pb2.ScanKeysRequest:
    """The first page's request; checks the arguments so that ``scan`` fails when called."""
    _positive("page_size", page_size)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
    if prefix is not None:
        if start is not None or end is not None:
            raise ValueError("scan takes a prefix or a start and end, not both")
        return router_pb2.ScanKeysRequest(prefix=_to_bytes(prefix, "prefix"))
    return router_pb2.ScanKeysRequest(
        start=b"" if start is None else _to_bytes(start, "start"),
        end=b"" if end is None else _to_bytes(end, "end"),
    )


async def _flatten(
    pages: AsyncIterator[list[tuple[bytes, bytes]]],
) -> AsyncIterator[tuple[bytes, bytes]]:
    async for page in pages:
        for pair in page:
            yield pair


def _put_many_requests(
    pairs: Iterable[tuple[Key, Key]], batch_size: int
) -> Iterator[router_pb2.PutManyRequest]:
    request = router_pb2.PutManyRequest()
    add = request.items.add
    for pair in pairs:
        key, value = pair
        add(key=_key(key), value=_to_bytes(value, "a value"))
        if len(request.items) == batch_size:
            yield request
            request = router_pb2.PutManyRequest()
            add = request.items.add
    if request.items:
        yield request


# -- the blocking face --------------------------------------------------------------


class Client:
    """The blocking client: an ``AsyncClient`` on a private event loop in a daemon thread.

    ``with Client("127.0.0.1:7000") as client: client.put("k", "v")``. Every
    method has the ``AsyncClient`` method's arguments and meaning.
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        tls: TlsFiles | None = None,
        token: str | None = None,
    ) -> None:
        # Made first, so that bad arguments raise before a thread exists.
        self._async = AsyncClient(addresses, timeout=timeout, retry=retry, tls=tls, token=token)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="shardkv-client", daemon=True)
        self._closed = False
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coroutine.close()
            raise RuntimeError("the shardkv client is closed")
        if threading.get_ident() == self._thread.ident:
            coroutine.close()
            raise RuntimeError("a Client cannot be called from its own callbacks (progress)")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted while waiting (Ctrl-C): do not leave the call running.
            future.cancel()
            raise

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._async.addresses

    @property
    def client_id(self) -> int:
        return self._async.client_id

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels and stop the thread. Closing twice is harmless."""
        if self._closed:
            return
        try:
            self._run(self._async.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def get(self, key: Key, *, timeout: float | None = None) -> bytes | None:
        return self._run(self._async.get(key, timeout=timeout))

    def put(self, key: Key, value: Key, *, timeout: float | None = None) -> None:
        self._run(self._async.put(key, value, timeout=timeout))

    def delete(self, key: Key, *, timeout: float | None = None) -> bool:
        return self._run(self._async.delete(key, timeout=timeout))

    def get_kv(self, key: Key, *, timeout: float | None = None) -> KeyValue | None:
        return self._run(self._async.get_kv(key, timeout=timeout))

    def cas(
        self, key: Key, expected: Key | None, value: Key, *, timeout: float | None = None
    ) -> bool:
        return self._run(self._async.cas(key, expected, value, timeout=timeout))

    def txn(
        self,
        compares: Iterable[kv_pb2.Compare],
        then_ops: Iterable[kv_pb2.Operation],
        else_ops: Iterable[kv_pb2.Operation] = (),
        *,
        conflict_retries: int = DEFAULT_CONFLICT_RETRIES,
        timeout: float | None = None,
    ) -> TxnResult:
        return self._run(
            self._async.txn(
                compares,
                then_ops,
                else_ops,
                conflict_retries=conflict_retries,
                timeout=timeout,
            )
        )

    def transaction(self, retries: int = 0, *, timeout: float | None = None) -> TransactionScope:
        """As ``AsyncClient.transaction``: ``with client.transaction() as t:``, or a decorator."""
        return TransactionScope(
            self, retries=retries, timeout=timeout, backoff=self._async._backoff
        )

    def list_transactions(self, *, timeout: float | None = None) -> list[router_pb2.TxnSummary]:
        return self._run(self._async.list_transactions(timeout=timeout))

    def show_transaction(
        self, txn_id: str, *, timeout: float | None = None
    ) -> router_pb2.ShowTxnResponse:
        return self._run(self._async.show_transaction(txn_id, timeout=timeout))

    def resolve_transaction(
        self, txn_id: str, commit: bool, *, timeout: float | None = None
    ) -> kv_pb2.TxnRecord:
        return self._run(self._async.resolve_transaction(txn_id, commit, timeout=timeout))

    def add_group(
        self,
        weight: int = 1,
        nodes: Sequence[int] | None = None,
        group_id: int = 0,
        dry_run: bool = False,
        *,
        max_keys_per_second: int = 0,
        timeout: float | None = None,
    ) -> cluster_pb2.ClusterMap:
        return self._run(
            self._async.add_group(
                weight,
                nodes,
                group_id,
                dry_run,
                max_keys_per_second=max_keys_per_second,
                timeout=timeout,
            )
        )

    def remove_group(
        self,
        group_id: int,
        dry_run: bool = False,
        *,
        max_keys_per_second: int = 0,
        timeout: float | None = None,
    ) -> cluster_pb2.ClusterMap:
        return self._run(
            self._async.remove_group(
                group_id, dry_run, max_keys_per_second=max_keys_per_second, timeout=timeout
            )
        )

    def set_weight(
        self,
        group_id: int,
        weight: int,
        dry_run: bool = False,
        *,
        max_keys_per_second: int = 0,
        timeout: float | None = None,
    ) -> cluster_pb2.ClusterMap:
        return self._run(
            self._async.set_weight(
                group_id,
                weight,
                dry_run,
                max_keys_per_second=max_keys_per_second,
                timeout=timeout,
            )
        )

    def set_move_rate(
        self, max_keys_per_second: int, *, timeout: float | None = None
    ) -> cluster_pb2.ClusterMap:
        return self._run(self._async.set_move_rate(max_keys_per_second, timeout=timeout))

    def move_replica(
        self,
        group_id: int,
        from_node: int,
        to_node: int,
        dry_run: bool = False,
        *,
        timeout: float | None = None,
    ) -> cluster_pb2.ClusterMap:
        return self._run(
            self._async.move_replica(group_id, from_node, to_node, dry_run, timeout=timeout)
        )

    def remove_node(
        self, node_id: int, dry_run: bool = False, *, timeout: float | None = None
    ) -> cluster_pb2.ClusterMap:
        return self._run(self._async.remove_node(node_id, dry_run, timeout=timeout))

    def transfer_leader(
        self, group_id: int, to_node: int, dry_run: bool = False, *, timeout: float | None = None
    ) -> cluster_pb2.ClusterMap:
        return self._run(self._async.transfer_leader(group_id, to_node, dry_run, timeout=timeout))

    def rebalance_replicas(
        self, dry_run: bool = False, *, timeout: float | None = None
    ) -> cluster_pb2.ClusterMap:
        return self._run(self._async.rebalance_replicas(dry_run, timeout=timeout))

    def put_many(
        self,
        items: Mapping[_KeyT, _ValueT] | Iterable[tuple[Key, Key]],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress = False,
        timeout: float | None = None,
    ) -> int:
        """As ``AsyncClient.put_many``; items are read and progress called on the client thread."""
        return self._run(
            self._async.put_many(
                items,
                batch_size=batch_size,
                concurrency=concurrency,
                progress=progress,
                timeout=timeout,
            )
        )

    def get_many(
        self,
        keys: Iterable[Key],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float | None = None,
    ) -> dict[bytes, bytes]:
        return self._run(
            self._async.get_many(
                keys, batch_size=batch_size, concurrency=concurrency, timeout=timeout
            )
        )

    def scan(
        self,
        prefix: Key | None = None,
        start: Key | None = None,
        end: Key | None = None,
        limit: int | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout: float | None = None,
    ) -> Generator[tuple[bytes, bytes], None, None]:
        """As ``AsyncClient.scan``; ``close()`` the generator to stop early before its end."""
        request = _scan_request(prefix, start, end, limit, page_size)
        # Pages cross the thread boundary, not single keys: one hop per page.
        return self._iterate(self._async._scan_pages(request, limit, page_size, timeout))

    def _iterate(
        self, pages: AsyncGenerator[list[tuple[bytes, bytes]], None]
    ) -> Generator[tuple[bytes, bytes], None, None]:
        try:
            while True:
                page = self._run(_next_page(pages))
                if page is None:
                    return
                yield from page
        finally:
            if not self._closed:
                self._run(pages.aclose())

    def status(self, *, timeout: float | None = None) -> router_pb2.ClusterStatusResponse:
        return self._run(self._async.status(timeout=timeout))


async def _next_page(
    pages: AsyncGenerator[list[tuple[bytes, bytes]], None],
) -> list[tuple[bytes, bytes]] | None:
    return await anext(pages, None)
