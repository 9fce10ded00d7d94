"""Leases at the router: grant, keep-alive, revoke, time-to-live, and deleting what an ended
lease held (``shardkv.leases`` says what a lease is in the key space).

- **grant**: a transaction that creates the lease's record only if its key
  is absent (create revision 0), so a chosen id is granted once. An id of 0
  gets a random one (63 bits: etcd's ids are positive int64). The TTL is
  raised to ``MIN_TTL``, as etcd does.
- **attach** (a put with a lease): the key is written with the lease in
  the same transaction as its index entry, under a compare that the lease's
  record has version 1 (alive: ``attach_compare``). The compare locks the
  record while the transaction prepares, so no attach slips past an expiry
  or a revoke.
- **keep-alive** and **time-to-live** ask the owner group's leader
  (``Node.Lease``), which keeps the deadlines.
- **revoke**: the record is set to REVOKED if it is alive, then reaped.
- **reap** (an expired or revoked lease): the index entries are scanned
  across groups, the keys they name read, and one transaction deletes the
  keys whose record still names the lease (their mod revision unchanged
  since read), every index entry and the lease's record: atomic across
  every group holding them. If something changed meanwhile the compares
  fail and it starts over. A lease with more than ``REAP_WIDTH`` keys is
  reaped in transactions of that many keys (each atomic, the record last).
- **LeaseReaper**: every router reaps, every ``interval`` seconds, the
  ended leases it finds (a scan of the lease records of every group).
  Routers that race over one lease are harmless: one transaction wins, the
  others find the record gone. A router that dies midway leaves the rest
  to the next pass of any router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

import grpc

from router.groups import RouteError
from router.service import RouterService
from shardkv.errors import InvalidArgument
from shardkv.leases import (
    LEASE_PREFIX,
    MAX_TTL,
    MIN_TTL,
    LeaseRecord,
    LeaseState,
    attached_prefix,
    attached_user_key,
    lease_id_of,
    lease_key,
)
from shardkv.storage.keys import prefix_end
from shardkv.v1 import kv_pb2, router_pb2

__all__ = [
    "REAP_INTERVAL",
    "REAP_WIDTH",
    "Lease",
    "LeaseExists",
    "LeaseNotFound",
    "LeaseReaper",
    "Leases",
    "attach_compare",
]

_log = logging.getLogger(__name__)

REAP_INTERVAL = 0.5
# Keys deleted by one reaping transaction (each costs a compare and two deletes).
REAP_WIDTH = 3000
_REAP_ATTEMPTS = 20
# How long the reaper gives the listing, and each lease.
_PASS_TIMEOUT = 30.0


class LeaseNotFound(RouteError):
    code = grpc.StatusCode.NOT_FOUND


class LeaseExists(RouteError):
    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True, slots=True)
class Lease:
    lease_id: int
    ttl: int
    # Seconds left at the owner's leader; -1 once it ended (expired or revoked).
    remaining: int
    keys: tuple[bytes, ...] = ()


def attach_compare(lease_id: int) -> kv_pb2.Compare:
    """The compare a transaction that attaches a key to ``lease_id`` carries: alive."""
    return kv_pb2.Compare(
        key=lease_key(lease_id),
        target=kv_pb2.Compare.VERSION,
        operator=kv_pb2.Compare.EQUAL,
        number=1,
    )


class Leases:
    """The lease operations over a router's ``RouterService``; see the module docstring."""

    def __init__(self, service: RouterService) -> None:
        self.service = service

    async def grant(self, lease_id: int, ttl: int, deadline: float) -> tuple[int, int]:
        """The lease's id and TTL; ``LeaseExists`` if the id is taken."""
        if ttl > MAX_TTL:
            raise InvalidArgument(f"etcdserver: too large lease TTL (at most {MAX_TTL} s)")
        if lease_id < 0:
            raise InvalidArgument("a lease id is positive")
        ttl = max(ttl, MIN_TTL)
        chosen = lease_id or random.randrange(1, 1 << 63)
        key = lease_key(chosen)
        absent = kv_pb2.Compare(
            key=key, target=kv_pb2.Compare.CREATE_REVISION, operator=kv_pb2.Compare.EQUAL
        )
        granted = int(time.time() * 1_000_000)
        record = kv_pb2.Put(key=key, value=LeaseRecord(ttl, granted=granted).encode())
        answer = await self.service.txn(
            router_pb2.TxnRequest(compares=[absent], success=[kv_pb2.Operation(put=record)]),
            deadline,
        )
        if not answer.succeeded:
            if lease_id:
                raise LeaseExists("etcdserver: lease already exists")
            return await self.grant(0, ttl, deadline)  # a random id taken: draw again
        return chosen, ttl

    async def keep_alive(self, lease_id: int, deadline: float) -> int | None:
        """The TTL granted again, or None: the lease is not found (or ended)."""
        answer = await self.service.lease(lease_id, True, deadline)
        return answer.ttl if answer.found else None

    async def time_to_live(self, lease_id: int, with_keys: bool, deadline: float) -> Lease | None:
        """The lease as its owner sees it, or None: never granted, or reaped."""
        answer = await self.service.lease(lease_id, False, deadline)
        if answer.found:
            remaining = max(0, (answer.remaining_ms + 999) // 1000)
            ttl = answer.ttl
        else:
            kv = await self.service.get_kv(lease_key(lease_id), deadline)
            record = LeaseRecord.of(kv.value if kv is not None else None)
            if record is None:
                return None
            ttl, remaining = record.ttl, -1
        keys: tuple[bytes, ...] = ()
        if with_keys:
            keys = tuple(await self._attached(lease_id, deadline))
        return Lease(lease_id, ttl, remaining, keys)

    async def leases(self, deadline: float) -> list[int]:
        """The ids of every alive lease, in order."""
        return [i for i, state in await self._records(deadline) if state == LeaseState.ALIVE]

    async def ended(self, deadline: float) -> list[int]:
        """The ids of the leases that ended (expired or revoked) and are not reaped yet."""
        return [i for i, state in await self._records(deadline) if state != LeaseState.ALIVE]

    async def _records(self, deadline: float) -> list[tuple[int, LeaseState]]:
        found = []
        for kv in await self._scan_prefix(LEASE_PREFIX, deadline):
            record = LeaseRecord.of(kv.value)
            if record is not None:
                with contextlib.suppress(ValueError):
                    found.append((lease_id_of(kv.key), record.state))
        return sorted(found)

    async def revoke(self, lease_id: int, deadline: float) -> int:
        """End the lease and delete its keys; the revision of the deletion.
        ``LeaseNotFound`` if there is no such lease."""
        key = lease_key(lease_id)
        kv = await self.service.get_kv(key, deadline)
        record = LeaseRecord.of(kv.value if kv is not None else None)
        if record is None:
            raise LeaseNotFound("etcdserver: requested lease not found")
        if record.state == LeaseState.ALIVE:
            revoked = kv_pb2.Put(key=key, value=record.ended(LeaseState.REVOKED).encode())
            await self.service.txn(
                router_pb2.TxnRequest(
                    compares=[attach_compare(lease_id)], success=[kv_pb2.Operation(put=revoked)]
                ),
                deadline,
            )
        revision = await self.reap(lease_id, deadline)
        if revision is None:
            raise LeaseNotFound("etcdserver: requested lease not found")
        return revision

    async def reap(self, lease_id: int, deadline: float) -> int | None:
        """Delete an ended lease's keys, index and record (see the module docstring); the
        revision it was done at (0: an earlier reaper did it), or None if still alive."""
        key = lease_key(lease_id)
        failures = 0
        while failures < _REAP_ATTEMPTS:
            lease = await self.service.get_kv(key, deadline)
            if lease is None:
                return 0
            record = LeaseRecord.of(lease.value)
            if record is None or record.state == LeaseState.ALIVE:
                return None
            indexed = await self._indexed(lease_id, REAP_WIDTH + 1, deadline)
            chunk, last = indexed[:REAP_WIDTH], len(indexed) <= REAP_WIDTH
            request = router_pb2.TxnRequest(compares=[_same(key, lease.mod_revision)])
            for index, user_key, kv in chunk:
                request.compares.append(_same(user_key, kv.mod_revision if kv else 0))
                if kv is not None and kv.lease == lease_id:
                    request.success.append(kv_pb2.Operation(delete=kv_pb2.Delete(key=user_key)))
                request.success.append(kv_pb2.Operation(delete=kv_pb2.Delete(key=index.key)))
            if last:
                request.success.append(kv_pb2.Operation(delete=kv_pb2.Delete(key=key)))
            try:
                answer = await self.service.txn(request, deadline)
            except RouteError as error:
                if error.code != grpc.StatusCode.ABORTED:
                    raise
                failures += 1
                continue  # met another transaction: read again
            if not answer.succeeded:
                failures += 1  # something changed since it was read: read again
            elif last:
                return answer.revision
        raise RouteError(f"lease {lease_id:x} changed under every attempt to reap it; retry")

    async def _attached(self, lease_id: int, deadline: float) -> list[bytes]:
        """The keys attached to the lease now (index entries whose key still names it)."""
        indexed = await self._indexed(lease_id, None, deadline)
        return [user_key for _, user_key, kv in indexed if kv and kv.lease == lease_id]

    async def _indexed(
        self, lease_id: int, most: int | None, deadline: float
    ) -> list[tuple[kv_pb2.KeyValue, bytes, kv_pb2.KeyValue | None]]:
        """The lease's index entries (the first ``most``), each with the key it names
        and that key as it is now."""
        indexed = (await self._scan_prefix(attached_prefix(lease_id), deadline))[:most]
        users = [attached_user_key(index.key) for index in indexed]
        current = await asyncio.gather(*(self.service.get_kv(k, deadline) for k in users))
        return list(zip(indexed, users, current, strict=True))

    async def _scan_prefix(self, prefix: bytes, deadline: float) -> list[kv_pb2.KeyValue]:
        return await self.service.scan_all(prefix, prefix_end(prefix), deadline)


def _same(key: bytes, mod_revision: int) -> kv_pb2.Compare:
    return kv_pb2.Compare(
        key=key,
        target=kv_pb2.Compare.MOD_REVISION,
        operator=kv_pb2.Compare.EQUAL,
        number=mod_revision,
    )


class LeaseReaper:
    """Reaps ended leases every ``interval`` seconds (see the module docstring)."""

    def __init__(self, leases: Leases, interval: float = REAP_INTERVAL) -> None:
        self.leases = leases
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="router-lease-reaper")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def pass_once(self) -> int:
        """Reap every ended lease found; how many were reaped. Each lease on its own
        deadline, and one that fails does not hold the others up."""
        loop = asyncio.get_running_loop()
        done = 0
        for lease_id in await self.leases.ended(loop.time() + _PASS_TIMEOUT):
            try:
                if await self.leases.reap(lease_id, loop.time() + _PASS_TIMEOUT) is not None:
                    done += 1
            except (RouteError, InvalidArgument) as error:
                _log.info(
                    "reaping lease %x failed (the next pass tries again): %s", lease_id, error
                )
        return done

    async def _run(self) -> None:
        while True:
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the next pass tries again
                _log.info("reaping ended leases failed: %s", error)
            await asyncio.sleep(self.interval)
