"""The consistent-hash ring: which data group owns a key, in one epoch.

``build_ring(ring)`` turns a ``Ring`` (an epoch and group weights, as the meta
group holds it) into a ``KeyRing``, the same way in every process: routers
route with it, and data groups refuse keys it does not give them. It is the
one place that decides ownership, so it is pure and shared.

- uhashring (ketama-style md5 ring) over the group ids as strings, with
  their weights: a group of weight 2 gets twice the points, and adding a group
  moves keys only to it.
- Keys are bytes. uhashring hashes ``str(key)``, so a key is first made a
  string one way only: decoded as Latin-1 (every byte one character, so
  distinct keys stay distinct and ``b"a"`` and ``"a"`` never differ).
- Groups of weight 0 are off the ring; a ring with no group owns nothing
  (``group_for`` raises ``LookupError``).
- ``group_for`` is uhashring's lookup (md5 of the key's string, the first
  ring point above it, wrapping around) done over the ring's points with
  ``bisect``, which is about three times faster than asking uhashring for
  every key; a test holds the two to the same answer.
"""

from __future__ import annotations

import bisect
import copy
import functools
import hashlib
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from uhashring import HashRing

from shardkv.v1 import cluster_pb2

__all__ = [
    "KeyRing",
    "Routing",
    "build_ring",
    "map_order",
    "moving_keys",
    "moving_shares",
    "normalise_key",
    "ring_digest",
    "ring_of",
    "ring_position",
]


def normalise_key(key: bytes) -> str:
    """The one string form of a key the ring hashes."""
    return key.decode("latin-1")


def _md5_of_choice() -> Callable[[bytes], Any]:
    """CPython's own md5 (no OpenSSL object per call: about 40% faster on keys
    this short, and a migration hashes every key of a group); else hashlib's."""
    try:
        return importlib.import_module("_md5").md5  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        return hashlib.md5


_md5 = _md5_of_choice()


def ring_digest(key: bytes) -> bytes:
    """``ring_position`` as the 16 bytes it is read from (big-endian: digests compare
    as the positions do)."""
    # An ASCII key's string form encodes back to the same bytes: hash them as they are.
    text = key if key.isascii() else normalise_key(key).encode("utf-8")
    digest: bytes = _md5(text).digest()
    return digest


def ring_position(key: bytes) -> int:
    """Where ``key`` falls on every ring (hash it once to ask several rings)."""
    return int.from_bytes(ring_digest(key), "big")


class KeyRing:
    """The ring of one epoch. Build it with ``build_ring``."""

    def __init__(self, epoch: int, weights: Mapping[int, int]) -> None:
        self.epoch = epoch
        self.weights = {group: weight for group, weight in sorted(weights.items()) if weight > 0}
        ring = HashRing(
            nodes={str(group): {"weight": weight} for group, weight in self.weights.items()}
        )
        points = ring.get_points()
        self._positions = [position for position, _ in points]
        self._owners = [int(name) for _, name in points]

    def __repr__(self) -> str:
        return f"KeyRing(epoch={self.epoch}, weights={self.weights})"

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(self.weights)

    def group_for(self, key: bytes) -> int:
        return self.owner_at(ring_position(key))

    def owners(self) -> Callable[[int], int]:
        """``owner_at`` as a plain function over this ring's points, for hot loops."""
        if not self.weights:
            raise LookupError(f"the ring of epoch {self.epoch} has no groups")
        positions, owners, last = self._positions, self._owners, len(self._owners)
        find = bisect.bisect

        def owner_at(position: int) -> int:
            index = find(positions, position)
            return owners[index if index < last else 0]

        return owner_at

    def owner_at(self, position: int) -> int:
        """The group owning a ring position (``ring_position``)."""
        if not self.weights:
            raise LookupError(f"the ring of epoch {self.epoch} has no groups")
        index = bisect.bisect(self._positions, position)
        return self._owners[index if index < len(self._owners) else 0]

    def points(self) -> tuple[list[int], list[int]]:
        """The ring's sorted positions and the group owning each (for ``moving_shares``)."""
        return self._positions, self._owners

    def shares(self) -> dict[int, float]:
        """Each group's fraction of the ring's positions, summing to 1."""
        if not self._positions:
            return {}
        space = 1 << 128  # md5 positions
        owned = dict.fromkeys(self.weights, 0)
        previous = self._positions[-1] - space  # the arc that wraps around to the first point
        for position, group in zip(self._positions, self._owners, strict=True):
            owned[group] += position - previous
            previous = position
        return {group: span / space for group, span in owned.items()}


def moving_keys(
    ring: KeyRing, target_ring: KeyRing, source: int, target: int, *, skip: int = 0
) -> Callable[[Iterable[bytes]], list[bytes]]:
    """A function giving, of the keys it is given, the ones that move from
    ``source`` to ``target`` when ``ring`` becomes ``target_ring``, in their
    order: one bisect per key, in one call for many (a scan of a whole group
    runs it on every key). With ``skip``, each key given has that many bytes
    before the key to hash (an engine key's group prefix)."""
    flags, digests = _moving_table(ring, target_ring, source, target)
    find, md5 = bisect.bisect, _md5

    def select(keys: Iterable[bytes]) -> list[bytes]:
        # ring_digest inlined for ASCII keys: a call less per key of the group.
        return [
            key
            for key in keys
            if flags[
                find(
                    digests,
                    md5(rest).digest() if (rest := key[skip:]).isascii() else ring_digest(rest),
                )
            ]
        ]

    return select


def _moving_table(
    ring: KeyRing, target_ring: KeyRing, source: int, target: int
) -> tuple[list[bool], list[bytes]]:
    """The points of both rings together, as digests, and whether a position
    found just below each (``bisect``) moves from ``source`` to ``target``.

    Between two consecutive points of the two rings together both owners stay
    the same, so one bisect over the union finds whether a position moves.
    """
    old_owner, new_owner = ring.owners(), target_ring.owners()
    union = sorted(set(ring.points()[0]) | set(target_ring.points()[0]))
    # A position p finds bisect(union, p) = i: it lies in [union[i-1], union[i]),
    # where both rings answer as they do for union[i-1] (or for 0, when i is 0).
    flags = [old_owner(start) == source and new_owner(start) == target for start in [0, *union]]
    # Bisected as digests (``ring_digest``): no integer made per key.
    return flags, [point.to_bytes(16, "big") for point in union]


def build_ring(ring: cluster_pb2.Ring) -> KeyRing:
    """The ``KeyRing`` of a stored ``Ring``: the same in every process.

    Cached by content: a map whose version rises (a move's progress) keeps
    its rings, and building one costs milliseconds.
    """
    return _build_ring(ring.epoch, tuple((entry.group_id, entry.weight) for entry in ring.groups))


@functools.lru_cache(maxsize=64)
def _build_ring(epoch: int, weights: tuple[tuple[int, int], ...]) -> KeyRing:
    return KeyRing(epoch, dict(weights))


def map_order(cluster_map: cluster_pb2.ClusterMap) -> tuple[int, int]:
    """How new a cluster map is: its ring's epoch, then its version."""
    return cluster_map.ring.epoch, cluster_map.version


def ring_of(epoch: int, weights: Mapping[int, int]) -> cluster_pb2.Ring:
    """The stored form of a ring: groups sorted, weight 0 left out."""
    return cluster_pb2.Ring(
        epoch=epoch,
        groups=[
            cluster_pb2.GroupWeight(group_id=group, weight=weight)
            for group, weight in sorted(weights.items())
            if weight > 0
        ],
    )


_SPACE = 1 << 128  # md5 positions


def moving_shares(old: KeyRing, new: KeyRing) -> dict[tuple[int, int], float]:
    """The fraction of the ring that changes owner from ``old`` to ``new``, per (source, target).

    Exact: the union of both rings' points cuts the ring into segments on
    which each ring has one owner (a position's owner is the first point
    above it), and every segment whose owners differ moves.
    """
    old_positions, old_owners = old.points()
    new_positions, new_owners = new.points()
    if not old_positions or not new_positions:
        return {}
    cuts = sorted(set(old_positions) | set(new_positions))
    moved: dict[tuple[int, int], float] = {}
    previous = cuts[-1] - _SPACE
    for cut in cuts:
        # Positions in [previous, cut) go to the first point at or above cut.
        source = old_owners[bisect.bisect_left(old_positions, cut) % len(old_owners)]
        target = new_owners[bisect.bisect_left(new_positions, cut) % len(new_owners)]
        if source != target:
            moved[(source, target)] = moved.get((source, target), 0.0) + (cut - previous) / _SPACE
        previous = cut
    return moved


class Routing:
    """Which group serves each key under one cluster map: its ring and the migration under way.

    Without a migration, the ring's owner. During one (``ClusterMap.migration``),
    a key whose owner differs between the ring and the migration's target ring
    goes to the target group once that move is ``MOVE_ACTIVE`` (the target
    serves it), and to the source before. Data groups decide the same from
    what they applied (``shardkv.fsm.migration``), so a router with an older
    map is refused (WRONG_GROUP) and learns.
    """

    def __init__(self, cluster_map: cluster_pb2.ClusterMap) -> None:
        self.ring = build_ring(cluster_map.ring)
        self.epoch = self.ring.epoch
        self.version = cluster_map.version
        self.target: KeyRing | None = None
        self.active: frozenset[tuple[int, int]] = frozenset()
        # Of ``active``, the moves a group said are active before the map did.
        self.told: frozenset[tuple[int, int]] = frozenset()
        if cluster_map.HasField("migration"):
            migration = cluster_map.migration
            self.target = build_ring(migration.target)
            self.active = frozenset(
                (move.source, move.target)
                for move in migration.moves
                if move.phase >= cluster_pb2.MOVE_ACTIVE
            )

    def __repr__(self) -> str:
        return f"Routing(ring={self.ring!r}, target={self.target!r}, active={sorted(self.active)})"

    def with_active(self, source: int, target: int) -> Routing:
        """This routing with the move ``source -> target`` taken as active (a group said
        the key moved there before the map did); ``self`` when it is already."""
        if self.target is None or (source, target) in self.active:
            return self
        routing = copy.copy(self)
        routing.active = self.active | {(source, target)}
        routing.told = self.told | {(source, target)}
        return routing

    def keeping(self, before: Routing | None) -> Routing:
        """This routing, also taking as active the moves a group said are (``before``'s
        ``told``), when both are of the same migration: a source that said its keys
        moved (``with_active``) never serves them again in that migration, so a
        newer map of it that does not say so yet (a move's progress changes the
        map often) must not send them back there."""
        if (
            before is None
            or self.target is None
            or before.target is None
            or (before.epoch, before.target.epoch) != (self.epoch, self.target.epoch)
            or before.told <= self.active
        ):
            return self
        routing = copy.copy(self)
        routing.told = before.told - self.active
        routing.active = self.active | routing.told
        return routing

    @property
    def groups(self) -> tuple[int, ...]:
        """Every group that may serve keys now (the ring's, and a migration's targets)."""
        if self.target is None:
            return self.ring.groups
        return tuple(sorted(set(self.ring.groups) | set(self.target.groups)))

    def group_for(self, key: bytes) -> int:
        if not self.active or self.target is None:
            return self.ring.group_for(key)
        position = ring_position(key)
        owner = self.ring.owner_at(position)
        moved_to = self.target.owner_at(position)
        if moved_to != owner and (owner, moved_to) in self.active:
            return moved_to
        return owner

    def route(self, key: bytes) -> tuple[int, bool]:
        """``group_for(key)``, and whether the key goes there only on a group's word
        (``with_active``): its move is switching over, the target may not serve
        it yet."""
        if not self.told or self.target is None:
            return self.group_for(key), False
        position = ring_position(key)
        owner = self.ring.owner_at(position)
        moved_to = self.target.owner_at(position)
        if moved_to != owner and (owner, moved_to) in self.active:
            return moved_to, (owner, moved_to) in self.told
        return owner, False

    def shares(self) -> dict[int, float]:
        """Each group's fraction of the ring it serves now (moved arcs counted at their target)."""
        shares = dict.fromkeys(self.groups, 0.0)
        shares.update(self.ring.shares())
        if self.target is not None and self.active:
            for (source, target), share in moving_shares(self.ring, self.target).items():
                if (source, target) in self.active:
                    shares[source] -= share
                    shares[target] = shares.get(target, 0.0) + share
        return shares
