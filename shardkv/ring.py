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
import hashlib
from collections.abc import Mapping

from uhashring import HashRing

from shardkv.v1 import cluster_pb2

__all__ = ["KeyRing", "build_ring", "map_order", "normalise_key", "ring_of"]


def normalise_key(key: bytes) -> str:
    """The one string form of a key the ring hashes."""
    return key.decode("latin-1")


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
        if not self.weights:
            raise LookupError(f"the ring of epoch {self.epoch} has no groups")
        digest = hashlib.md5(normalise_key(key).encode("utf-8")).digest()
        index = bisect.bisect(self._positions, int.from_bytes(digest, "big"))
        return self._owners[index if index < len(self._owners) else 0]

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


def build_ring(ring: cluster_pb2.Ring) -> KeyRing:
    """The ``KeyRing`` of a stored ``Ring``: the same in every process."""
    return KeyRing(ring.epoch, {entry.group_id: entry.weight for entry in ring.groups})


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
