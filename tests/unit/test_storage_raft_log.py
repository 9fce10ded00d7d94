"""``GroupStorage``: the Raft ``Storage`` of one group on the node's engine.

The reference is ``MemoryStorage``, which the simulator has exercised against
the Raft core: on random histories of appends (with truncation), hard states,
snapshots taken and installed, and compactions, a ``GroupStorage`` must answer
every ``Storage`` query exactly as ``MemoryStorage`` does, errors included,
before and after restarts, over ``MemoryEngine`` and RocksDB alike. Then the
promises of its own: staged writes show only once written, many groups go in
one batch with one write, groups do not see each other, and a real Raft group
runs on it across a restart of every node.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shardkv.raft import (
    Compacted,
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SnapshotOutOfDate,
    Storage,
    Unavailable,
)
from shardkv.storage import (
    AlreadyBootstrapped,
    Batch,
    ColumnFamily,
    CorruptValue,
    Engine,
    EngineError,
    GroupStorage,
    MemoryDisk,
    MemoryEngine,
    StagingConflict,
    StorageEngine,
    keys,
)
from tests.unit.engines import Opener, engine_opener

GROUP = 7


class FlakyMemoryEngine(MemoryEngine):
    """A ``MemoryEngine`` whose next write fails when told to, writing nothing."""

    fail_next_write = False

    def _write(self, batch: Batch, sync: bool) -> None:
        if self.fail_next_write:
            self.fail_next_write = False
            raise EngineError("injected write failure")
        super()._write(batch, sync)


class CountingEngine(Engine):
    """A RocksDB ``Engine`` that counts its writes and reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[bool] = []
        self.reads = 0

    def _write(self, batch: Batch, sync: bool) -> None:
        self.writes.append(sync)
        super()._write(batch, sync)

    def _get(self, cf: ColumnFamily, key: bytes) -> bytes | None:
        self.reads += 1
        return super()._get(cf, key)

    def _scan(
        self, cf: ColumnFamily, start: bytes, end: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        self.reads += 1
        return super()._scan(cf, start, end, reverse)


@pytest.fixture(params=["memory", "rocksdb"])
def open_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    with engine_opener(request.param, tmp_path / "db", memory_engine=FlakyMemoryEngine) as opener:
        yield opener


def write(engine: StorageEngine, stage: Callable[[Batch], object], sync: bool = False) -> None:
    batch = engine.new_batch()
    stage(batch)
    engine.write(batch, sync=sync)


def entries(first: int, last: int, term: int, data: bytes = b"d") -> list[Entry]:
    return [Entry(term=term, index=index, data=data) for index in range(first, last + 1)]


# -- the reference comparison --------------------------------------------------------


def answer(function: Callable[..., Any], *arguments: Any) -> Any:
    """What a call returns, or the type of the storage error it raises."""
    try:
        return function(*arguments)
    except (Compacted, Unavailable, SnapshotOutOfDate) as exc:
        return type(exc)


def assert_same_answers(model: MemoryStorage, storage: Storage, rng: random.Random) -> None:
    assert storage.first_index() == model.first_index()
    assert storage.last_index() == model.last_index()
    assert storage.initial_state() == model.initial_state()
    assert storage.snapshot() == model.snapshot()
    first, last = model.first_index(), model.last_index()
    for index in range(first - 2, last + 3):
        assert answer(storage.term, index) == answer(model.term, index), index
    for _ in range(12):
        low = rng.randint(first - 1, last + 2)
        high = rng.randint(low - 1, last + 2)
        max_size = rng.choice([None, 0, 30, 60, 200])
        query = (low, high, max_size)
        assert answer(storage.entries, *query) == answer(model.entries, *query), query


class Operation:
    """One random write, applied to the model and staged into a batch alike."""

    def __init__(self, rng: random.Random, model: MemoryStorage) -> None:
        first, last = model.first_index(), model.last_index()
        snapshot_index = model.snapshot().metadata.index
        conf_state = ConfState(
            voters=tuple(rng.sample(range(1, 6), rng.randint(1, 3))),
            learners=tuple(rng.sample(range(6, 9), rng.randint(0, 2))),
        )
        self.kind = rng.choices(
            ["append", "hard_state", "create_snapshot", "compact", "install"],
            weights=[8, 3, 2, 2, 1],
        )[0]
        if self.kind == "append":
            # Mostly at the end or just before it (a new leader's entries),
            # sometimes anywhere: into the compacted prefix, or past a gap.
            if rng.random() < 0.7:
                start = rng.randint(max(first, last - 2), last + 1)
            else:
                start = rng.randint(max(1, first - 3), last + 2)
            term = rng.randint(1, 9)
            self.entries = [
                Entry(
                    term=term,
                    index=index,
                    type=rng.choice(list(EntryType)),
                    data=rng.randbytes(rng.randint(0, 40)),
                )
                for index in range(start, start + rng.randint(0, 6))
            ]
        elif self.kind == "hard_state":
            self.hard_state = HardState(
                term=rng.randint(0, 9), vote=rng.randint(0, 5), commit=rng.randint(0, last)
            )
        elif self.kind == "create_snapshot":
            self.index = rng.randint(min(snapshot_index, last) - 1, last + 1)
            self.conf_state = conf_state
        elif self.kind == "compact":
            self.index = rng.randint(first - 1, max(first, min(last, snapshot_index)))
        else:
            metadata = SnapshotMetadata(
                index=rng.randint(max(0, snapshot_index - 2), max(snapshot_index, last) + 5),
                term=rng.randint(1, 9),
                conf_state=conf_state,
            )
            self.snapshot = Snapshot(metadata, b"")

    def apply_to_model(self, model: MemoryStorage) -> SnapshotMetadata | None:
        """Apply to ``model``; a snapshot created returns its metadata, to compare."""
        if self.kind == "append":
            model.append(self.entries)
        elif self.kind == "hard_state":
            model.set_hard_state(self.hard_state)
        elif self.kind == "create_snapshot":
            return model.create_snapshot(self.index, self.conf_state, b"").metadata
        elif self.kind == "compact":
            model.compact(self.index)
        else:
            model.apply_snapshot(self.snapshot)
        return None

    def stage(self, storage: GroupStorage, batch: Batch) -> SnapshotMetadata | None:
        """Stage into ``batch``; a snapshot created returns its metadata, to compare."""
        if self.kind == "append":
            storage.stage_append(batch, self.entries)
        elif self.kind == "hard_state":
            storage.stage_hard_state(batch, self.hard_state)
        elif self.kind == "create_snapshot":
            return storage.stage_create_snapshot(batch, self.index, self.conf_state)
        elif self.kind == "compact":
            storage.stage_compact(batch, self.index)
        else:
            storage.stage_snapshot(batch, self.snapshot.metadata)
        return None


# Every seed on MemoryEngine, with a cache of nothing, of a few entries, and
# of everything; a few on RocksDB, whose restarts cost ~50 ms each.
COMPARISON_CASES = [
    *(("memory", seed, cache_bytes) for seed in range(12) for cache_bytes in (0, 120, 1 << 20)),
    *(("rocksdb", seed, 120) for seed in range(2)),
]


@pytest.mark.parametrize(("kind", "seed", "cache_bytes"), COMPARISON_CASES)
def test_group_storage_answers_as_memory_storage_does(
    tmp_path: Path, kind: str, seed: int, cache_bytes: int
) -> None:
    disk = MemoryDisk()

    def open_engine() -> StorageEngine:
        return FlakyMemoryEngine(disk) if kind == "memory" else Engine(tmp_path / "db")

    rng = random.Random(seed)
    model = MemoryStorage()
    engine = open_engine()
    storage = GroupStorage(engine, GROUP, cache_bytes=cache_bytes)
    for _ in range(90):
        before = copy.deepcopy(model)
        batch = engine.new_batch()
        # One to three writes in one batch, as a Ready brings a snapshot,
        # entries and a hard state together; a failed one stages nothing.
        for _ in range(rng.choice([1, 1, 2, 3])):
            operation = Operation(rng, model)
            expected = answer(operation.apply_to_model, model)
            assert answer(operation.stage, storage, batch) == expected, operation.kind
        outcome = rng.choices(["write", "lose", "restart"], weights=[20, 2, 1])[0]
        if outcome == "lose":
            # A failed write (or, on RocksDB, a batch given up) changes nothing.
            model = before
            if isinstance(engine, FlakyMemoryEngine):
                engine.fail_next_write = True
                with pytest.raises(EngineError, match="injected"):
                    engine.write(batch, sync=False)
            else:
                batch.discard()
        else:
            engine.write(batch, sync=False)
        if outcome == "restart":
            engine.close()
            engine = open_engine()
            storage = GroupStorage(engine, GROUP, cache_bytes=cache_bytes)
        assert_same_answers(model, storage, rng)
    engine.close()


# -- staging -------------------------------------------------------------------------


def test_staged_writes_show_only_once_written(open_engine: Opener) -> None:
    engine = open_engine()
    storage = GroupStorage(engine, GROUP)
    storage.bootstrap((1, 2, 3))
    batch = engine.new_batch()
    storage.stage_append(batch, entries(2, 4, term=2))
    storage.stage_hard_state(batch, HardState(term=2, vote=1, commit=3))
    assert storage.last_index() == 1
    assert storage.initial_state()[0] == HardState(term=1, commit=1)
    with pytest.raises(Unavailable):
        storage.term(2)
    engine.write(batch, sync=True)
    assert storage.last_index() == 4
    assert storage.term(4) == 2
    assert storage.initial_state()[0] == HardState(term=2, vote=1, commit=3)


def test_stagings_into_one_batch_build_on_each_other_as_a_ready_does(
    open_engine: Opener,
) -> None:
    engine = open_engine()
    storage = GroupStorage(engine, GROUP)
    write(engine, lambda batch: storage.stage_append(batch, entries(1, 10, term=1)))
    snapshot = SnapshotMetadata(index=20, term=3, conf_state=ConfState(voters=(1, 2)))
    batch = engine.new_batch()
    storage.stage_snapshot(batch, snapshot)
    storage.stage_append(batch, entries(21, 23, term=3))
    storage.stage_append(batch, entries(23, 24, term=4))  # truncates the staged 23
    storage.stage_hard_state(batch, HardState(term=4, vote=2, commit=20))
    engine.write(batch, sync=True)
    engine.close()
    storage = GroupStorage(open_engine(), GROUP)
    assert (storage.first_index(), storage.last_index()) == (21, 24)
    assert [e.term for e in storage.entries(21, 25)] == [3, 3, 4, 4]
    assert storage.term(20) == 3
    assert storage.snapshot() == Snapshot(snapshot, b"")
    assert storage.initial_state() == (HardState(term=4, vote=2, commit=20), ConfState((1, 2)))


def test_a_failed_write_leaves_the_group_as_it_was() -> None:
    engine = FlakyMemoryEngine()
    storage = GroupStorage(engine, GROUP)
    write(engine, lambda batch: storage.stage_append(batch, entries(1, 5, term=1)))
    batch = engine.new_batch()
    storage.stage_append(batch, entries(3, 8, term=2))
    storage.stage_hard_state(batch, HardState(term=2))
    engine.fail_next_write = True
    with pytest.raises(EngineError):
        engine.write(batch, sync=True)
    assert storage.last_index() == 5
    assert [e.term for e in storage.entries(1, 6)] == [1] * 5
    assert storage.initial_state()[0] == HardState()
    # The group takes a new batch at once, staged from what is on disk.
    write(engine, lambda batch: storage.stage_append(batch, entries(6, 6, term=1)))
    assert storage.last_index() == 6


def test_a_group_stages_into_one_open_batch_at_a_time(open_engine: Opener) -> None:
    engine = open_engine()
    storage = GroupStorage(engine, GROUP)
    first = engine.new_batch()
    storage.stage_append(first, entries(1, 2, term=1))
    second = engine.new_batch()
    with pytest.raises(StagingConflict, match="another open batch"):
        storage.stage_hard_state(second, HardState(term=1))
    first.discard()
    storage.stage_append(second, entries(1, 1, term=2))
    engine.write(second, sync=False)
    assert storage.last_index() == 1
    assert storage.term(1) == 2
    # Other groups and the applied state are not held up by an open batch.
    third = engine.new_batch()
    storage.stage_hard_state(third, HardState(term=2))
    other = GroupStorage(engine, GROUP + 1)
    write(engine, lambda batch: other.stage_append(batch, entries(1, 1, term=1)))
    write(engine, lambda batch: storage.stage_applied(batch, 1, ConfState((1,))))
    assert storage.applied_state() == (1, ConfState((1,)))


def test_a_batch_of_another_engine_is_refused() -> None:
    storage = GroupStorage(MemoryEngine(), GROUP)
    with pytest.raises(ValueError, match="another engine"):
        storage.stage_hard_state(MemoryEngine().new_batch(), HardState(term=1))


# -- groups, batches and restarts ----------------------------------------------------------


def test_groups_in_one_engine_do_not_see_each_other(open_engine: Opener) -> None:
    engine = open_engine()
    one, two = GroupStorage(engine, 1), GroupStorage(engine, 2)
    batch = engine.new_batch()
    one.stage_append(batch, entries(1, 10, term=1, data=b"one"))
    two.stage_append(batch, entries(1, 3, term=5, data=b"two"))
    two.stage_hard_state(batch, HardState(term=5, vote=2))
    engine.write(batch, sync=True)
    write(engine, lambda batch: one.stage_create_snapshot(batch, 6, ConfState((1,))))
    write(engine, lambda batch: one.stage_compact(batch, 6))
    write(engine, lambda batch: two.stage_snapshot(batch, SnapshotMetadata(index=50, term=6)))
    engine.close()
    engine = open_engine()
    one, two, three = (GroupStorage(engine, group_id) for group_id in (1, 2, 3))
    assert (one.first_index(), one.last_index()) == (7, 10)
    assert {e.data for e in one.entries(7, 11)} == {b"one"}
    assert one.initial_state()[0] == HardState()
    assert (two.first_index(), two.last_index()) == (51, 50)
    assert two.initial_state()[0] == HardState(term=5, vote=2)
    assert (three.first_index(), three.last_index()) == (1, 0)
    assert three.snapshot() == Snapshot()


def test_many_groups_go_to_disk_in_one_batch_with_one_sync(tmp_path: Path) -> None:
    engine = CountingEngine(tmp_path / "db")
    groups = [GroupStorage(engine, group_id) for group_id in range(1, 17)]
    for storage in groups:
        storage.bootstrap((1, 2, 3))
    engine.writes.clear()
    batch = engine.new_batch()
    for storage in groups:
        storage.stage_append(batch, entries(2, 5, term=2, data=bytes(100)))
        storage.stage_hard_state(batch, HardState(term=2, vote=1, commit=5))
    engine.write(batch, sync=True)
    assert engine.writes == [True]
    assert all(storage.last_index() == 5 for storage in groups)
    engine.close()
    with Engine(tmp_path / "db") as reopened:
        for group_id in range(1, 17):
            storage = GroupStorage(reopened, group_id)
            assert storage.entries(2, 6) == entries(2, 5, term=2, data=bytes(100))
            assert storage.initial_state() == (
                HardState(term=2, vote=1, commit=5),
                ConfState((1, 2, 3)),
            )


def test_reads_of_the_tail_come_from_the_cache(tmp_path: Path) -> None:
    engine = CountingEngine(tmp_path / "db")
    storage = GroupStorage(engine, GROUP, cache_bytes=100 * 40)
    log = entries(1, 200, term=1, data=bytes(16))
    write(engine, lambda batch: storage.stage_append(batch, log))
    engine.reads = 0
    assert len(storage.entries(150, 201)) == 51
    assert storage.term(200) == 1
    assert engine.reads == 0
    assert len(storage.entries(50, 201)) == 151
    assert engine.reads == 1
    engine.close()
    # Reopening fills the cache from disk.
    engine = CountingEngine(tmp_path / "db")
    storage = GroupStorage(engine, GROUP, cache_bytes=100 * 40)
    engine.reads = 0
    assert len(storage.entries(150, 201)) == 51
    assert engine.reads == 0
    engine.close()


def test_a_hole_in_the_log_on_disk_is_reported(open_engine: Opener) -> None:
    engine = open_engine()
    storage = GroupStorage(engine, GROUP, cache_bytes=0)
    write(engine, lambda batch: storage.stage_append(batch, entries(1, 5, term=1)))
    write(engine, lambda batch: batch.delete(ColumnFamily.RAFT, keys.entry_key(GROUP, 3)))
    with pytest.raises(CorruptValue, match="no entry 3"):
        storage.entries(2, 5)
    with pytest.raises(CorruptValue, match="no entry 3"):
        storage.term(3)
    write(engine, lambda batch: batch.delete(ColumnFamily.RAFT, keys.entry_key(GROUP, 4)))
    with pytest.raises(CorruptValue, match="hole"):
        GroupStorage(engine, GROUP)


# -- bootstrap and applied state -------------------------------------------------------


def test_bootstrap_holds_what_memory_storage_with_voters_holds(open_engine: Opener) -> None:
    engine = open_engine()
    GroupStorage(engine, GROUP).bootstrap((1, 2, 3))
    engine.close()
    storage = GroupStorage(open_engine(), GROUP)
    assert_same_answers(MemoryStorage.with_voters((1, 2, 3)), storage, random.Random(0))
    assert storage.applied_state() == (1, ConfState((1, 2, 3)))
    with pytest.raises(AlreadyBootstrapped):
        storage.bootstrap((1, 2, 3))


def test_nothing_applied_reads_as_applied_index_zero(open_engine: Opener) -> None:
    assert GroupStorage(open_engine(), GROUP).applied_state() == (0, ConfState())


def test_initial_configuration_is_the_applied_one_unless_a_snapshot_is_newer(
    open_engine: Opener,
) -> None:
    engine = open_engine()
    storage = GroupStorage(engine, GROUP)
    storage.bootstrap((1, 2, 3))
    write(engine, lambda batch: storage.stage_append(batch, entries(2, 6, term=1)))
    write(engine, lambda batch: storage.stage_applied(batch, 4, ConfState((1, 2, 3), (4,))))
    engine.close()
    storage = GroupStorage(open_engine(), GROUP)
    assert storage.applied_state() == (4, ConfState((1, 2, 3), (4,)))
    assert storage.initial_state()[1] == ConfState((1, 2, 3), (4,))
    newer = SnapshotMetadata(index=9, term=2, conf_state=ConfState((1, 2)))
    write(storage.engine, lambda batch: storage.stage_snapshot(batch, newer))
    assert storage.initial_state()[1] == ConfState((1, 2))


# -- a real Raft group on it ----------------------------------------------------------------

GROUPS = (1, 2)
NODES = (1, 2, 3)


class SmokeNode:
    """A node hosting every group of ``GROUPS``, running the Ready contract.

    Every round: one batch and one write for every group's Ready (persist),
    queue the messages (send), then one batch of applied states (apply), then
    advance.
    """

    def __init__(self, node_id: int, path: Path, *, bootstrap: bool) -> None:
        self.node_id = node_id
        self.engine = Engine(path)
        self.storages = {group_id: GroupStorage(self.engine, group_id) for group_id in GROUPS}
        self.raws: dict[int, RawNode] = {}
        self.applied: dict[int, list[bytes]] = {group_id: [] for group_id in GROUPS}
        for group_id, storage in self.storages.items():
            if bootstrap:
                storage.bootstrap(NODES)
            applied_index, _ = storage.applied_state()
            config = Config(id=node_id, applied=applied_index, seed=node_id * 10 + group_id)
            self.raws[group_id] = RawNode(config, storage)

    def handle_ready(self, outbox: deque[tuple[int, Message]]) -> bool:
        readies: dict[int, Ready] = {
            group_id: raw.ready() for group_id, raw in self.raws.items() if raw.has_ready()
        }
        if not readies:
            return False
        batch = self.engine.new_batch()
        for group_id, ready in readies.items():
            storage = self.storages[group_id]
            assert ready.snapshot is None
            storage.stage_append(batch, ready.entries)
            if ready.hard_state is not None:
                storage.stage_hard_state(batch, ready.hard_state)
        self.engine.write(batch, sync=any(ready.must_sync for ready in readies.values()))
        for group_id, ready in readies.items():
            outbox.extend((group_id, message) for message in ready.messages)
        applied = self.engine.new_batch()
        for group_id, ready in readies.items():
            if ready.committed_entries:
                assert all(e.type == EntryType.NORMAL for e in ready.committed_entries)
                self.applied[group_id].extend(e.data for e in ready.committed_entries if e.data)
                storage = self.storages[group_id]
                _, conf_state = storage.applied_state()
                storage.stage_applied(applied, ready.committed_entries[-1].index, conf_state)
        self.engine.write(applied, sync=False)
        for group_id, ready in readies.items():
            self.raws[group_id].advance(ready)
        return True

    def leader(self, group_id: int) -> bool:
        return self.raws[group_id].raft.role == Role.LEADER


def settle(nodes: dict[int, SmokeNode]) -> None:
    outbox: deque[tuple[int, Message]] = deque()
    for _ in range(10_000):
        busy = [node.handle_ready(outbox) for node in nodes.values()]
        if not any(busy) and not outbox:
            return
        while outbox:
            group_id, message = outbox.popleft()
            nodes[message.to].raws[group_id].step(message)
    raise AssertionError("the cluster never went quiet")


def elect_leaders(nodes: dict[int, SmokeNode]) -> dict[int, SmokeNode]:
    for _ in range(200):
        leaders = {
            group_id: node
            for group_id in GROUPS
            for node in nodes.values()
            if node.leader(group_id)
        }
        if len(leaders) == len(GROUPS):
            return leaders
        for node in nodes.values():
            for raw in node.raws.values():
                raw.tick()
        settle(nodes)
    raise AssertionError("no leader elected")


def durable_view(node: SmokeNode, group_id: int) -> tuple[Any, ...]:
    storage = node.storages[group_id]
    first, last = storage.first_index(), storage.last_index()
    return (
        storage.initial_state(),
        storage.applied_state(),
        first,
        last,
        storage.entries(first, last + 1),
    )


def test_a_raft_group_runs_on_it_and_survives_a_restart_of_every_node(tmp_path: Path) -> None:
    nodes = {
        node_id: SmokeNode(node_id, tmp_path / f"node{node_id}", bootstrap=True)
        for node_id in NODES
    }
    leaders = elect_leaders(nodes)
    for group_id, leader in leaders.items():
        for number in range(50):
            leader.raws[group_id].propose(f"{group_id}-{number}".encode())
        settle(nodes)
    proposed = {group_id: [f"{group_id}-{n}".encode() for n in range(50)] for group_id in GROUPS}
    for node in nodes.values():
        assert node.applied == proposed
    commits = {
        (node_id, group_id): node.raws[group_id].status().commit
        for node_id, node in nodes.items()
        for group_id in GROUPS
    }
    assert all(commit >= 52 for commit in commits.values())  # bootstrap, empty entry, 50
    before = {
        (node_id, group_id): durable_view(node, group_id)
        for node_id, node in nodes.items()
        for group_id in GROUPS
    }
    for node in nodes.values():
        node.engine.close()

    nodes = {
        node_id: SmokeNode(node_id, tmp_path / f"node{node_id}", bootstrap=False)
        for node_id in NODES
    }
    for (node_id, group_id), view in before.items():
        node = nodes[node_id]
        assert durable_view(node, group_id) == view
        status = node.raws[group_id].status()
        assert status.commit == commits[node_id, group_id]
        assert status.applied == commits[node_id, group_id]
    leaders = elect_leaders(nodes)
    for group_id, leader in leaders.items():
        index, term = leader.raws[group_id].propose(b"after restart")
        settle(nodes)
        for node in nodes.values():
            assert node.applied[group_id] == [b"after restart"]
            assert node.storages[group_id].term(index) == term
            assert node.storages[group_id].applied_state()[0] >= index
    for node in nodes.values():
        node.engine.close()


def test_an_installed_snapshot_keeps_the_received_image() -> None:
    """A follower does not rebuild, by a full scan, the image it just received."""
    engine = MemoryEngine()
    builds: list[int] = []

    def source() -> bytes:
        builds.append(1)
        return b"built by a scan"

    storage = GroupStorage(engine, 5, snapshot_source=source)
    metadata = SnapshotMetadata(index=10, term=2, conf_state=ConfState(voters=(1, 2, 3)))
    batch = engine.new_batch()
    storage.stage_snapshot(batch, metadata, b"received")
    storage.stage_applied(batch, 10, metadata.conf_state)
    engine.write(batch, sync=True)
    batch = engine.new_batch()
    storage.stage_applied(batch, 12, metadata.conf_state)
    engine.write(batch, sync=False)
    assert storage.snapshot().data == b"received"
    assert builds == []
