"""The ring: the same in every process, weighted, and minimal movement; what a
ring change moves (``moving_shares``) and where keys go during one (``Routing``)."""

from __future__ import annotations

import collections
import hashlib
import random
import subprocess
import sys

import pytest
from uhashring import HashRing

from shardkv.ring import (
    KeyRing,
    Routing,
    build_ring,
    moving_shares,
    normalise_key,
    ring_digest,
    ring_of,
    ring_position,
)
from shardkv.v1 import cluster_pb2

KEYS = [b"key-%d" % number for number in range(20_000)]


def test_the_same_ring_in_another_process() -> None:
    ring = build_ring(ring_of(3, {1: 1, 2: 1, 3: 2, 9: 1}))
    here = [ring.group_for(key) for key in KEYS[:2000]]
    script = (
        "from shardkv.ring import build_ring, ring_of\n"
        "ring = build_ring(ring_of(3, {9: 1, 3: 2, 2: 1, 1: 1}))\n"
        "print(','.join(str(ring.group_for(b'key-%d' % n)) for n in range(2000)))\n"
    )
    # Another interpreter, with another hash seed: nothing may depend on either.
    there = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert there == ",".join(map(str, here))


def test_every_group_gets_a_share_near_its_weight() -> None:
    ring = KeyRing(1, {1: 1, 2: 1, 3: 2})
    counts = collections.Counter(ring.group_for(key) for key in KEYS)
    assert set(counts) == {1, 2, 3}
    assert 0.35 < counts[3] / len(KEYS) < 0.65, "weight 2 of 4"
    shares = ring.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    for group, share in shares.items():
        assert share == pytest.approx(counts[group] / len(KEYS), abs=0.03)


def test_adding_a_group_moves_keys_only_to_it() -> None:
    before = KeyRing(1, {1: 1, 2: 1, 3: 1, 4: 1})
    after = KeyRing(2, {1: 1, 2: 1, 3: 1, 4: 1, 5: 1})
    moved = [key for key in KEYS if before.group_for(key) != after.group_for(key)]
    assert all(after.group_for(key) == 5 for key in moved)
    assert 0.1 < len(moved) / len(KEYS) < 0.3, "about a fifth moves"


def test_weight_zero_is_off_the_ring_and_an_empty_ring_owns_nothing() -> None:
    ring = build_ring(ring_of(4, {1: 1, 2: 0}))
    assert ring.groups == (1,)
    assert [entry.group_id for entry in ring_of(4, {2: 0, 1: 1}).groups] == [1]
    assert {ring.group_for(key) for key in KEYS[:500]} == {1}
    with pytest.raises(LookupError):
        KeyRing(5, {}).group_for(b"k")


def test_keys_are_bytes_normalised_one_way() -> None:
    ring = KeyRing(1, {1: 1, 2: 1, 3: 1})
    assert normalise_key(b"\xff\x00a") == "\xff\x00a"
    # Distinct bytes stay distinct, even those that are not UTF-8.
    assert len({normalise_key(bytes([byte])) for byte in range(256)}) == 256
    assert ring.group_for(b"\xff" * 10) in (1, 2, 3)


def test_the_fast_lookup_is_uhashrings_own() -> None:
    weights = {1: 1, 2: 3, 5: 2, 11: 1}
    ring = KeyRing(9, weights)
    reference = HashRing(nodes={str(group): {"weight": w} for group, w in weights.items()})
    keys = [*KEYS, *(bytes([byte]) * 3 for byte in range(256)), b"\xff\xfe\x00 not utf-8"]
    expected = [int(reference.get_node(normalise_key(key))) for key in keys]
    assert [ring.group_for(key) for key in keys] == expected


# -- ring changes -------------------------------------------------------------------------

FOUR = dict.fromkeys((1, 2, 3, 4), 1)
FIVE = dict.fromkeys((1, 2, 3, 4, 5), 1)


def _random_keys(count: int) -> list[bytes]:
    rng = random.Random(6)
    return [rng.randbytes(rng.randint(1, 24)) for _ in range(count)]


def test_moving_shares_predicts_what_adding_a_fifth_group_moves() -> None:
    before, after = KeyRing(1, FOUR), KeyRing(2, FIVE)
    keys = _random_keys(100_000)
    moved = collections.Counter(
        (before.group_for(key), after.group_for(key))
        for key in keys
        if before.group_for(key) != after.group_for(key)
    )
    assert {target for _, target in moved} == {5}, "every moved key goes to the new group"
    assert 0.15 < moved.total() / len(keys) < 0.25, "about a fifth moves"
    shares = moving_shares(before, after)
    assert set(shares) == set(moved)
    assert sum(shares.values()) == pytest.approx(after.shares()[5], abs=1e-9)
    for pair, share in shares.items():
        assert share == pytest.approx(moved[pair] / len(keys), abs=0.01), pair


def test_moving_shares_of_removing_a_group_and_of_no_change() -> None:
    before, after = KeyRing(1, FIVE), KeyRing(2, FOUR)
    shares = moving_shares(before, after)
    assert {source for source, _ in shares} == {5}, "only the removed group's keys move"
    assert sum(shares.values()) == pytest.approx(before.shares()[5], abs=1e-9)
    assert moving_shares(before, KeyRing(2, FIVE)) == {}
    assert moving_shares(KeyRing(1, {}), before) == {}


def _map(moves: dict[tuple[int, int], cluster_pb2.MovePhase]) -> cluster_pb2.ClusterMap:
    """Ring epoch 1 of four groups, migrating to a fifth with ``moves`` in these phases."""
    the_map = cluster_pb2.ClusterMap(version=12, ring=ring_of(1, FOUR))
    the_map.migration.target.CopyFrom(ring_of(2, FIVE))
    for (source, target), phase in moves.items():
        the_map.migration.moves.add(source=source, target=target, phase=phase)
    return the_map


def test_routing_without_a_migration_is_the_ring() -> None:
    the_map = cluster_pb2.ClusterMap(version=3, ring=ring_of(1, FOUR))
    routing, ring = Routing(the_map), KeyRing(1, FOUR)
    assert (routing.epoch, routing.version, routing.groups) == (1, 3, (1, 2, 3, 4))
    assert [routing.group_for(key) for key in KEYS[:2000]] == [
        ring.group_for(key) for key in KEYS[:2000]
    ]
    assert routing.shares() == ring.shares()


def test_routing_sends_a_moving_key_to_its_target_only_once_its_move_is_active() -> None:
    before, after = KeyRing(1, FOUR), KeyRing(2, FIVE)
    phases = {
        (1, 5): cluster_pb2.MOVE_ACTIVE,
        (2, 5): cluster_pb2.MOVE_DONE,
        (3, 5): cluster_pb2.MOVE_FROZEN,
        (4, 5): cluster_pb2.MOVE_COPYING,
    }
    routing = Routing(_map(phases))
    assert routing.epoch == 1, "the epoch rises only when the whole migration is done"
    assert routing.groups == (1, 2, 3, 4, 5), "the targets serve keys too"
    for key in KEYS:
        source, target = before.group_for(key), after.group_for(key)
        served_by_target = source != target and phases[(source, target)] >= cluster_pb2.MOVE_ACTIVE
        assert routing.group_for(key) == (target if served_by_target else source), key
    shares = routing.shares()
    moving = moving_shares(before, after)
    assert shares[5] == pytest.approx(moving[(1, 5)] + moving[(2, 5)])
    assert shares[3] == pytest.approx(before.shares()[3])
    assert sum(shares.values()) == pytest.approx(1.0)


def test_routing_before_any_move_is_active_is_the_old_ring() -> None:
    routing = Routing(_map({(g, 5): cluster_pb2.MOVE_PENDING for g in FOUR}))
    ring = KeyRing(1, FOUR)
    assert [routing.group_for(key) for key in KEYS[:2000]] == [
        ring.group_for(key) for key in KEYS[:2000]
    ]
    assert routing.shares()[5] == 0.0


def test_a_newer_map_of_the_same_migration_keeps_a_move_a_source_said_it_sealed() -> None:
    """A source that named the target (``with_active``) never serves the keys again in
    that migration; a newer map that does not say the move is active yet (another
    move's progress) must not send them back there. Another migration, or none,
    starts afresh."""
    before, after = KeyRing(1, FOUR), KeyRing(2, FIVE)
    copying = {(g, 5): cluster_pb2.MOVE_COPYING for g in FOUR}
    told = Routing(_map(copying)).with_active(3, 5)
    newer_map = _map({**copying, (1, 5): cluster_pb2.MOVE_ACTIVE})
    newer_map.version = 13
    newer = Routing(newer_map).keeping(told)
    assert newer.active == {(1, 5), (3, 5)}
    assert newer.version == 13
    for key in KEYS[:4000]:
        source, target = before.group_for(key), after.group_for(key)
        moved = source != target and source in (1, 3)
        assert newer.group_for(key) == (target if moved else source), key

    # ``route`` says which keys go to their target on a group's word only.
    assert newer.told == {(3, 5)}
    for key in KEYS[:4000]:
        source, target = before.group_for(key), after.group_for(key)
        switching = source == 3 and target == 5
        assert newer.route(key) == (newer.group_for(key), switching), key
    confirmed_map = _map(
        {**copying, (1, 5): cluster_pb2.MOVE_ACTIVE, (3, 5): cluster_pb2.MOVE_ACTIVE}
    )
    confirmed = Routing(confirmed_map).keeping(newer)
    assert (confirmed.active, confirmed.told) == ({(1, 5), (3, 5)}, frozenset())
    assert not any(confirmed.route(key)[1] for key in KEYS[:4000])

    assert Routing(newer_map).keeping(None).active == {(1, 5)}
    other = _map(copying)
    other.migration.target.epoch = 3  # another migration (from the same ring)
    assert Routing(other).keeping(told).active == frozenset()
    done = cluster_pb2.ClusterMap(version=14, ring=ring_of(2, FIVE))
    assert Routing(done).keeping(told).active == frozenset()


def test_a_ring_digest_read_big_endian_is_the_ring_position() -> None:
    for key in (b"", b"a", b"bench/rebalance/00000001", "ключ".encode(), b"\xff\x00\x80"):
        assert int.from_bytes(ring_digest(key), "big") == ring_position(key)


def test_a_ring_digest_is_the_md5_uhashring_hashes() -> None:
    """Whichever md5 the ring module picked, a key's digest is md5 of its string
    form, as uhashring computes a key's position."""
    for key in (b"", b"a", b"bench/rebalance/00000001", "ключ".encode(), b"\xff\x00\x80"):
        text = normalise_key(key)
        assert ring_digest(key) == hashlib.md5(text.encode("utf-8")).digest()
        assert HashRing(nodes=["1", "2"]).get_key(text) == int.from_bytes(ring_digest(key), "big")


def test_without_cpythons_own_md5_the_ring_hashes_with_hashlib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    from shardkv import ring

    def missing(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert ring._md5_of_choice() is hashlib.md5
