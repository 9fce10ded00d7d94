"""Leases (etcd's): what a lease is in the key space, shared by the node and the router.

A lease is a record under a reserved key, ``lease_key(id)``, in the ring's
key space like any key: the group that owns that key is the lease's **owner
group**, it moves with its arc when the ring changes, and transactions over
it are the store's own (two-phase commit across groups). The record holds
the granted TTL and a state:

- ``ALIVE``, written once by the grant (so an alive lease's record has
  version 1: a put that attaches a key compares the record's version with 1
  in the same transaction, which locks the record while it prepares);
- ``EXPIRED``, written by the owner group's leader when the lease's deadline
  passed (a compare-and-set from the alive record: ``shardkv.node.leases``);
- ``REVOKED``, written by a router for a client's revoke.

A key attached to lease L stores L in its record (``KeyValue.lease``) and
has an index entry ``attached_key(L, key)`` (empty value), written in the
same transaction as the key. Once a lease is not alive, a router deletes
its attached keys whose record still names it, their index entries and the
lease record, in one transaction: atomic across every group that holds them
(``router.leases``).

Deadlines are not replicated: the owner group's leader keeps them in memory
and renews them on keep-alives. A leader that takes over (a new term, or an
arc that arrived) starts every alive lease of its group at its full TTL, so
a lease can outlive its TTL by a failover, never die before it.

Keys under ``RESERVED_PREFIX`` are the store's own: the etcd API refuses to
write them and leaves them out of ranges.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "ATTACHED_PREFIX",
    "LEASE_PREFIX",
    "MAX_TTL",
    "MIN_TTL",
    "RESERVED_PREFIX",
    "LeaseRecord",
    "LeaseState",
    "attached_key",
    "attached_prefix",
    "attached_user_key",
    "is_reserved",
    "lease_id_of",
    "lease_key",
]

RESERVED_PREFIX = b"\x00shardkv\x00"
LEASE_PREFIX = RESERVED_PREFIX + b"lease\x00"
ATTACHED_PREFIX = RESERVED_PREFIX + b"attached\x00"
# etcd's bounds: a grant below the minimum gets the minimum (etcd's is 1.5
# election timeouts, rounded up to whole seconds), above the maximum fails.
MIN_TTL = 2
MAX_TTL = 9_000_000_000

_ID = struct.Struct(">Q")
_RECORD = struct.Struct(">BQBQ")
_FORMAT = 1


class LeaseState(enum.IntEnum):
    ALIVE = 0
    EXPIRED = 1
    REVOKED = 2


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    ttl: int
    state: LeaseState = LeaseState.ALIVE
    # When it was granted (µs, the granting router's clock): a lease granted
    # again under the same id has another record, so nothing meant for the
    # old one (a deadline, an expiry in flight) applies to it.
    granted: int = 0

    def encode(self) -> bytes:
        return _RECORD.pack(_FORMAT, self.ttl, self.state, self.granted)

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord:
        """The record; ``ValueError`` if ``data`` is not one."""
        if len(data) != _RECORD.size or data[0] != _FORMAT:
            raise ValueError(f"not a lease record: {data!r}")
        _, ttl, state, granted = _RECORD.unpack(data)
        return cls(ttl, LeaseState(state), granted)

    @classmethod
    def of(cls, data: bytes | None) -> LeaseRecord | None:
        """The record, or None if there is none (or what is there is not one)."""
        try:
            return cls.decode(data) if data is not None else None
        except ValueError:
            return None

    def ended(self, state: LeaseState) -> LeaseRecord:
        return LeaseRecord(self.ttl, state, self.granted)


def lease_key(lease_id: int) -> bytes:
    return LEASE_PREFIX + _ID.pack(lease_id)


def lease_id_of(key: bytes) -> int:
    """The id in a ``lease_key``."""
    if not key.startswith(LEASE_PREFIX) or len(key) != len(LEASE_PREFIX) + _ID.size:
        raise ValueError(f"not a lease key: {key!r}")
    return int(_ID.unpack_from(key, len(LEASE_PREFIX))[0])


def attached_prefix(lease_id: int) -> bytes:
    return ATTACHED_PREFIX + _ID.pack(lease_id)


def attached_key(lease_id: int, key: bytes) -> bytes:
    return attached_prefix(lease_id) + key


def attached_user_key(index_key: bytes) -> bytes:
    """The user key an ``attached_key`` names."""
    return index_key[len(ATTACHED_PREFIX) + _ID.size :]


def is_reserved(key: bytes) -> bool:
    return key.startswith(RESERVED_PREFIX)
