"""The image of a group's state machine that Raft snapshots carry (paper §7).

Built from one engine and installed into another (or over other content of
the same one), it must leave a ``KeyValueStateMachine`` that answers exactly
as the source's does, touching neither other groups nor the applied state;
a bad image must stage nothing. ``GroupStorage`` must hand Raft the image at
its snapshot's index, also after the state machine moved on and across
restarts; and a follower cut off while the leader compacts must catch up
through the chunked snapshot. Everything runs on ``MemoryEngine`` and RocksDB.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shardkv.fsm.kv import STALE, KeyValueStateMachine
from shardkv.fsm.snapshot import (
    MAX_SNAPSHOT_BYTES,
    SnapshotTooLarge,
    build_snapshot_data,
    snapshot_source,
    stage_install_snapshot_data,
)
from shardkv.raft import (
    Config,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RawNode,
    Role,
    SnapshotMetadata,
)
from shardkv.storage import (
    ColumnFamily,
    CorruptValue,
    Engine,
    GroupStorage,
    MemoryDisk,
    MemoryEngine,
    StorageEngine,
    keys,
)
from shardkv.v1 import kv_pb2
from tests.unit.test_fsm_kv import command, delete, put

GROUP = 7
DATA, META = ColumnFamily.DATA, ColumnFamily.META


class Engines:
    """Opens engines of one kind by name; the same name is the same place (a restart)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self._tmp_path = tmp_path
        self._disks: dict[str, MemoryDisk] = {}
        self.opened: list[StorageEngine] = []

    def open(self, name: str = "source") -> StorageEngine:
        engine: StorageEngine
        if self.kind == "memory":
            engine = MemoryEngine(self._disks.setdefault(name, MemoryDisk()))
        else:
            engine = Engine(self._tmp_path / name)
        self.opened.append(engine)
        return engine


@pytest.fixture(params=["memory", "rocksdb"])
def engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engines]:
    opened = Engines(request.param, tmp_path)
    yield opened
    for engine in opened.opened:
        engine.close()


# -- helpers ---------------------------------------------------------------------


def apply(engine: StorageEngine, group_id: int, *commands: kv_pb2.Command) -> None:
    machine = KeyValueStateMachine(engine, group_id)
    batch = engine.new_batch()
    for each in commands:
        machine.apply(batch, each)
    engine.write(batch, sync=False)


# A history with every kind of state-machine record: keys written several
# times, deleted and recreated, binary and empty values, sessions of several
# clients (one with a recorded delete), and a revision counter.
HISTORY = [
    command(put(b"alpha", b"1"), put(b"beta", b"2"), client_id=11, seq=1),
    command(put(b"alpha", b"3"), client_id=12, seq=1),
    command(put(b"\x00\xff binary", bytes(range(256))), put(b"empty", b"")),
    command(delete(b"beta"), client_id=11, seq=2, acked_seq=1),
    command(put(b"beta", b"again"), put(b"gamma", b"g" * 3000), client_id=13, seq=5),
    command(delete(b"missing"), client_id=12, seq=2, acked_seq=1),
]


def fill(engine: StorageEngine, group_id: int, history: list[kv_pb2.Command]) -> None:
    for each in history:
        apply(engine, group_id, each)


def write_applied_state(engine: StorageEngine, group_id: int, index: int) -> None:
    storage = GroupStorage(engine, group_id)
    batch = engine.new_batch()
    storage.stage_applied(batch, index, ConfState(voters=(1, 2, 3)))
    engine.write(batch, sync=False)


def raw_group(engine: StorageEngine, group_id: int) -> tuple[list[tuple[bytes, bytes]], ...]:
    """Every record of a group: data, state-machine meta, applied state."""
    start, end = keys.group_range(group_id)
    applied_key = keys.applied_state_key(group_id)
    meta = list(engine.scan(META, start, end))
    return (
        list(engine.scan(DATA, start, end)),
        [(key, value) for key, value in meta if key != applied_key],
        [(key, value) for key, value in meta if key == applied_key],
    )


def state_machine(engine: StorageEngine, group_id: int) -> tuple[object, ...]:
    return raw_group(engine, group_id)[:2]


def install(engine: StorageEngine, group_id: int, data: bytes) -> None:
    batch = engine.new_batch()
    stage_install_snapshot_data(engine, batch, group_id, data)
    engine.write(batch, sync=False)


def assert_answers_alike(source: StorageEngine, target: StorageEngine) -> None:
    """Recreated state machines answer reads, revisions and retries identically."""
    mine, theirs = KeyValueStateMachine(source, GROUP), KeyValueStateMachine(target, GROUP)
    assert mine.revision == theirs.revision > 0
    assert list(mine.scan()) == list(theirs.scan())
    assert len(list(mine.scan())) == 5
    for key in (b"alpha", b"beta", b"gamma", b"empty", b"\x00\xff binary", b"missing"):
        assert mine.get(key) == theirs.get(key)
    for engine, machine in ((source, mine), (target, theirs)):
        batch = engine.new_batch()
        retry = machine.apply(batch, command(delete(b"beta"), client_id=11, seq=2))
        assert retry.results[0].previous.value == b"2", "the recorded answer, not a new one"
        assert machine.apply(batch, command(put(b"x", b"y"), client_id=11, seq=1)) == STALE
        assert len(batch) == 0, "retries and stale commands write nothing"
        batch.discard()
    fresh = command(put(b"alpha", b"new"), client_id=13, seq=6)
    apply(source, GROUP, fresh)
    apply(target, GROUP, fresh)
    assert state_machine(source, GROUP) == state_machine(target, GROUP)


# -- the image ---------------------------------------------------------------------


def test_an_installed_image_answers_as_its_source(engines: Engines) -> None:
    source, target = engines.open("source"), engines.open("target")
    fill(source, GROUP, HISTORY)
    write_applied_state(source, GROUP, 40)
    install(target, GROUP, build_snapshot_data(source, GROUP))
    assert state_machine(target, GROUP) == state_machine(source, GROUP)
    assert raw_group(target, GROUP)[2] == [], "the applied state is not part of the image"
    assert_answers_alike(source, target)
    counted = KeyValueStateMachine(target, GROUP)
    assert counted.key_count == KeyValueStateMachine(source, GROUP).key_count > 0


def test_install_replaces_other_content_and_spares_other_groups_and_applied_state(
    engines: Engines,
) -> None:
    source, target = engines.open("source"), engines.open("target")
    fill(source, GROUP, HISTORY)
    # The target's own past of the group: keys the image lacks, another
    # revision, other sessions; and neighbours on either side of its range.
    fill(target, GROUP, [command(put(b"stale", b"s"), client_id=99, seq=3)] * 2 + HISTORY[:2])
    write_applied_state(target, GROUP, 17)
    for neighbour in (GROUP - 1, GROUP + 1):
        fill(target, neighbour, HISTORY[:3])
        write_applied_state(target, neighbour, 5)
    neighbours = {group_id: raw_group(target, group_id) for group_id in (GROUP - 1, GROUP + 1)}
    applied_state = raw_group(target, GROUP)[2]
    assert applied_state

    install(target, GROUP, build_snapshot_data(source, GROUP))
    assert state_machine(target, GROUP) == state_machine(source, GROUP)
    assert raw_group(target, GROUP)[2] == applied_state
    assert {group_id: raw_group(target, group_id) for group_id in neighbours} == neighbours
    assert_answers_alike(source, target)


def test_install_over_the_same_engine_rolls_the_group_back_to_the_image(
    engines: Engines,
) -> None:
    engine = engines.open()
    fill(engine, GROUP, HISTORY)
    image = build_snapshot_data(engine, GROUP)
    before = state_machine(engine, GROUP)
    fill(engine, GROUP, [command(put(b"later", b"x"), delete(b"alpha"), client_id=50, seq=1)])
    assert state_machine(engine, GROUP) != before
    install(engine, GROUP, image)
    assert state_machine(engine, GROUP) == before
    assert KeyValueStateMachine(engine, GROUP).revision == len(HISTORY) - 1


def test_an_empty_group_has_an_image_that_empties_a_group(engines: Engines) -> None:
    source, target = engines.open("source"), engines.open("target")
    image = build_snapshot_data(source, GROUP)
    fill(target, GROUP, HISTORY)
    install(target, GROUP, image)
    assert state_machine(target, GROUP) == ([], [])


def test_the_image_is_the_documented_encoding_and_deterministic(engines: Engines) -> None:
    one, two = engines.open("one"), engines.open("two")
    fill(one, GROUP, HISTORY)
    fill(two, GROUP, HISTORY)
    write_applied_state(two, GROUP, 99)
    image = build_snapshot_data(one, GROUP)
    assert build_snapshot_data(one, GROUP) == image
    assert build_snapshot_data(two, GROUP) == image, "same state, same bytes, on any replica"
    three = engines.open("three")
    install(three, GROUP, image)
    assert build_snapshot_data(three, GROUP) == image

    # Written out by hand from the module docstring's layout.
    body = struct.pack(">4sBQ", b"SKVI", 1, GROUP)
    count = 0
    data, meta, _ = raw_group(one, GROUP)
    for tag, records in ((1, data), (2, meta)):
        for key, value in records:
            relative = key[keys.GROUP_KEY_SIZE :]
            body += struct.pack(">BI", tag, len(relative)) + relative
            body += struct.pack(">I", len(value)) + value
            count += 1
    body += struct.pack(">Q", count)
    assert image == body + struct.pack(">I", zlib.crc32(body))
    # Five keys; the revision; two floors and three results of the sessions; the key
    # count; the event log: eight changes (deleting a missing key changes nothing),
    # and the log's floor and size.
    assert count == 5 + 1 + 5 + 1 + 8 + 1


def write_late(engine: StorageEngine, scans: int) -> None:
    """Once armed, write to the group right after the second scan is taken."""
    if scans == 2:
        fill(engine, GROUP, [command(put(b"late", b"l"), client_id=77, seq=1)])


class LateWrites(StorageEngine):
    """Mixin: once ``scans`` is set to 0, counts scans and calls ``write_late`` after each."""

    scans: int | None = None

    def _scan(
        self, cf: ColumnFamily, start: bytes, end: bytes | None, reverse: bool
    ) -> Iterator[tuple[bytes, bytes]]:
        items = super()._scan(cf, start, end, reverse)  # type: ignore[safe-super]
        if self.scans is not None:
            self.scans += 1
            write_late(self, self.scans)
        return items


class LateMemoryEngine(LateWrites, MemoryEngine):
    pass


class LateRocksEngine(LateWrites, Engine):
    pass


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_the_image_is_of_the_moment_the_build_took_its_scans(kind: str, tmp_path: Path) -> None:
    engine: LateMemoryEngine | LateRocksEngine
    engine = LateMemoryEngine() if kind == "memory" else LateRocksEngine(tmp_path / "db")
    with engine:
        fill(engine, GROUP, HISTORY)
        before = state_machine(engine, GROUP)
        engine.scans = 0
        image = build_snapshot_data(engine, GROUP)
        engine.scans = None
        assert KeyValueStateMachine(engine, GROUP).get(b"late") is not None
        target = MemoryEngine()
        install(target, GROUP, image)
        assert state_machine(target, GROUP) == before


def test_an_image_past_the_size_limit_is_refused(engines: Engines) -> None:
    engine = engines.open()
    fill(engine, GROUP, HISTORY)
    size = len(build_snapshot_data(engine, GROUP))
    assert size < MAX_SNAPSHOT_BYTES
    assert len(build_snapshot_data(engine, GROUP, max_bytes=size)) == size
    with pytest.raises(SnapshotTooLarge, match="split the group"):
        build_snapshot_data(engine, GROUP, max_bytes=size - 1)


# -- bad images ----------------------------------------------------------------------


def corruptions(image: bytes) -> Iterator[tuple[str, bytes]]:
    for length in (0, 1, 12, 13, 25, len(image) // 2, len(image) - 4, len(image) - 1):
        yield f"truncated to {length}", image[:length]
    yield "a byte more", image + b"\x00"
    for position in (0, 4, 5, 12, 13, 30, len(image) // 2, len(image) - 9, len(image) - 1):
        flipped = bytearray(image)
        flipped[position] ^= 0x40
        yield f"byte {position} flipped", bytes(flipped)


def sealed(body: bytes) -> bytes:
    """``body`` (header, records, count) with its right checksum."""
    return body + struct.pack(">I", zlib.crc32(body))


def header(group_id: int = GROUP, version: int = 1) -> bytes:
    return struct.pack(">4sBQ", b"SKVI", version, group_id)


def record(tag: int, key: bytes, value: bytes) -> bytes:
    return struct.pack(">BI", tag, len(key)) + key + struct.pack(">I", len(value)) + value


APPLIED_SUFFIX = keys.applied_state_key(GROUP)[keys.GROUP_KEY_SIZE :]
# name: (a well-sealed image, the reason it is refused, after "image for group 7 ")
WELL_SEALED_BUT_WRONG = {
    "another group's image": (
        sealed(header(GROUP + 1) + struct.pack(">Q", 0)),
        "is an image of group 8",
    ),
    "a newer format": (
        sealed(header(version=2) + struct.pack(">Q", 0)),
        "has format version 2;",
    ),
    "a wrong count": (
        sealed(header() + record(1, b"a", b"1") + struct.pack(">Q", 2)),
        "says 2 records but holds 1",
    ),
    "records out of order": (
        sealed(header() + record(1, b"b", b"") + record(1, b"a", b"") + struct.pack(">Q", 2)),
        "has records out of order at b'a'",
    ),
    "a duplicate record": (
        sealed(header() + record(1, b"a", b"") + record(1, b"a", b"") + struct.pack(">Q", 2)),
        "has records out of order at b'a'",
    ),
    "meta before data": (
        sealed(header() + record(2, b"\x02", b"") + record(1, b"a", b"") + struct.pack(">Q", 2)),
        "has records out of order at b'a'",
    ),
    "an unknown column family": (
        sealed(header() + record(3, b"a", b"") + struct.pack(">Q", 1)),
        "has a record of unknown column family tag 3",
    ),
    "the applied state": (
        sealed(header() + record(2, APPLIED_SUFFIX, b"x") + struct.pack(">Q", 1)),
        "holds a meta record that is not the state machine's",
    ),
    "a record past the end": (
        sealed(header() + record(1, b"a", b"1")[:-1] + struct.pack(">Q", 1)),
        "has a record cut short at byte 23",
    ),
}


def assert_refused_and_nothing_staged(engine: StorageEngine, data: bytes, match: str) -> None:
    batch = engine.new_batch()
    with pytest.raises(CorruptValue, match=match):
        stage_install_snapshot_data(engine, batch, GROUP, data)
    assert len(batch) == 0
    batch.discard()


def test_a_truncated_or_corrupt_image_is_refused_and_stages_nothing(engines: Engines) -> None:
    source, target = engines.open("source"), engines.open("target")
    fill(source, GROUP, HISTORY)
    fill(target, GROUP, HISTORY[:2])
    before = raw_group(target, GROUP)
    image = build_snapshot_data(source, GROUP)
    for name, data in corruptions(image):
        assert data != image, name
        assert_refused_and_nothing_staged(
            target, data, "truncated|corrupt|magic|format version|empty|image of group"
        )
    assert raw_group(target, GROUP) == before


@pytest.mark.parametrize("name", sorted(WELL_SEALED_BUT_WRONG))
def test_a_well_sealed_image_that_breaks_the_format_is_refused(name: str) -> None:
    engine = MemoryEngine()
    data, reason = WELL_SEALED_BUT_WRONG[name]
    assert_refused_and_nothing_staged(engine, data, re.escape(f"image for group 7 {reason}"))


def test_empty_data_names_the_missing_snapshot_source() -> None:
    engine = MemoryEngine()
    assert_refused_and_nothing_staged(engine, b"", "no snapshot source")


# -- GroupStorage hands Raft the image at its snapshot's index ------------------------------


class LocalGroup:
    """One replica of a group without Raft: appends entries, applies them, snapshots."""

    def __init__(
        self,
        engine: StorageEngine,
        *,
        bootstrap: bool = False,
        source: Callable[[], bytes] | None = None,
    ) -> None:
        self.engine = engine
        source = snapshot_source(engine, GROUP) if source is None else source
        self.storage = GroupStorage(engine, GROUP, snapshot_source=source)
        if bootstrap:
            self.storage.bootstrap((1, 2, 3))

    def run(self, *commands: kv_pb2.Command) -> None:
        """Log, commit and apply ``commands``, one entry each, as a Ready round would."""
        first = self.storage.last_index() + 1
        log = [
            Entry(term=2, index=first + offset, data=each.SerializeToString())
            for offset, each in enumerate(commands)
        ]
        batch = self.engine.new_batch()
        self.storage.stage_append(batch, log)
        self.storage.stage_hard_state(batch, HardState(term=2, vote=1, commit=log[-1].index))
        self.engine.write(batch, sync=True)
        machine = KeyValueStateMachine(self.engine, GROUP)
        batch = self.engine.new_batch()
        for each in commands:
            machine.apply(batch, each)
        self.storage.stage_applied(batch, log[-1].index, ConfState((1, 2, 3)))
        self.engine.write(batch, sync=False)

    def snapshot_and_compact(self) -> SnapshotMetadata:
        applied_index, conf_state = self.storage.applied_state()
        batch = self.engine.new_batch()
        metadata = self.storage.stage_create_snapshot(batch, applied_index, conf_state)
        self.storage.stage_compact(batch, applied_index)
        self.engine.write(batch, sync=True)
        return metadata


def test_snapshot_data_is_the_image_at_the_snapshot_index(engines: Engines) -> None:
    group = LocalGroup(engines.open(), bootstrap=True)
    group.run(*HISTORY[:3])
    image = build_snapshot_data(group.engine, GROUP)
    metadata = group.snapshot_and_compact()
    assert metadata.index == 4
    group.run(*HISTORY[3:])
    snapshot = group.storage.snapshot()
    assert snapshot.metadata == metadata
    assert snapshot.data == image
    assert build_snapshot_data(group.engine, GROUP) != image


def test_snapshot_data_survives_a_restart_and_restarts_past_it_resnapshot(
    engines: Engines,
) -> None:
    group = LocalGroup(engines.open(), bootstrap=True)
    group.run(*HISTORY[:3])
    metadata = group.snapshot_and_compact()
    image = group.storage.snapshot().data
    group.engine.close()

    # Restarted at the snapshot's index: the same image, rebuilt.
    group = LocalGroup(engines.open())
    assert group.storage.snapshot().metadata == metadata
    assert group.storage.snapshot().data == image
    group.run(*HISTORY[3:])
    assert group.storage.snapshot().data == image
    now = build_snapshot_data(group.engine, GROUP)
    group.engine.close()

    # Restarted past it: that state is gone, so a snapshot at the applied
    # index is recorded at open, durably, and its image is today's state.
    group = LocalGroup(engines.open())
    snapshot = group.storage.snapshot()
    assert snapshot.metadata == SnapshotMetadata(
        index=len(HISTORY) + 1, term=2, conf_state=ConfState((1, 2, 3))
    )
    assert snapshot.data == now
    assert group.storage.first_index() == metadata.index + 1, "nothing compacted at open"
    group.engine.close()
    group = LocalGroup(engines.open())
    assert group.storage.snapshot() == snapshot


def test_an_installed_snapshot_keeps_its_image_after_the_state_moves_on(
    engines: Engines,
) -> None:
    leader = LocalGroup(engines.open("leader"), bootstrap=True)
    leader.run(*HISTORY[:4])
    leader.snapshot_and_compact()
    sent = leader.storage.snapshot()

    follower = LocalGroup(engines.open("follower"), bootstrap=True)
    batch = follower.engine.new_batch()
    follower.storage.stage_snapshot(batch, sent.metadata)
    stage_install_snapshot_data(follower.engine, batch, GROUP, sent.data)
    follower.storage.stage_applied(batch, sent.metadata.index, sent.metadata.conf_state)
    follower.engine.write(batch, sync=True)
    follower.run(*HISTORY[4:])
    leader.run(*HISTORY[4:])
    assert follower.storage.snapshot() == sent
    assert state_machine(follower.engine, GROUP) == state_machine(leader.engine, GROUP)


def test_a_discarded_snapshot_leaves_the_previous_one_and_its_image(engines: Engines) -> None:
    group = LocalGroup(engines.open(), bootstrap=True)
    group.run(*HISTORY[:2])
    before = group.storage.snapshot()
    assert before.metadata.index == 1
    batch = group.engine.new_batch()
    group.storage.stage_create_snapshot(batch, 3, ConfState((1, 2, 3)))
    batch.discard()
    assert group.storage.snapshot() == before
    install(MemoryEngine(), GROUP, before.data)  # the empty group at the bootstrap


def test_a_snapshot_is_taken_at_the_applied_index_on_disk(engines: Engines) -> None:
    group = LocalGroup(engines.open(), bootstrap=True)
    group.run(*HISTORY[:3])
    batch = group.engine.new_batch()
    with pytest.raises(ValueError, match="applied index 4 on disk"):
        group.storage.stage_create_snapshot(batch, 3, ConfState((1, 2, 3)))
    assert len(batch) == 0
    batch.discard()


def test_a_group_too_large_to_snapshot_records_no_snapshot(engines: Engines) -> None:
    engine = engines.open()
    group = LocalGroup(
        engine,
        bootstrap=True,
        source=lambda: build_snapshot_data(engine, GROUP, max_bytes=100),
    )
    group.run(*HISTORY)
    batch = engine.new_batch()
    with pytest.raises(SnapshotTooLarge):
        group.storage.stage_create_snapshot(batch, len(HISTORY) + 1, ConfState((1, 2, 3)))
    assert len(batch) == 0
    batch.discard()
    assert group.storage.snapshot().metadata.index == 1
    assert group.storage.first_index() == 2


def test_a_snapshot_past_the_applied_index_is_reported_at_open(engines: Engines) -> None:
    engine = engines.open()
    storage = GroupStorage(engine, GROUP)
    storage.bootstrap((1, 2, 3))
    batch = engine.new_batch()
    storage.stage_snapshot(batch, SnapshotMetadata(index=9, term=2))
    engine.write(batch, sync=True)
    with pytest.raises(CorruptValue, match="applied index 1, not at the snapshot's"):
        GroupStorage(engine, GROUP, snapshot_source=snapshot_source(engine, GROUP))


# -- end to end: a cut-off follower catches up through the snapshot -----------------------

NODES = (1, 2, 3)
COMPACT_EVERY = 4
CHUNK_BYTES = 64


class Replica:
    """One member of the group on its own engine, running the Ready contract in full."""

    def __init__(self, node_id: int, engine: StorageEngine) -> None:
        self.node_id = node_id
        self.engine = engine
        self.storage = GroupStorage(engine, GROUP, snapshot_source=snapshot_source(engine, GROUP))
        self.storage.bootstrap(NODES)
        self.machine = KeyValueStateMachine(engine, GROUP)
        self.raw = RawNode(
            Config(id=node_id, applied=1, snapshot_chunk_size=CHUNK_BYTES, seed=node_id),
            self.storage,
        )
        self.installed: list[int] = []

    def handle_ready(self, outbox: deque[Message]) -> bool:
        if not self.raw.has_ready():
            return False
        ready = self.raw.ready()
        batch = self.engine.new_batch()
        if ready.snapshot is not None:
            metadata = ready.snapshot.metadata
            self.storage.stage_snapshot(batch, metadata)
            stage_install_snapshot_data(self.engine, batch, GROUP, ready.snapshot.data)
            self.storage.stage_applied(batch, metadata.index, metadata.conf_state)
        self.storage.stage_append(batch, ready.entries)
        if ready.hard_state is not None:
            self.storage.stage_hard_state(batch, ready.hard_state)
        self.engine.write(batch, sync=ready.must_sync)
        outbox.extend(ready.messages)
        if ready.snapshot is not None:
            self.installed.append(ready.snapshot.metadata.index)
            self.machine = KeyValueStateMachine(self.engine, GROUP)
        if ready.committed_entries:
            batch = self.engine.new_batch()
            for entry in ready.committed_entries:
                assert entry.type == EntryType.NORMAL
                if entry.data:
                    self.machine.apply(batch, kv_pb2.Command.FromString(entry.data))
            _, conf_state = self.storage.applied_state()
            self.storage.stage_applied(batch, ready.committed_entries[-1].index, conf_state)
            self.engine.write(batch, sync=False)
            self.maybe_compact()
        self.raw.advance(ready)
        return True

    def maybe_compact(self) -> None:
        applied_index, conf_state = self.storage.applied_state()
        if applied_index - self.storage.snapshot().metadata.index < COMPACT_EVERY:
            return
        batch = self.engine.new_batch()
        self.storage.stage_create_snapshot(batch, applied_index, conf_state)
        self.storage.stage_compact(batch, applied_index)
        self.engine.write(batch, sync=True)


class Network:
    def __init__(self, replicas: dict[int, Replica]) -> None:
        self.replicas = replicas
        self.cut_off: set[int] = set()
        self.snapshot_chunks = 0

    def settle(self) -> None:
        outbox: deque[Message] = deque()
        for _ in range(10_000):
            busy = [replica.handle_ready(outbox) for replica in self.replicas.values()]
            if not any(busy) and not outbox:
                return
            while outbox:
                message = outbox.popleft()
                if message.to in self.cut_off or message.from_ in self.cut_off:
                    continue
                if message.type == MessageType.SNAPSHOT:
                    self.snapshot_chunks += 1
                self.replicas[message.to].raw.step(message)
        raise AssertionError("the group never went quiet")

    def tick(self) -> None:
        for replica in self.replicas.values():
            replica.raw.tick()
        self.settle()


def test_a_cut_off_follower_catches_up_through_the_chunked_snapshot(engines: Engines) -> None:
    replicas = {node_id: Replica(node_id, engines.open(f"node{node_id}")) for node_id in NODES}
    network = Network(replicas)
    for _ in range(100):
        leaders = [r for r in replicas.values() if r.raw.raft.role == Role.LEADER]
        if leaders:
            break
        network.tick()
    [leader] = leaders
    [lagging, _] = [r for r in replicas.values() if r is not leader]

    def propose(first: int, count: int) -> None:
        for number in range(first, first + count):
            key = f"key-{number % 7}".encode()
            operation = delete(key) if number % 5 == 4 else put(key, f"v{number}".encode() * 9)
            payload = command(operation, client_id=number % 3 + 1, seq=number)
            leader.raw.propose(payload.SerializeToString())
            network.settle()

    propose(1, 6)
    network.cut_off.add(lagging.node_id)
    behind = lagging.storage.applied_state()[0]
    propose(7, 20)
    assert leader.storage.first_index() > behind + 1, "the leader compacted past the follower"
    assert network.snapshot_chunks == 0
    network.cut_off.clear()
    leader_applied = leader.storage.applied_state()[0]
    for _ in range(50):
        if lagging.storage.applied_state()[0] == leader_applied:
            break
        network.tick()
    assert lagging.installed, "the follower caught up by snapshot"
    assert network.snapshot_chunks > 1, "in several chunks"
    propose(27, 3)
    for replica in replicas.values():
        assert replica.storage.applied_state()[0] == leader.storage.applied_state()[0]
        assert state_machine(replica.engine, GROUP) == state_machine(leader.engine, GROUP)
        # Every replica holds the same image for the same index.
        assert replica.storage.snapshot() == leader.storage.snapshot()
    assert_sessions_answer(lagging.engine)


def assert_sessions_answer(engine: StorageEngine) -> None:
    """The sessions came with the snapshot: a retry gets its recorded answer."""
    machine = KeyValueStateMachine(engine, GROUP)
    batch = engine.new_batch()
    retry = machine.apply(batch, command(put(b"key-1", b"other"), client_id=1, seq=27))
    assert retry.revision < machine.revision, "answered from the session, not applied again"
    assert len(batch) == 0
    batch.discard()
