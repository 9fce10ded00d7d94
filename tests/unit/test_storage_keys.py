"""The storage key layout and value encodings: round trips, order, ranges, format.

Byte order of keys must be numeric order of (group, index) and (group, user
key) order, or scans and seeks would cross groups and split logs. Values must
round-trip exactly, refuse other format versions and truncation, and keep
the bytes pinned below (they are on disk: changing them needs a new version).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardkv.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMetadata
from shardkv.storage import keys, values
from shardkv.storage.errors import CorruptValue

UINT64_MAX = 2**64 - 1

uint64 = st.integers(min_value=0, max_value=UINT64_MAX)
group_ids = uint64
user_keys = st.binary(max_size=24)
conf_states = st.builds(
    ConfState,
    st.lists(uint64, max_size=7).map(tuple),
    st.lists(uint64, max_size=7).map(tuple),
)
entries = st.builds(Entry, uint64, uint64, st.sampled_from(EntryType), st.binary(max_size=64))
hard_states = st.builds(HardState, uint64, uint64, uint64)
snapshot_metadata = st.builds(SnapshotMetadata, uint64, uint64, conf_states)


# -- keys ----------------------------------------------------------------------


@given(group_ids, uint64)
def test_entry_key_round_trips(group_id: int, index: int) -> None:
    assert keys.decode_entry_key(keys.entry_key(group_id, index)) == (group_id, index)


@given(group_ids, user_keys)
def test_data_key_round_trips(group_id: int, user_key: bytes) -> None:
    assert keys.decode_data_key(keys.data_key(group_id, user_key)) == (group_id, user_key)


@given(group_ids, uint64, group_ids, uint64)
def test_entry_key_order_is_numeric_order(g1: int, i1: int, g2: int, i2: int) -> None:
    a, b = keys.entry_key(g1, i1), keys.entry_key(g2, i2)
    assert (a < b) == ((g1, i1) < (g2, i2))
    assert (a == b) == ((g1, i1) == (g2, i2))


@given(group_ids, user_keys, group_ids, user_keys)
def test_data_key_order_is_group_then_user_key_order(
    g1: int, k1: bytes, g2: int, k2: bytes
) -> None:
    a, b = keys.data_key(g1, k1), keys.data_key(g2, k2)
    assert (a < b) == ((g1, k1) < (g2, k2))


def in_range(key: bytes, bounds: tuple[bytes, bytes | None]) -> bool:
    start, end = bounds
    return start <= key and (end is None or key < end)


@given(group_ids, uint64, group_ids)
def test_every_record_of_a_group_lies_in_its_range_and_no_other(
    group_id: int, index: int, other: int
) -> None:
    records = [
        keys.entry_key(group_id, index),
        keys.hard_state_key(group_id),
        keys.snapshot_metadata_key(group_id),
        keys.log_start_key(group_id),
        keys.applied_state_key(group_id),
        keys.revision_key(group_id),
        keys.session_key(group_id, index),
        keys.data_key(group_id, b""),
        keys.data_key(group_id, b"\xff" * 9),
    ]
    for key in records:
        assert in_range(key, keys.group_range(group_id))
        assert in_range(key, keys.group_range(other)) == (other == group_id)


@given(group_ids, uint64, uint64, uint64)
def test_entry_range_holds_exactly_the_entries_between(
    group_id: int, index: int, low: int, high: int
) -> None:
    assert in_range(keys.entry_key(group_id, index), keys.entry_range(group_id, low, high)) == (
        low <= index < high
    )
    assert in_range(keys.entry_key(group_id, index), keys.entry_range(group_id, low)) == (
        low <= index
    )
    for record in (
        keys.hard_state_key(group_id),
        keys.snapshot_metadata_key(group_id),
        keys.log_start_key(group_id),
    ):
        assert not in_range(record, keys.entry_range(group_id))


def test_meta_records_of_a_group_are_distinct() -> None:
    records = [
        keys.applied_state_key(7),
        keys.revision_key(7),
        keys.session_key(7, 0),
        keys.session_key(7, 1),
        keys.session_key(7, UINT64_MAX),
    ]
    assert len(set(records)) == len(records)


def test_raft_records_sort_after_the_log_of_their_group() -> None:
    group_id = 7
    last_entry = keys.entry_key(group_id, UINT64_MAX)
    assert (
        last_entry
        < keys.hard_state_key(group_id)
        < keys.snapshot_metadata_key(group_id)
        < keys.log_start_key(group_id)
        < keys.entry_key(group_id + 1, 0)
    )


@given(st.binary(max_size=6), st.binary(max_size=6))
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix: bytes, key: bytes) -> None:
    end = keys.prefix_end(prefix)
    assert in_range(key, (prefix, end)) == key.startswith(prefix)


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"", None), (b"\xff\xff", None), (b"a", b"b"), (b"a\xff", b"b"), (b"a\xfe\xff", b"a\xff")],
)
def test_prefix_end_examples(prefix: bytes, end: bytes | None) -> None:
    assert keys.prefix_end(prefix) == end


@given(group_ids, user_keys, user_keys, group_ids)
def test_data_prefix_range_holds_the_groups_keys_with_the_prefix(
    group_id: int, user_prefix: bytes, user_key: bytes, other: int
) -> None:
    bounds = keys.data_prefix_range(group_id, user_prefix)
    assert in_range(keys.data_key(group_id, user_key), bounds) == user_key.startswith(user_prefix)
    if other != group_id:
        assert not in_range(keys.data_key(other, user_key), bounds)


@given(group_ids, user_keys, user_keys, st.one_of(st.none(), user_keys))
def test_data_range_holds_the_groups_keys_between(
    group_id: int, user_key: bytes, start: bytes, end: bytes | None
) -> None:
    bounds = keys.data_range(group_id, start, end)
    expected = start <= user_key and (end is None or user_key < end)
    assert in_range(keys.data_key(group_id, user_key), bounds) == expected
    for other in (group_id - 1, group_id + 1):
        if not 0 <= other <= UINT64_MAX:
            continue
        assert not in_range(keys.data_key(other, user_key), bounds)


@pytest.mark.parametrize("key", [b"", b"\x00" * 16, b"\x00" * 8 + b"\x02" + b"\x00" * 8])
def test_a_key_that_is_not_an_entry_key_is_refused(key: bytes) -> None:
    with pytest.raises(CorruptValue):
        keys.decode_entry_key(key)


def test_a_key_shorter_than_a_group_id_is_not_a_data_key() -> None:
    with pytest.raises(CorruptValue):
        keys.decode_data_key(b"\x00" * 7)


# -- values ----------------------------------------------------------------------


@given(entries)
def test_entry_round_trips(entry: Entry) -> None:
    assert values.decode_entry(entry.index, values.encode_entry(entry)) == entry


@given(hard_states)
def test_hard_state_round_trips(hard_state: HardState) -> None:
    assert values.decode_hard_state(values.encode_hard_state(hard_state)) == hard_state


@given(snapshot_metadata)
def test_snapshot_metadata_round_trips(metadata: SnapshotMetadata) -> None:
    assert values.decode_snapshot_metadata(values.encode_snapshot_metadata(metadata)) == metadata


@given(uint64, uint64)
def test_log_start_round_trips(index: int, term: int) -> None:
    assert values.decode_log_start(values.encode_log_start(index, term)) == (index, term)


@given(uint64, conf_states)
def test_applied_state_round_trips(applied_index: int, conf_state: ConfState) -> None:
    encoded = values.encode_applied_state(applied_index, conf_state)
    assert values.decode_applied_state(encoded) == (applied_index, conf_state)


def test_encodings_are_pinned() -> None:
    conf_state = ConfState(voters=(1, 2), learners=(3,))
    assert values.encode_entry(Entry(term=2, index=9, type=EntryType.CONF_CHANGE, data=b"x")) == (
        bytes.fromhex("01 01 0000000000000002") + b"x"
    )
    assert values.encode_hard_state(HardState(term=3, vote=2, commit=5)) == bytes.fromhex(
        "01 0000000000000003 0000000000000002 0000000000000005"
    )
    assert values.encode_snapshot_metadata(SnapshotMetadata(4, 2, conf_state)) == bytes.fromhex(
        "01 0000000000000004 0000000000000002 0002 0001"
        " 0000000000000001 0000000000000002 0000000000000003"
    )
    assert values.encode_log_start(4, 2) == bytes.fromhex("01 0000000000000004 0000000000000002")
    assert values.encode_applied_state(6, ConfState()) == bytes.fromhex(
        "01 0000000000000006 0000 0000"
    )
    assert keys.entry_key(1, 2) == bytes.fromhex("0000000000000001 01 0000000000000002")
    assert keys.data_key(1, b"k") == bytes.fromhex("0000000000000001") + b"k"


ENCODED: dict[str, tuple[bytes, Callable[[bytes], object]]] = {
    "entry": (values.encode_entry(Entry(1, 1)), lambda v: values.decode_entry(1, v)),
    "hard state": (values.encode_hard_state(HardState(1, 1, 1)), values.decode_hard_state),
    "snapshot metadata": (
        values.encode_snapshot_metadata(SnapshotMetadata(1, 1, ConfState((1,), (2,)))),
        values.decode_snapshot_metadata,
    ),
    "log start": (values.encode_log_start(1, 1), values.decode_log_start),
    "applied state": (
        values.encode_applied_state(1, ConfState((1,), ())),
        values.decode_applied_state,
    ),
}


@pytest.mark.parametrize("what", sorted(ENCODED))
def test_another_format_version_is_refused(what: str) -> None:
    encoded, decode = ENCODED[what]
    with pytest.raises(CorruptValue, match="format version 2"):
        decode(b"\x02" + encoded[1:])


@pytest.mark.parametrize("what", sorted(ENCODED))
def test_truncated_values_are_refused(what: str) -> None:
    encoded, decode = ENCODED[what]
    for length in range(len(encoded)):
        with pytest.raises(CorruptValue):
            decode(encoded[:length])


@pytest.mark.parametrize("what", ["hard state", "snapshot metadata", "log start", "applied state"])
def test_trailing_bytes_are_refused(what: str) -> None:
    encoded, decode = ENCODED[what]
    with pytest.raises(CorruptValue):
        decode(encoded + b"\x00")


def test_an_unknown_entry_type_is_refused() -> None:
    with pytest.raises(CorruptValue, match="unknown type"):
        values.decode_entry(1, bytes.fromhex("01 09 0000000000000001"))


def test_a_configuration_too_large_to_encode_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        values.encode_applied_state(1, ConfState(voters=tuple(range(1 << 16))))


def test_the_dropped_group_mark_lies_outside_every_groups_range() -> None:
    key = keys.dropped_group_key(7)
    for group_id in (0, 7, 8, 2**63):
        low, high = keys.group_range(group_id)
        assert not (low <= key and (high is None or key < high))
    assert key.startswith(keys.group_prefix(keys.NODE_RECORDS))
    assert keys.dropped_group_key(7) < keys.dropped_group_key(8)
