"""The ring: the same in every process, weighted, and minimal movement."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest
from uhashring import HashRing

from shardkv.ring import KeyRing, build_ring, normalise_key, ring_of

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
