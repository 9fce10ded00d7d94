"""A group's part in a move (``shardkv.fsm.migration``), driven step by step by hand.

Two data groups on one engine: the source (1) and the target (5) of the move
that adding group 5 makes (ring epoch 1: groups 1 to 4; epoch 2: groups 1 to
5). The tests take the steps the driver (``shardkv.node.migration``) takes:
begin, copy everything, copy what changed, freeze, seal, copy the last
changes, activate, release, collect; they read the source with
``export_chunks`` as ``Node.Export`` does, and check who serves which key at
every step, what moves (records with their metadata, deletions, sessions,
transaction records), fencing and repeated steps, and that replicas applying
the same entries in other rounds end equal. The last tests run the driver's
own passes (``MigrationDriver.advance``) over the two groups, with a fake
meta group and fake calls, to check that a phase started over after a
failure still ends right. Everything runs on ``MemoryEngine`` and RocksDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from shardkv.errors import ProposalFailed
from shardkv.fsm.kv import STALE, KeyValueStateMachine
from shardkv.fsm.migration import Access
from shardkv.fsm.snapshot import build_snapshot_data, stage_install_snapshot_data
from shardkv.metrics import NodeMetrics
from shardkv.node import migration as migration_driver
from shardkv.node.cluster import ClusterAgent
from shardkv.node.driving import StepFailed
from shardkv.node.export import export_chunks
from shardkv.node.migration import MigrationDriver
from shardkv.node.resolver import NodeGroupCalls
from shardkv.ring import build_ring, ring_of
from shardkv.storage import ColumnFamily, MemoryEngine, StorageEngine, keys
from shardkv.txn_protocol import decide_command
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2
from tests.unit.engines import replayed
from tests.unit.test_fsm_kv import command, delete, put
from tests.unit.test_fsm_kv import engine as engine  # the fixture: both engines
from tests.unit.test_fsm_txn import prepare, ref, state

SOURCE, TARGET = 1, 5
EPOCH = 2
OLD_RING = ring_of(1, {1: 1, 2: 1, 3: 1, 4: 1})
NEW_RING = ring_of(EPOCH, {1: 1, 2: 1, 3: 1, 4: 1, 5: 1})
COPYING, FROZEN = cluster_pb2.ARC_OUT_COPYING, cluster_pb2.ARC_OUT_FROZEN
SEALED, RELEASED = cluster_pb2.ARC_OUT_SEALED, cluster_pb2.ARC_OUT_RELEASED
IMPORTING, ACTIVE = cluster_pb2.ARC_IN_IMPORTING, cluster_pb2.ARC_IN_ACTIVE
ALL, CHANGES, KEYS = node_pb2.EXPORT_ALL, node_pb2.EXPORT_CHANGES, node_pb2.EXPORT_KEYS


def _keys(old_owner: int, new_owner: int, count: int) -> list[bytes]:
    """``count`` keys the old ring gives ``old_owner`` and the new one ``new_owner``."""
    old, new = build_ring(OLD_RING), build_ring(NEW_RING)
    found = [
        key
        for key in (b"key-%04d" % number for number in range(4000))
        if old.group_for(key) == old_owner and new.group_for(key) == new_owner
    ]
    assert len(found) >= count
    return found[:count]


MOVING = _keys(SOURCE, TARGET, 8)  # group 1's keys that move to group 5
STAYING = _keys(SOURCE, SOURCE, 4)  # group 1's keys that stay
ELSEWHERE = _keys(2, 2, 1)[0]  # group 2's, in both rings


def step(*, driver: int = 1, epoch: int = EPOCH, **kind: object) -> kv_pb2.Command:
    """A ``MigrateStep`` of the move 1 -> 5, as the driver proposes it."""
    made = kv_pb2.MigrateStep(epoch=epoch, source=SOURCE, target=TARGET, driver=driver)
    for name, value in kind.items():
        if isinstance(value, bool):
            setattr(made, name, value)
        else:
            getattr(made, name).CopyFrom(value)
    return kv_pb2.Command(migrate=made)


def decide(client_id: int, seq: int, primary_key: bytes, commit: bool = True) -> kv_pb2.Command:
    return decide_command(ref(client_id, seq), commit, True, primary_key)


def wrong_group(
    key: bytes, epoch: int = EPOCH, group_id: int = SOURCE, moved_to: int = 0
) -> kv_pb2.WrongGroup:
    return kv_pb2.WrongGroup(group_id=group_id, epoch=epoch, key=key, moved_to=moved_to)


def value_of(machine: KeyValueStateMachine, key: bytes) -> bytes | None:
    found = machine.get(key)
    return found.value if found is not None else None


def scanned(machine: KeyValueStateMachine) -> list[bytes]:
    return [found.key for found in machine.scan()]


def meta(engine: StorageEngine, low: bytes, high: bytes) -> list[bytes]:
    return [key for key, _ in engine.scan(ColumnFamily.META, low, high)]


@dataclass
class Groups:
    """The source and the target on one engine; every command applied is logged."""

    engine: StorageEngine
    source: KeyValueStateMachine
    target: KeyValueStateMachine
    log: list[tuple[int, kv_pb2.Command]] = field(default_factory=list)
    results: list[kv_pb2.CommandResult] = field(default_factory=list)

    def apply(self, machine: KeyValueStateMachine, made: kv_pb2.Command) -> kv_pb2.CommandResult:
        """Apply ``made`` in a round of its own."""
        batch = self.engine.new_batch()
        result = machine.apply(batch, made)
        self.engine.write(batch, sync=False)
        self.log.append((machine.group_id, made))
        self.results.append(result)
        return result

    def migrate(self, machine: KeyValueStateMachine, made: kv_pb2.Command) -> kv_pb2.MigrateResult:
        result = self.apply(machine, made)
        assert result.HasField("migrate"), result
        return result.migrate

    def applies(self, machine: KeyValueStateMachine, made: kv_pb2.Command) -> None:
        outcome = self.migrate(machine, made)
        assert outcome.applied, outcome.reason
        assert not outcome.reason

    def refuses(self, machine: KeyValueStateMachine, made: kv_pb2.Command) -> str:
        """Apply ``made``, check it did not apply and wrote nothing; the reason."""
        before = state(self.engine, SOURCE), state(self.engine, TARGET)
        outcome = self.migrate(machine, made)
        assert not outcome.applied
        assert outcome.reason
        assert (state(self.engine, SOURCE), state(self.engine, TARGET)) == before
        return outcome.reason

    def write(
        self,
        machine: KeyValueStateMachine,
        *operations: kv_pb2.Operation,
        client_id: int = 0,
        seq: int = 0,
        acked_seq: int = 0,
    ) -> kv_pb2.CommandResult:
        made = command(*operations, client_id=client_id, seq=seq, acked_seq=acked_seq)
        return self.apply(machine, made)

    def replay(
        self, seed: int, sizes: tuple[int, int]
    ) -> tuple[MemoryEngine, dict[int, KeyValueStateMachine], list[kv_pb2.CommandResult]]:
        """Apply the log again on a new replica, in rounds of random sizes within
        ``sizes`` (seeded): its engine, its machines by group and their results."""
        replica = MemoryEngine()
        machines = {
            SOURCE: KeyValueStateMachine(replica, SOURCE),
            TARGET: KeyValueStateMachine(replica, TARGET),
        }
        rounds = random.Random(seed)
        results: list[kv_pb2.CommandResult] = []
        index = 0
        while index < len(self.log):
            size = rounds.randint(*sizes)
            batch = replica.new_batch()
            for group_id, made in self.log[index : index + size]:
                results.append(machines[group_id].apply(batch, made))
            replica.write(batch, sync=False)
            index += size
        return replica, machines, results

    def export(
        self, kind: node_pb2.ExportKind, since: int = 0, chunk_keys: int = 0
    ) -> list[kv_pb2.MigrateImport]:
        request = node_pb2.ExportRequest(
            group_id=SOURCE,
            epoch=EPOCH,
            target=TARGET,
            kind=kind,
            since_revision=since,
            chunk_keys=chunk_keys,
        )
        return list(export_chunks(self.source, request))

    def copy(self, kind: node_pb2.ExportKind, since: int = 0) -> int:
        """Export from the source into the target; the source revision the export read at."""
        revision = self.source.revision
        for chunk in self.export(kind, since, chunk_keys=3):
            self.applies(self.target, step(copy=chunk))
        return revision

    # -- the driver's steps, in order ------------------------------------------------

    def begin(self) -> None:
        self.applies(self.source, step(begin=NEW_RING))
        self.applies(self.target, step(begin=NEW_RING))

    def copy_until_frozen(self) -> int:
        """Copy everything, then what changed; freeze. The watermark of the last copy."""
        watermark = self.copy(ALL)
        watermark = self.copy(CHANGES, watermark)
        self.applies(self.source, step(freeze=True))
        return watermark

    def seal_and_activate(self, watermark: int) -> None:
        self.applies(self.source, step(seal=True))
        self.copy(CHANGES, watermark)
        self.applies(self.target, step(activate=True))

    def release_and_collect(self) -> None:
        self.applies(self.source, step(release=True))
        for chunk in self.export(KEYS, chunk_keys=2):
            assert not chunk.records, "keys only"
            self.applies(self.source, step(collect=kv_pb2.MigrateCollect(keys=chunk.keys)))
        self.applies(self.source, step(collect=kv_pb2.MigrateCollect(last=True)))

    def end(self) -> None:
        for machine in (self.source, self.target):
            self.apply(machine, kv_pb2.Command(ring=NEW_RING))


def new_groups(engine: StorageEngine) -> Groups:
    """The source and the target on ``engine``, both at the old ring."""
    made = Groups(
        engine, KeyValueStateMachine(engine, SOURCE), KeyValueStateMachine(engine, TARGET)
    )
    for machine in (made.source, made.target):
        made.apply(machine, kv_pb2.Command(ring=OLD_RING))
    return made


@pytest.fixture
def groups(engine: StorageEngine) -> Groups:
    return new_groups(engine)


def seed(groups: Groups) -> None:
    """The source holds MOVING[:6] and STAYING; MOVING[0] written twice."""
    groups.write(groups.source, *(put(key, b"v1-" + key) for key in MOVING[:6]))
    groups.write(groups.source, *(put(key, b"s-" + key) for key in STAYING))
    groups.write(groups.source, put(MOVING[0], b"v2"))


def arcs(machine: KeyValueStateMachine) -> tuple[dict[int, int], dict[int, int]]:
    found = machine.migration.state
    assert found is not None
    return dict(found.outgoing), dict(found.incoming)


def test_a_snapshot_carries_the_move_state_and_the_marks(groups: Groups) -> None:
    seed(groups)
    groups.begin()
    groups.write(groups.source, put(MOVING[0], b"marked"))
    groups.applies(groups.source, step(freeze=True, driver=3))
    image = build_snapshot_data(groups.engine, SOURCE)
    other = MemoryEngine()
    batch = other.new_batch()
    stage_install_snapshot_data(other, batch, SOURCE, image)
    other.write(batch, sync=False)
    installed = KeyValueStateMachine(other, SOURCE)
    assert installed.migration.state == groups.source.migration.state
    assert list(installed.migration.changed_since(TARGET, 0)) == [MOVING[0]]
    assert installed.wrong_group(MOVING[1], Access.WRITE) == wrong_group(MOVING[1])
    other.close()


# -- begin and marks -----------------------------------------------------------------


def test_begin_waits_for_the_ring_before_the_target_ring(engine: StorageEngine) -> None:
    groups = Groups(
        engine, KeyValueStateMachine(engine, SOURCE), KeyValueStateMachine(engine, TARGET)
    )
    reason = groups.refuses(groups.source, step(begin=NEW_RING))
    assert "epoch 0" in reason
    assert not groups.source.migration.active
    groups.apply(groups.source, kv_pb2.Command(ring=OLD_RING))
    groups.apply(groups.target, kv_pb2.Command(ring=OLD_RING))
    groups.begin()
    assert arcs(groups.source) == ({TARGET: COPYING}, {})
    assert arcs(groups.target) == ({}, {SOURCE: IMPORTING})
    assert groups.engine.get(ColumnFamily.META, keys.migration_key(SOURCE)) is not None
    # Repeated: harmless.
    groups.begin()
    assert arcs(groups.source) == ({TARGET: COPYING}, {})
    # A group that is neither source nor target, a migration to an epoch
    # applied already, a step of another migration: refused.
    bystander = KeyValueStateMachine(engine, 2)
    groups.apply(bystander, kv_pb2.Command(ring=OLD_RING))
    assert "neither" in groups.refuses(bystander, step(begin=NEW_RING))
    assert not bystander.migration.active
    assert "already" in groups.refuses(groups.source, step(epoch=1, begin=OLD_RING))
    assert "no part" in groups.refuses(groups.source, step(epoch=3, freeze=True))
    assert arcs(groups.source) == ({TARGET: COPYING}, {})


def test_a_begun_migration_survives_a_restart(groups: Groups) -> None:
    groups.begin()
    groups.applies(groups.source, step(freeze=True, driver=4))
    reopened = KeyValueStateMachine(groups.engine, SOURCE)
    assert reopened.migration.state == groups.source.migration.state
    assert arcs(reopened) == ({TARGET: FROZEN}, {})
    assert reopened.wrong_group(MOVING[0], Access.WRITE) == wrong_group(MOVING[0])
    assert KeyValueStateMachine(groups.engine, TARGET).migration.state == (
        groups.target.migration.state
    )


def test_the_source_serves_moving_keys_while_copying_and_marks_their_changes(
    groups: Groups,
) -> None:
    source, target = groups.source, groups.target
    seed(groups)
    changes = source.migration.changed_since
    assert list(changes(TARGET, 0)) == [], "no marks before the move began"
    groups.begin()
    begun_at = source.revision
    written = groups.write(source, put(MOVING[0], b"v3"), put(STAYING[0], b"s2"))
    assert not written.HasField("wrong_group")
    assert written.results[0].previous.version == 2
    marked_at = source.revision
    groups.write(source, delete(MOVING[1]))
    groups.write(source, delete(MOVING[7]))  # absent: writes nothing, marks nothing
    groups.write(source, delete(STAYING[1]))
    groups.apply(source, kv_pb2.Command(puts=[kv_pb2.KeyValue(key=MOVING[6], value=b"bulk")]))
    assert value_of(source, MOVING[0]) == b"v3"
    assert sorted(changes(TARGET, begun_at)) == sorted([MOVING[0], MOVING[1], MOVING[6]])
    assert sorted(changes(TARGET, marked_at)) == sorted([MOVING[1], MOVING[6]])
    assert list(changes(TARGET, source.revision)) == []
    assert list(changes(4, 0)) == [], "marks are kept per target"
    for access in Access:
        assert source.wrong_group(MOVING[0], access) is None
        assert target.wrong_group(MOVING[0], access) == wrong_group(MOVING[0], group_id=TARGET)
    # The target owns nothing yet: neither moving nor other keys.
    refused = groups.write(target, put(MOVING[2], b"early"))
    assert refused.wrong_group == wrong_group(MOVING[2], group_id=TARGET)
    assert groups.write(target, put(STAYING[0], b"x")).wrong_group.epoch == 1
    assert target.get(MOVING[2]) is None
    assert groups.write(source, put(ELSEWHERE, b"x")).wrong_group == wrong_group(ELSEWHERE, 1)


# -- the whole move ------------------------------------------------------------------


def test_a_whole_move_carries_every_key_with_its_metadata(groups: Groups) -> None:
    source, target = groups.source, groups.target
    seed(groups)
    groups.begin()
    watermark = groups.copy(ALL)
    # The first copy: every moving key as the source holds it, not served yet.
    for key in MOVING[:6]:
        assert target.get(key) == source.get(key)
    assert target.get(STAYING[0]) is None, "keys that stay are not copied"
    assert target.key_count == 6
    assert scanned(target) == []
    # Changes while copying: a write, a delete, a new key, a transaction prepared.
    groups.write(source, put(MOVING[0], b"v3"))
    groups.write(source, delete(MOVING[1]))
    groups.write(source, put(MOVING[6], b"new"))
    groups.write(source, put(STAYING[0], b"s2"))
    held = groups.apply(source, prepare(7, 1, then=[put(MOVING[3], b"txn")]))
    assert held.txn.succeeded and not held.HasField("wrong_group")
    assert list(source.txns.locks) == [MOVING[3]]
    watermark = groups.copy(CHANGES, watermark)
    assert value_of(target, MOVING[0]) == b"v3"
    assert target.get(MOVING[1]) is None, "the deletion was copied"
    assert value_of(target, MOVING[6]) == b"new"
    assert target.key_count == 6

    # Frozen: writes and new prepares of moving keys refused, the rest served.
    groups.applies(source, step(freeze=True))
    assert arcs(source) == ({TARGET: FROZEN}, {})
    refused = groups.write(source, put(MOVING[2], b"late"), client_id=3, seq=1)
    assert refused.wrong_group == wrong_group(MOVING[2])
    assert groups.write(source, put(STAYING[2], b"s"), put(MOVING[2], b"x")).wrong_group == (
        wrong_group(MOVING[2])
    )
    assert value_of(source, STAYING[2]) == b"s-" + STAYING[2], "refused whole"
    assert groups.apply(source, prepare(8, 1, then=[put(MOVING[4], b"t")])).wrong_group == (
        wrong_group(MOVING[4])
    )
    assert source.wrong_group(MOVING[2], Access.READ) is None
    assert source.wrong_group(MOVING[2], Access.DECIDE) is None
    assert groups.write(source, put(STAYING[1], b"s3")).results[0].succeeded
    assert groups.write(source, delete(STAYING[3])).results[0].succeeded
    # The seal waits for the lock on a moving key (not for one on a key that stays).
    groups.apply(source, prepare(9, 1, then=[put(STAYING[2], b"locked")]))
    reason = groups.refuses(source, step(seal=True))
    assert "waiting for 1 locked" in reason
    assert groups.migrate(source, step(seal=True)).wait, "the driver repeats it"
    assert arcs(source) == ({TARGET: FROZEN}, {})
    decided = groups.apply(source, decide(7, 1, MOVING[3]))
    assert decided.txn.succeeded, "a decision of a transaction prepared is served"
    assert value_of(source, MOVING[3]) == b"txn"
    assert MOVING[3] in list(source.migration.changed_since(TARGET, watermark))
    groups.applies(source, step(seal=True))
    assert arcs(source) == ({TARGET: SEALED}, {})
    for access in Access:
        sealed = wrong_group(MOVING[0], moved_to=TARGET)  # names where it goes
        assert source.wrong_group(MOVING[0], access) == sealed
        assert source.wrong_group(STAYING[0], access) is None
        assert target.wrong_group(MOVING[0], access) is not None, "no one serves it now"

    # The last copy, then the target serves the keys exactly as the source held them.
    groups.copy(CHANGES, watermark)
    groups.applies(target, step(activate=True))
    assert arcs(target) == ({}, {SOURCE: ACTIVE})
    moved = [key for key in MOVING if source.get(key) is not None]
    assert moved == [MOVING[0], *MOVING[2:7]]
    for key in MOVING:
        assert target.get(key) == source.get(key)
        for access in Access:
            assert target.wrong_group(key, access) is None
    assert target.key_count == len(moved)
    assert target.get(STAYING[0]) is None
    imported = [target.get(key) for key in moved]
    assert target.revision >= max(
        max(found.mod_revision, found.create_revision) for found in imported if found is not None
    )
    before = target.get(MOVING[0])
    assert before is not None
    written = groups.write(target, put(MOVING[0], b"at the target"))
    assert written.results[0].succeeded
    after = target.get(MOVING[0])
    assert after is not None
    assert after.version == before.version + 1
    assert after.create_revision == before.create_revision
    assert after.mod_revision > before.mod_revision
    assert groups.write(target, put(MOVING[1], b"again")).results[0].succeeded
    assert target.key_count == len(moved) + 1

    # Released and collected: the source keeps only the keys that stay.
    groups.applies(source, step(release=True))
    assert arcs(source) == ({TARGET: RELEASED}, {})
    staying_now = [key for key in STAYING if source.get(key) is not None]
    assert scanned(source) == sorted(staying_now)
    key_chunks = groups.export(KEYS, chunk_keys=2)
    assert sorted(key for chunk in key_chunks for key in chunk.keys) == sorted(moved)
    assert len(key_chunks) == 3
    groups.applies(source, step(collect=kv_pb2.MigrateCollect(keys=key_chunks[0].keys)))
    assert source.key_count == len(staying_now) + len(moved) - 2
    # A key that does not move is never dropped, whatever the collect names.
    groups.applies(source, step(collect=kv_pb2.MigrateCollect(keys=[STAYING[0]])))
    assert value_of(source, STAYING[0]) == b"s2"
    for chunk in key_chunks[1:]:
        groups.applies(source, step(collect=kv_pb2.MigrateCollect(keys=chunk.keys)))
    assert all(source.get(key) is None for key in MOVING)
    assert source.key_count == len(staying_now)
    assert KeyValueStateMachine(groups.engine, SOURCE).key_count == len(staying_now)
    assert list(source.migration.changed_since(TARGET, 0)), "marks stay until the last collect"
    assert [record.txn for record in source.txns.records()] == [ref(7, 1)]
    groups.applies(source, step(collect=kv_pb2.MigrateCollect(last=True)))
    assert list(source.migration.changed_since(TARGET, 0)) == []
    assert meta(groups.engine, *keys.mark_range(SOURCE)) == []
    assert source.txns.records() == []
    assert [record.txn for record in target.txns.records()] == [ref(7, 1)]

    # The target ring applied: the migration is over in both groups.
    groups.end()
    for machine in (source, target):
        assert not machine.migration.active
        assert groups.engine.get(ColumnFamily.META, keys.migration_key(machine.group_id)) is None
        assert not KeyValueStateMachine(groups.engine, machine.group_id).migration.active
    assert source.wrong_group(MOVING[0]) == wrong_group(MOVING[0])
    assert target.wrong_group(MOVING[0]) is None
    assert source.wrong_group(STAYING[0]) is None
    assert scanned(target) == sorted([*moved, MOVING[1]])
    assert target.key_count == len(moved) + 1


def test_imported_revisions_raise_the_target_revision(groups: Groups) -> None:
    source, target = groups.source, groups.target
    for number in range(20):
        groups.write(source, put(STAYING[0], b"%d" % number))  # the source's revision climbs
    groups.write(source, put(MOVING[0], b"m"))
    assert target.revision == 0
    groups.begin()
    groups.copy(ALL)
    assert target.revision == source.revision == 21
    groups.applies(source, step(freeze=True))
    groups.applies(source, step(seal=True))
    groups.applies(target, step(activate=True))
    groups.write(target, put(MOVING[0], b"n"))
    found = target.get(MOVING[0])
    assert found is not None
    assert (found.version, found.create_revision, found.mod_revision) == (2, 21, 22)


# -- scans ---------------------------------------------------------------------------


def test_scans_show_each_key_in_one_group_and_wait_while_it_is_sealed(groups: Groups) -> None:
    source, target = groups.source, groups.target
    seed(groups)
    everything = sorted([*MOVING[:6], *STAYING])
    assert scanned(source) == everything
    groups.begin()
    watermark = groups.copy_until_frozen()
    assert scanned(source) == everything, "frozen keys are still read at the source"
    assert scanned(target) == [], "copies are not served while importing"
    assert [found.key for found in target.scan(prefix=b"key-")] == []
    assert source.scan_refusal() is None and target.scan_refusal() is None
    groups.applies(source, step(seal=True))
    assert source.scan_refusal() == kv_pb2.WrongGroup(group_id=SOURCE, epoch=EPOCH)
    assert target.scan_refusal() is None
    groups.copy(CHANGES, watermark)
    groups.applies(target, step(activate=True))
    assert scanned(target) == sorted(MOVING[:6])
    assert [found.key for found in target.scan(limit=2)] == sorted(MOVING[:6])[:2]
    assert source.scan_refusal() is not None, "sealed until released"
    groups.applies(source, step(release=True))
    assert source.scan_refusal() is None
    assert scanned(source) == sorted(STAYING), "released keys are left out before collect"
    assert [found.key for found in source.scan(limit=2)] == sorted(STAYING)[:2]


# -- sessions ------------------------------------------------------------------------


def test_sessions_move_with_the_keys_and_floors_merge_to_the_higher(groups: Groups) -> None:
    source, target = groups.source, groups.target
    groups.begin()
    # Client 9: applied at the source (seq 2 kept, floor 1).
    groups.write(source, put(MOVING[0], b"a"), client_id=9, seq=1)
    at_source = groups.write(source, put(MOVING[1], b"b"), client_id=9, seq=2, acked_seq=1)
    # Client 10: floor 25 at the target, 11 at the source.
    groups.write(target, client_id=10, seq=30, acked_seq=25)
    groups.write(source, put(MOVING[2], b"c"), client_id=10, seq=12, acked_seq=11)
    # Client 11: floor 3 at the target (seq 5 kept there), 10 at the source.
    groups.write(target, client_id=11, seq=5, acked_seq=3)
    groups.write(source, put(STAYING[0], b"d"), client_id=11, seq=11, acked_seq=10)
    # Client 12: a floor far above the target's results (range forgetting).
    groups.write(target, client_id=12, seq=500)
    groups.write(source, put(STAYING[1], b"e"), client_id=12, seq=1001, acked_seq=1000)
    watermark = groups.copy_until_frozen()
    groups.seal_and_activate(watermark)
    assert [target.session_floor(client) for client in (9, 10, 11, 12)] == [1, 25, 10, 1000]
    # A retry at the target of what applied at the source: the same answer, not applied again.
    revision, moved = target.revision, target.get(MOVING[1])
    retried = groups.write(target, put(MOVING[1], b"b"), client_id=9, seq=2, acked_seq=1)
    assert retried == replayed(at_source)
    assert (target.revision, target.get(MOVING[1])) == (revision, moved)
    assert groups.write(target, put(MOVING[0], b"a"), client_id=9, seq=1) == STALE
    assert groups.write(target, put(MOVING[2], b"c"), client_id=10, seq=12) == STALE
    assert groups.write(target, client_id=11, seq=5) == STALE, "below the merged floor"
    assert groups.write(target, client_id=12, seq=500) == STALE
    kept = groups.write(target, client_id=10, seq=30)
    assert kept.revision == 0, "the target's own result, recorded before the move"
    # A new seq applies once.
    fresh = groups.write(target, put(MOVING[1], b"b2"), client_id=9, seq=3, acked_seq=2)
    assert fresh.results[0].succeeded and value_of(target, MOVING[1]) == b"b2"


# -- transactions --------------------------------------------------------------------


def test_transaction_records_move_with_their_primary_key(groups: Groups) -> None:
    source, target = groups.source, groups.target
    seed(groups)
    groups.begin()
    # Decided while copying: a record whose primary key moves, one whose primary stays.
    groups.apply(source, prepare(7, 1, then=[put(MOVING[0], b"t")]))
    assert groups.apply(source, decide(7, 1, MOVING[0])).txn.succeeded
    groups.apply(source, prepare(8, 1, then=[put(STAYING[0], b"t")]))
    assert groups.apply(source, decide(8, 1, STAYING[0])).txn.succeeded
    # Prepared, not decided: its lock on a moving primary must drain before the seal.
    groups.apply(source, prepare(9, 1, then=[put(MOVING[1], b"t")]))
    [record] = [record for chunk in groups.export(CHANGES, 0) for record in chunk.txn_records]
    assert record.txn == ref(7, 1) and record.primary_key == MOVING[0]
    assert record.state == kv_pb2.TXN_COMMITTED
    watermark = groups.copy_until_frozen()
    assert "waiting" in groups.refuses(source, step(seal=True))
    aborted = groups.apply(source, decide(9, 1, MOVING[1], commit=False))
    assert not aborted.HasField("wrong_group") and not aborted.txn.succeeded
    groups.applies(source, step(seal=True))
    # Sealed: no decision on a moving primary at the source, even for a known record.
    for client_id, primary in ((7, MOVING[0]), (9, MOVING[1]), (10, MOVING[2])):
        refused = groups.apply(source, decide(client_id, 1, primary))
        assert refused.wrong_group == wrong_group(primary, moved_to=TARGET)
    assert groups.apply(source, decide(8, 1, STAYING[0])).txn.succeeded, "stays: served"
    groups.copy(CHANGES, watermark)
    groups.applies(target, step(activate=True))
    # At the target: the records the source decided; a new decision is taken there.
    moved = {(r.txn.client_id, r.txn.seq): r for r in target.txns.records()}
    assert sorted(moved) == [(7, 1), (9, 1)]
    assert set(target.txns.open_records) == {(7, 1), (9, 1)}, "the resolver finishes them"
    found = groups.apply(target, decide(7, 1, MOVING[0], commit=False))
    assert found.txn.succeeded, "the record copied, not a new decision"
    assert found.txn.record == moved[(7, 1)]
    found = groups.apply(target, decide(9, 1, MOVING[1], commit=True))
    assert not found.txn.succeeded and found.txn.record.state == kv_pb2.TXN_ABORTED
    new = groups.apply(target, decide(10, 1, MOVING[2], commit=True))
    assert not new.HasField("wrong_group")
    assert new.txn.record.state == kv_pb2.TXN_ABORTED, "nothing prepared here: aborted"
    # The source lets go of the moved records at the last collect, and keeps its own.
    groups.release_and_collect()
    assert [(r.txn.client_id, r.txn.seq) for r in source.txns.records()] == [(8, 1)]
    assert set(source.txns.open_records) == {(8, 1)}


def test_the_target_refuses_decisions_on_moved_primaries_until_activated(groups: Groups) -> None:
    source, target = groups.source, groups.target
    groups.begin()
    groups.apply(source, prepare(7, 1, then=[put(MOVING[0], b"t")]))
    groups.apply(source, decide(7, 1, MOVING[0]))
    watermark = groups.copy_until_frozen()
    groups.applies(source, step(seal=True))
    groups.copy(CHANGES, watermark)
    early = groups.apply(target, decide(7, 1, MOVING[0]))
    assert early.wrong_group == wrong_group(MOVING[0], group_id=TARGET)
    groups.applies(target, step(activate=True))
    assert groups.apply(target, decide(7, 1, MOVING[0])).txn.succeeded


def test_importing_is_what_the_target_refuses_until_it_is_activated(groups: Groups) -> None:
    """``importing``, the leader's reason to hold a request, says exactly which keys the
    target refuses for its move not being active yet: nothing before the move
    begins there, nothing at the source, nothing once it is active."""
    source, target = groups.source, groups.target
    assert not target.importing(command(put(MOVING[0], b"v")))
    groups.begin()
    for key in (*MOVING, *STAYING, ELSEWHERE):
        refused = target.wrong_group(key, Access.WRITE) is not None
        assert target.migration.importing([key]) == (key in MOVING), key
        assert refused, key  # MOVING: not yet; the others: never this group's
        assert not source.migration.importing([key]), key
    # Every key, or (every=False) any: a command also writing a key that is not
    # on its way here would only be refused after a hold.
    assert target.importing(command(put(MOVING[2], b"v"), put(MOVING[1], b"v")))
    mixed = command(put(STAYING[0], b"v"), put(MOVING[1], b"v"))
    assert not target.importing(mixed)
    assert target.importing(mixed, every=False)
    assert not target.importing(command(put(STAYING[0], b"v"), put(ELSEWHERE, b"x")), every=False)
    assert not target.migration.importing([])
    groups.copy_until_frozen()
    groups.applies(source, step(seal=True))
    assert target.importing(command(put(MOVING[0], b"v")))
    groups.applies(target, step(activate=True))
    for key in MOVING:
        assert not target.migration.importing([key]), key
        assert target.wrong_group(key, Access.WRITE) is None, key
    assert not target.importing(command(put(MOVING[0], b"v")))


def test_an_imported_record_does_not_replace_one_the_target_has(groups: Groups) -> None:
    source, target = groups.source, groups.target
    groups.begin()
    groups.apply(source, prepare(7, 1, then=[put(MOVING[0], b"t")]))
    groups.apply(source, decide(7, 1, MOVING[0]))
    [chunk] = groups.export(CHANGES, 0)
    [record] = chunk.txn_records
    groups.applies(target, step(copy=chunk))
    other = kv_pb2.TxnRecord()
    other.CopyFrom(record)
    other.state = kv_pb2.TXN_ABORTED
    groups.applies(target, step(copy=kv_pb2.MigrateImport(txn_records=[other])))
    assert target.txns.records() == [record]


# -- fencing and repeated steps -------------------------------------------------------


def test_a_step_of_a_superseded_driver_is_not_applied(groups: Groups) -> None:
    source, target = groups.source, groups.target
    groups.write(source, put(MOVING[0], b"old"))
    groups.applies(source, step(begin=NEW_RING, driver=5))
    groups.applies(target, step(begin=NEW_RING, driver=5))
    stale = groups.export(ALL)
    groups.write(source, put(MOVING[0], b"new"))
    assert "superseded driver 3" in groups.refuses(source, step(freeze=True, driver=3))
    assert "superseded" in groups.refuses(source, step(begin=NEW_RING, driver=4))
    assert arcs(source) == ({TARGET: COPYING}, {})
    groups.applies(source, step(freeze=True, driver=5))
    # A successor (token 7) copies; a late copy of its predecessor is refused.
    for chunk in groups.export(ALL):
        groups.applies(target, step(copy=chunk, driver=7))
    state_ = target.migration.state
    assert state_ is not None and state_.driver == 7
    assert KeyValueStateMachine(groups.engine, TARGET).migration.state == state_
    for chunk in stale:
        assert "superseded" in groups.refuses(target, step(copy=chunk, driver=5))
    assert value_of(target, MOVING[0]) == b"new"
    assert "superseded" in groups.refuses(target, step(activate=True, driver=6))
    groups.applies(target, step(activate=True, driver=8))
    source_state = source.migration.state
    assert source_state is not None and source_state.driver == 5, "each group its own token"


def test_repeated_steps_are_harmless_and_steps_out_of_order_refused(groups: Groups) -> None:
    source, target = groups.source, groups.target
    seed(groups)
    groups.begin()
    assert "not ARC_OUT_FROZEN" in groups.refuses(source, step(seal=True))
    assert "not ARC_OUT_SEALED" in groups.refuses(source, step(release=True))
    assert "not released" in groups.refuses(
        source, step(collect=kv_pb2.MigrateCollect(keys=MOVING[:2], last=True))
    )
    assert "importing" in groups.refuses(source, step(copy=kv_pb2.MigrateImport()))
    assert groups.refuses(target, step(freeze=True))
    assert groups.refuses(source, step(activate=True))
    chunks = groups.export(ALL)
    for chunk in chunks:
        groups.applies(target, step(copy=chunk))
    copied = state(groups.engine, TARGET)
    for chunk in chunks:
        groups.applies(target, step(copy=chunk))
    assert state(groups.engine, TARGET) == copied, "a repeated copy changes nothing"
    groups.applies(source, step(freeze=True))
    frozen = state(groups.engine, SOURCE)
    groups.applies(source, step(freeze=True))
    groups.begin()
    assert state(groups.engine, SOURCE) == frozen, "a repeated freeze or begin changes nothing"
    assert arcs(source) == ({TARGET: FROZEN}, {})
    groups.applies(source, step(seal=True))
    groups.applies(source, step(seal=True))
    groups.applies(source, step(freeze=True))
    assert arcs(source) == ({TARGET: SEALED}, {}), "a freeze after the seal undoes nothing"
    groups.applies(target, step(activate=True))
    active = state(groups.engine, TARGET)
    groups.applies(target, step(activate=True))
    groups.begin()
    assert state(groups.engine, TARGET) == active
    assert arcs(target) == ({}, {SOURCE: ACTIVE})
    # A copy after the activation would overwrite what the target serves: refused.
    groups.write(target, put(MOVING[0], b"served"))
    assert "already" in groups.refuses(target, step(copy=chunks[0]))
    assert groups.migrate(target, step(copy=chunks[0])).target_active
    assert value_of(target, MOVING[0]) == b"served"
    groups.applies(source, step(release=True))
    groups.applies(source, step(release=True))
    groups.applies(source, step(seal=True))
    assert arcs(source) == ({TARGET: RELEASED}, {})
    groups.release_and_collect()
    collected = state(groups.engine, SOURCE)
    groups.release_and_collect()
    assert state(groups.engine, SOURCE) == collected


# -- replicas agree ------------------------------------------------------------------


def whole_move(groups: Groups) -> None:
    """A move with writes, deletes, sessions and transactions at every step."""
    source, target = groups.source, groups.target
    seed(groups)
    groups.write(source, put(MOVING[2], b"s"), client_id=4, seq=1)
    groups.begin()
    watermark = groups.copy(ALL)
    groups.write(source, put(MOVING[0], b"c1"), delete(MOVING[1]), client_id=4, seq=2)
    groups.apply(source, prepare(7, 1, then=[put(MOVING[3], b"t")], acked_seq=0))
    groups.apply(source, prepare(8, 1, then=[put(STAYING[0], b"t")]))
    watermark = groups.copy(CHANGES, watermark)
    groups.applies(source, step(freeze=True))
    groups.write(source, put(MOVING[4], b"refused"), client_id=4, seq=3)
    groups.write(source, delete(STAYING[1]), client_id=4, seq=4, acked_seq=2)
    groups.migrate(source, step(seal=True))  # waits for the lock
    groups.apply(source, decide(7, 1, MOVING[3]))
    groups.apply(source, decide(8, 1, STAYING[0]))
    groups.seal_and_activate(watermark)
    groups.write(target, put(MOVING[4], b"at target"), client_id=4, seq=3, acked_seq=2)
    groups.write(target, delete(MOVING[5]))
    groups.release_and_collect()
    groups.write(source, put(STAYING[2], b"after"))


def test_replicas_applying_the_same_entries_in_other_rounds_agree(groups: Groups) -> None:
    whole_move(groups)
    whole = state(groups.engine, SOURCE), state(groups.engine, TARGET)
    assert groups.source.migration.state is not None
    expected = [result.SerializeToString() for result in groups.results]
    for seed_ in range(3):
        replica, machines, results = groups.replay(seed_, (1, 8))
        assert [result.SerializeToString() for result in results] == expected
        assert (state(replica, SOURCE), state(replica, TARGET)) == whole
        for group_id, machine in machines.items():
            original = groups.source if group_id == SOURCE else groups.target
            assert machine.migration.state == original.migration.state
            assert machine.key_count == original.key_count
            assert machine.revision == original.revision
            assert machine.txns.locks == original.txns.locks
            assert machine.txns.open_records == original.txns.open_records
            reopened = KeyValueStateMachine(replica, group_id)
            assert reopened.migration.state == original.migration.state
            assert reopened.key_count == original.key_count
        replica.close()


# -- the driver's steps over these groups (shardkv.node.migration) ---------------------


class _Runtime:
    node_id = 1

    def __init__(self) -> None:
        self.metrics = NodeMetrics()


class _Agent:
    """The meta group as the driver sees it: the map, changed by compare-and-set."""

    def __init__(self, cluster_map: cluster_pb2.ClusterMap) -> None:
        self.runtime = _Runtime()
        self.map = cluster_map
        self.failures = 0  # the next updates that fail (a lost leadership, a timeout)
        self.listeners: list[Callable[[], None]] = []

    def on_learn(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    async def update_map(
        self, change: Callable[[cluster_pb2.ClusterMap], cluster_pb2.ClusterMap | None]
    ) -> cluster_pb2.ClusterMap:
        if self.failures:
            self.failures -= 1
            raise ProposalFailed("the meta group lost its leader")
        changed = change(self.map)
        if changed is not None:
            self.map = changed
        return self.map


class _Calls:
    """The groups as the driver reaches them: proposals and exports, applied here."""

    def __init__(self, groups: Groups) -> None:
        self.groups = groups
        self.broken_exports: set[node_pb2.ExportKind] = set()

    async def propose(self, group_id: int, made: kv_pb2.Command) -> kv_pb2.CommandResult:
        machine = self.groups.source if group_id == SOURCE else self.groups.target
        return self.groups.apply(machine, made)

    async def export(self, request: node_pb2.ExportRequest) -> AsyncIterator[node_pb2.ExportChunk]:
        machine = self.groups.source
        revision, key_count = machine.revision, machine.key_count
        frozen = machine.migration.frozen(request.target)
        sent = False
        for chunk in export_chunks(machine, request):
            if request.kind in self.broken_exports:
                self.broken_exports.discard(request.kind)
                raise ProposalFailed("the source's leader went away")
            sent = True
            yield node_pb2.ExportChunk(
                data=chunk, revision=revision, key_count=key_count, frozen=frozen
            )
        if not sent:
            yield node_pb2.ExportChunk(revision=revision, key_count=key_count, frozen=frozen)


def driven(groups: Groups) -> tuple[MigrationDriver, _Agent, _Calls]:
    cluster_map = cluster_pb2.ClusterMap(version=1, ring=OLD_RING)
    cluster_map.migration.target.CopyFrom(NEW_RING)
    cluster_map.migration.moves.add(source=SOURCE, target=TARGET)
    agent, calls = _Agent(cluster_map), _Calls(groups)
    driver = MigrationDriver(cast("ClusterAgent", agent), cast("NodeGroupCalls", calls))
    driver.token = 1  # as if this node led the meta group in term 1
    return driver, agent, calls


async def advance(driver: MigrationDriver, agent: _Agent) -> int:
    """One pass of the move's task (what it does from the phase recorded); the phase after it."""
    move = agent.map.migration.moves[0]
    await driver.advance((SOURCE, TARGET), (agent.map.migration, move))
    return agent.map.migration.moves[0].phase


async def test_the_driver_looks_at_a_new_map_at_once(groups: Groups) -> None:
    """A new map (a ring change just written) wakes the driver's pass, rather than
    waiting for its interval."""
    driver, agent, _ = driven(groups)
    assert not driver._wake.is_set()
    for listener in agent.listeners:
        listener()
    assert driver._wake.is_set()


async def test_a_copy_started_over_still_carries_a_deletion(groups: Groups) -> None:
    source, target = groups.source, groups.target
    seed(groups)
    driver, agent, calls = driven(groups)
    assert await advance(driver, agent) == cluster_pb2.MOVE_COPYING
    # The first copy of everything lands; the catch-up round after it fails.
    calls.broken_exports.add(CHANGES)
    with pytest.raises(ProposalFailed):
        await advance(driver, agent)
    assert value_of(target, MOVING[1]) == b"v1-" + MOVING[1]
    groups.write(source, delete(MOVING[1]))
    # The task starts the phase over (copying everything again), then goes on:
    # freeze, seal, the last copy and the activation in one pass.
    assert await advance(driver, agent) == cluster_pb2.MOVE_ACTIVE
    assert source.get(MOVING[1]) is None
    assert target.get(MOVING[1]) is None, "the key deleted at the source is back at the target"


async def test_a_move_whose_activation_was_not_recorded_goes_on(groups: Groups) -> None:
    source, target = groups.source, groups.target
    seed(groups)
    groups.write(source, put(MOVING[0], b"x"), client_id=3, seq=1)
    driver, agent, _ = driven(groups)
    assert await advance(driver, agent) == cluster_pb2.MOVE_COPYING
    # The target activates, then recording MOVE_FROZEN (beside the switch) and
    # MOVE_ACTIVE in the map both fail.
    agent.failures = 2
    with pytest.raises(ProposalFailed):
        await advance(driver, agent)
    assert arcs(target) == ({}, {SOURCE: ACTIVE})
    assert agent.map.migration.moves[0].phase == cluster_pb2.MOVE_COPYING
    # The task starts the phase over: it must reach MOVE_ACTIVE, not fail forever.
    assert await advance(driver, agent) == cluster_pb2.MOVE_ACTIVE
    assert await advance(driver, agent) == cluster_pb2.MOVE_DONE


def test_a_freeze_that_may_seal_seals_at_once_unless_a_moving_key_is_locked(
    groups: Groups,
) -> None:
    """``seal_when_free``: the freeze seals in the same entry when no lock is held
    on a moving key, and says so (the driver then sends no seal); a lock keeps the
    arc frozen until the seal, which waits for it as before."""
    source = groups.source
    seed(groups)
    groups.begin()
    # A lock on a key that stays does not hold the seal back.
    groups.apply(source, prepare(9, 1, then=[put(STAYING[2], b"locked")]))
    frozen = groups.migrate(source, step(freeze=True, seal_when_free=True))
    assert frozen.applied and frozen.sealed
    assert arcs(source) == ({TARGET: SEALED}, {})
    assert source.wrong_group(MOVING[2], Access.READ) == wrong_group(MOVING[2], moved_to=TARGET)
    again = groups.migrate(source, step(freeze=True, seal_when_free=True))
    assert again.applied and again.sealed, "a repeated freeze says the arc is sealed"
    groups.applies(source, step(seal=True))  # a seal after it changes nothing
    assert arcs(source) == ({TARGET: SEALED}, {})


def test_a_freeze_that_may_seal_stays_frozen_while_a_moving_key_is_locked(
    groups: Groups,
) -> None:
    source = groups.source
    seed(groups)
    groups.begin()
    held = groups.apply(source, prepare(7, 1, then=[put(MOVING[3], b"txn")]))
    assert held.txn.succeeded
    frozen = groups.migrate(source, step(freeze=True, seal_when_free=True))
    assert frozen.applied and not frozen.sealed
    assert arcs(source) == ({TARGET: FROZEN}, {})
    assert source.wrong_group(MOVING[3], Access.DECIDE) is None, "its decision is still served"
    assert groups.migrate(source, step(seal=True)).wait
    groups.apply(source, decide(7, 1, MOVING[3]))
    groups.applies(source, step(seal=True))
    assert arcs(source) == ({TARGET: SEALED}, {})


def _migrate_steps(groups: Groups, group_id: int) -> list[str]:
    """The kinds of the migration steps applied in ``group_id``, in order."""
    return [
        str(made.migrate.WhichOneof("kind"))
        for applied_in, made in groups.log
        if applied_in == group_id and made.HasField("migrate")
    ]


async def test_the_switch_seals_with_the_freeze_when_no_moving_key_is_locked(
    groups: Groups,
) -> None:
    seed(groups)
    driver, agent, _ = driven(groups)
    assert await advance(driver, agent) == cluster_pb2.MOVE_COPYING
    assert await advance(driver, agent) == cluster_pb2.MOVE_ACTIVE
    freezes = [made.migrate for group_id, made in groups.log if made.migrate.freeze]
    assert [freeze.seal_when_free for freeze in freezes] == [True]
    assert "seal" not in _migrate_steps(groups, SOURCE), "the freeze sealed: no seal step"
    assert arcs(groups.source) == ({TARGET: SEALED}, {})
    copies = [made.migrate.copy for _, made in groups.log if made.migrate.HasField("copy")]
    passes = {copy.bulk_pass for copy in copies}
    assert copies[0].bulk_pass and len(passes - {0}) == 1, "the copy of everything is one pass"
    assert copies[-1].bulk_pass == 0, "the last copy after the seal is no bulk pass"


async def test_the_switch_seals_once_the_lock_on_a_moving_key_is_gone(groups: Groups) -> None:
    source = groups.source
    seed(groups)
    driver, agent, _ = driven(groups)
    assert await advance(driver, agent) == cluster_pb2.MOVE_COPYING
    assert groups.apply(source, prepare(7, 1, then=[put(MOVING[3], b"txn")])).txn.succeeded
    switching = asyncio.create_task(advance(driver, agent))
    for _ in range(500):  # the seal is repeated while it waits (every _SEAL_POLL)
        if _migrate_steps(groups, SOURCE).count("seal") >= 2:
            break
        await asyncio.sleep(0.01)
    assert _migrate_steps(groups, SOURCE).count("seal") >= 2
    assert arcs(source) == ({TARGET: FROZEN}, {}), "the seal waits for the lock"
    assert not switching.done()
    groups.apply(source, decide(7, 1, MOVING[3]))
    assert await asyncio.wait_for(switching, 5) == cluster_pb2.MOVE_ACTIVE
    assert value_of(groups.target, MOVING[3]) == b"txn", "the decided write moved"


class _HeldStep:
    """Another move's bulk step in flight through the driver's pipeline, until
    ``gate`` is set (a copy or collect ``_quiet`` must wait for)."""

    def __init__(self, driver: MigrationDriver) -> None:
        self.gate = asyncio.Event()
        self.driver = driver
        self.task: asyncio.Task[object] | None = None

    async def start(self) -> None:
        before = set(self.driver._bulk)
        await migration_driver._Pipeline(1, self.driver._bulk).submit(self.gate.wait())
        (self.task,) = self.driver._bulk - before


async def test_the_switch_waits_for_the_bulk_steps_in_flight_before_the_freeze(
    groups: Groups,
) -> None:
    """The freeze goes once every bulk copy or collect in flight has applied (or
    after ``_QUIET_WAIT``), so the unwritable window runs on a quiet machine."""
    seed(groups)
    driver, agent, _calls = driven(groups)
    assert await advance(driver, agent) == cluster_pb2.MOVE_COPYING
    other = _HeldStep(driver)
    await other.start()
    assert driver._bulk, "a bulk step in flight, from its submission"
    switching = asyncio.create_task(advance(driver, agent))
    for _ in range(500):  # until the copy is done and the switch waits
        if not driver._no_switch.is_set():
            break
        await asyncio.sleep(0.01)
    assert not driver._no_switch.is_set()
    # Written while the switch waits: the catch-up before the freeze carries it.
    groups.write(groups.source, put(MOVING[2], b"during the wait"))
    await asyncio.sleep(0.2)
    assert "freeze" not in _migrate_steps(groups, SOURCE)
    assert not switching.done()
    other.gate.set()
    assert await asyncio.wait_for(switching, 5) == cluster_pb2.MOVE_ACTIVE
    assert not driver._bulk
    assert value_of(groups.target, MOVING[2]) == b"during the wait"
    order = [
        "freeze" if made.migrate.freeze else "copy"
        for _, made in groups.log
        if made.migrate.freeze or MOVING[2] in made.migrate.copy.keys
    ]
    assert order[-2:] == ["copy", "freeze"], "copied on the quiet machine before the freeze"


async def test_a_bulk_step_that_never_ends_holds_the_switch_back_for_a_while_only(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(groups)
    driver, agent, _calls = driven(groups)
    monkeypatch.setattr(migration_driver, "_QUIET_WAIT", 0.1)
    assert await advance(driver, agent) == cluster_pb2.MOVE_COPYING
    stuck = _HeldStep(driver)
    await stuck.start()
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_ACTIVE
    assert stuck.task is not None and stuck.task in driver._bulk, "still in flight"
    stuck.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stuck.task
    assert not driver._bulk, "a cancelled step leaves the bulk steps"


async def test_a_move_found_frozen_switches_without_waiting_for_quiet(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its keys are unwritable already (a driver that took over a frozen move):
    it does not wait for the other moves' bulk steps."""
    seed(groups)
    driver, agent, _calls = driven(groups)
    monkeypatch.setattr(migration_driver, "_QUIET_WAIT", 30.0)
    assert await advance(driver, agent) == cluster_pb2.MOVE_COPYING
    groups.copy(ALL)
    groups.applies(groups.source, step(freeze=True))
    agent.map.migration.moves[0].phase = cluster_pb2.MOVE_FROZEN
    held = _HeldStep(driver)
    await held.start()
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_ACTIVE
    assert driver._bulk, "the other step is still in flight"
    held.gate.set()
    assert arcs(groups.target) == ({}, {SOURCE: ACTIVE})


async def cancelled(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended (a test's cleanup)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def stub_switches(
    monkeypatch: pytest.MonkeyPatch,
    driver: migration_driver.MigrationDriver,
    steps: Callable[..., Awaitable[int]],
    record: Callable[..., Awaitable[None]] | None = None,
) -> Callable[..., asyncio.Task[None]]:
    """``driver`` with ``steps`` for every switch's steps and ``record`` (default:
    none) for its map records; returns what starts a move's switch as a task."""
    monkeypatch.setattr(driver, "_switch_steps", steps)
    monkeypatch.setattr(driver, "_record", record or (lambda *args, **kwargs: asyncio.sleep(0)))

    def switch(pair: tuple[int, int], *, record_frozen: bool = False) -> asyncio.Task[None]:
        progress = migration_driver._Progress()
        return asyncio.create_task(
            driver._switch(EPOCH, pair, progress, record_frozen=record_frozen)
        )

    return switch


async def test_switches_take_turns(groups: Groups, monkeypatch: pytest.MonkeyPatch) -> None:
    driver, _, _ = driven(groups)
    inside = most = 0
    entered, gate = asyncio.Event(), asyncio.Event()

    async def steps(epoch: int, pair: tuple[int, int], progress: object, **_: object) -> int:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        entered.set()
        try:
            await gate.wait()
        finally:
            inside -= 1
        return 0

    switch = stub_switches(monkeypatch, driver, steps)
    first, second = switch((1, 5)), switch((2, 5))
    try:
        await asyncio.wait_for(entered.wait(), 5)
        for _ in range(20):  # every chance for the second to enter too
            await asyncio.sleep(0)
        assert most == 1 and not second.done()
        assert not driver._no_switch.is_set(), "the bulk work waits while a switch runs"
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert most == 1
        assert driver._no_switch.is_set()
    finally:
        await cancelled([first, second])


async def test_the_moves_waiting_for_a_turn_switch_side_by_side_in_the_next_one(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two moves whose copies end while a third switches share the next turn; one of
    them failing (here a call cancelled inside it) fails only its own switch, and
    the bulk work waits for the other's."""
    driver, _, _ = driven(groups)
    inside: set[tuple[int, int]] = set()
    together: list[set[tuple[int, int]]] = []
    gates = {pair: asyncio.Event() for pair in ((1, 5), (2, 5), (3, 5))}

    async def steps(epoch: int, pair: tuple[int, int], progress: object, **_: object) -> int:
        inside.add(pair)
        together.append(set(inside))
        try:
            await gates[pair].wait()
        finally:
            inside.discard(pair)
        if pair == (3, 5):
            raise asyncio.CancelledError("a gRPC call inside the switch was cancelled")
        return pair[0]

    recorded: list[tuple[tuple[int, int], object]] = []

    async def record(pair: tuple[int, int], **fields: object) -> None:
        recorded.append((pair, fields.get("frozen_ms")))

    switch = stub_switches(monkeypatch, driver, steps, record)

    first = switch((1, 5))
    tasks = [first]
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert inside == {(1, 5)}
        tasks += [switch((2, 5)), switch((3, 5))]
        for _ in range(20):  # both wait for the turn that runs
            await asyncio.sleep(0)
        assert inside == {(1, 5)}, "a move whose copy ended during a turn waits for the next"
        gates[1, 5].set()
        await asyncio.wait_for(first, 5)
        for _ in range(20):
            await asyncio.sleep(0)
        assert inside == {(2, 5), (3, 5)}, "the two waiting moves share the next turn"
        assert not driver._no_switch.is_set(), "the bulk work waits while the turn runs"
        gates[3, 5].set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert inside == {(2, 5)}
        assert not driver._no_switch.is_set(), "the turn ends with its last switch"
        gates[2, 5].set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks[1:], return_exceptions=True), 5)
        assert outcomes[0] is None
        assert isinstance(outcomes[1], StepFailed), outcomes
        assert "a step was cancelled" in str(outcomes[1]), "its own failure, not the turn's"
        assert driver._no_switch.is_set()
        assert recorded == [((1, 5), 1), ((2, 5), 2)], "only the switched moves are active"
        assert {frozenset(seen) for seen in together} == {
            frozenset({(1, 5)}),
            frozenset({(2, 5)}),
            frozenset({(2, 5), (3, 5)}),
        }
    finally:
        await cancelled(tasks)


async def test_a_turn_waits_once_for_quiet_and_skips_a_move_cancelled_while_waiting(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver, _, _ = driven(groups)
    quiet_waits = 0
    switched: list[tuple[int, int]] = []
    gate = asyncio.Event()

    async def quiet() -> None:
        nonlocal quiet_waits
        quiet_waits += 1

    async def steps(epoch: int, pair: tuple[int, int], progress: object, **_: object) -> int:
        switched.append(pair)
        if pair == (1, 5):
            await gate.wait()
        return 0

    monkeypatch.setattr(driver, "_quiet", quiet)
    start = stub_switches(monkeypatch, driver, steps)

    def switch(pair: tuple[int, int]) -> asyncio.Task[None]:
        return start(pair, record_frozen=True)

    tasks = [switch((1, 5))]
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert switched == [(1, 5)] and quiet_waits == 1
        tasks += [switch(pair) for pair in ((2, 5), (3, 5), (4, 5))]
        for _ in range(20):
            await asyncio.sleep(0)
        tasks[2].cancel()  # (3, 5): its task ends while it waits for the turn
        gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert isinstance(outcomes[2], asyncio.CancelledError)
        assert [outcome for at, outcome in enumerate(outcomes) if at != 2] == [None] * 3
        assert switched == [(1, 5), (2, 5), (4, 5)], "no switch for a move nobody waits for"
        assert quiet_waits == 2, "one wait for quiet per turn, not per move"
        assert not driver._switch_waiting
    finally:
        await cancelled(tasks)


async def test_a_move_cancelled_cancels_its_own_switch_and_the_turn_ends_with_its_last(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A switch's steps are its move's: cancelled with its task (a new term cancels
    every task of the driver), and not with another move's, which a turn taking
    them along does not make their owner."""
    driver, _, _ = driven(groups)
    started: list[tuple[int, int]] = []
    ended: list[tuple[int, int]] = []

    async def steps(epoch: int, pair: tuple[int, int], progress: object, **_: object) -> int:
        started.append(pair)
        try:
            await asyncio.Event().wait()  # never ends
        finally:
            ended.append(pair)
        return 0

    async def settled() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    switch = stub_switches(monkeypatch, driver, steps)
    holder = switch((1, 5))
    await settled()
    waiting = [switch(pair) for pair in ((2, 5), (3, 5))]
    await settled()
    assert started == [(1, 5)]
    holder.cancel()  # its steps end, so its turn does; the next takes both waiting
    await settled()
    assert ended == [(1, 5)]
    assert started == [(1, 5), (2, 5), (3, 5)]
    waiting[0].cancel()
    await settled()
    assert ended == [(1, 5), (2, 5)], "the move that started the turn cancels its own only"
    assert not driver._no_switch.is_set(), "the turn goes on with the other"
    waiting[1].cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(holder, *waiting, return_exceptions=True), 5)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert ended == [(1, 5), (2, 5), (3, 5)]
    await settled()
    assert driver._no_switch.is_set()
    assert not driver._switch_waiting
    assert driver._turn is not None and driver._turn.done()


async def test_a_move_cancelled_before_its_steps_began_ends_its_turn(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new term cancels every task at once: a move's steps may be cancelled
    before they ran a line. Its turn still ends, and the next one goes."""
    driver, _, _ = driven(groups)
    started: list[tuple[int, int]] = []

    async def steps(epoch: int, pair: tuple[int, int], progress: object, **_: object) -> int:
        started.append(pair)
        return 0

    switch = stub_switches(monkeypatch, driver, steps)
    taken = migration_driver._Switch(EPOCH, (1, 5), migration_driver._Progress(), False)
    driver._switch_waiting[1, 5] = taken
    driver._start_turn()
    assert taken.steps is not None and driver._turn is not None
    taken.steps.cancel()  # before it ran: as its move's task does, cancelled at once
    await asyncio.wait_for(driver._turn, 5)
    assert started == [], "its steps never began"
    assert driver._no_switch.is_set()
    with pytest.raises(StepFailed, match="cancelled"):
        await taken.outcome
    await asyncio.wait_for(switch((2, 5)), 5)
    assert started == [(2, 5)]


async def test_a_switch_waiting_for_a_lock_leaves_its_turn_and_the_others_go_on(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seal held in its turn could wait for ever: the lock's transaction may have
    its primary key in another move of the same turn, and the resolvers find its
    record at that move's target once the map says the move is active. So each
    move records its activation when its own switch ends, and past
    ``_SEAL_IN_TURN`` a switch waits for its seal alone, why in the map."""
    source = groups.source
    seed(groups)
    driver, agent, _ = driven(groups)
    monkeypatch.setattr(migration_driver, "_SEAL_IN_TURN", 0.3)
    assert await advance(driver, agent) == cluster_pb2.MOVE_COPYING
    assert groups.apply(source, prepare(7, 1, then=[put(MOVING[3], b"txn")])).txn.succeeded
    # Found frozen (no copy first: a copy waits while a turn runs, as here).
    groups.copy(ALL)
    groups.applies(source, step(freeze=True))
    agent.map.migration.moves[0].phase = cluster_pb2.MOVE_FROZEN
    gate = asyncio.Event()
    real_steps, real_record = driver._switch_steps, driver._record

    async def steps(
        epoch: int, pair: tuple[int, int], progress: migration_driver._Progress, **kwargs: object
    ) -> int:
        if pair == (SOURCE, TARGET):
            return await real_steps(epoch, pair, progress, **kwargs)  # type: ignore[arg-type]
        if pair == (3, 5):
            await gate.wait()  # holds the first turn, so the next takes the two others
        return pair[0]

    recorded: list[tuple[tuple[int, int], dict[str, object], bool]] = []

    async def record(pair: tuple[int, int], **fields: object) -> None:
        recorded.append((pair, fields, driver._no_switch.is_set()))
        await real_record(pair, **fields)

    switch = stub_switches(monkeypatch, driver, steps, record)
    holder = switch((3, 5))
    for _ in range(20):
        await asyncio.sleep(0)
    tasks = [holder, switch((2, 5)), asyncio.create_task(advance(driver, agent))]
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert set(driver._switch_waiting) == {(SOURCE, TARGET), (2, 5)}
        gate.set()
        await asyncio.wait_for(tasks[1], 5)
        other = [(fields, quiet) for pair, fields, quiet in recorded if pair == (2, 5)]
        assert other == [({"phase": cluster_pb2.MOVE_ACTIVE, "frozen_ms": 2}, False)], (
            "recorded active while the turn still runs"
        )
        for _ in range(500):
            if driver._no_switch.is_set():
                break
            await asyncio.sleep(0.01)
        assert driver._no_switch.is_set(), "the turn ended without the seal"
        assert not tasks[2].done()
        assert arcs(source) == ({TARGET: FROZEN}, {})
        move = agent.map.migration.moves[0]
        assert "waiting for 1 locked moving keys" in move.stuck, move
        seals = _migrate_steps(groups, SOURCE).count("seal")
        await asyncio.sleep(0.3)
        assert _migrate_steps(groups, SOURCE).count("seal") - seals <= 3, "polled less often"
        groups.apply(source, decide(7, 1, MOVING[3]))
        assert await asyncio.wait_for(tasks[2], 5) == cluster_pb2.MOVE_ACTIVE
        assert agent.map.migration.moves[0].stuck == ""
        assert value_of(groups.target, MOVING[3]) == b"txn"
    finally:
        await cancelled(tasks)


async def test_the_driver_counts_its_copies_and_collects_for_quiet_and_not_the_switch_copies(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(groups)
    driver, agent, calls = driven(groups)
    propose = calls.propose
    seen: list[tuple[str, int]] = []

    async def recording(group_id: int, made: kv_pb2.Command) -> kv_pb2.CommandResult:
        migrate = made.migrate
        if migrate.HasField("copy") and (migrate.copy.keys or migrate.copy.deleted):
            kind = "copy" if driver._no_switch.is_set() else "switch-copy"
            seen.append((kind, len(driver._bulk)))
        if migrate.HasField("collect") and migrate.collect.keys:
            seen.append(("collect", len(driver._bulk)))
        return await propose(group_id, made)

    monkeypatch.setattr(calls, "propose", recording)
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_COPYING
    # Changed after the move began: a catch-up copies it again.
    groups.write(groups.source, put(MOVING[1], b"changed"))
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_ACTIVE
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_DONE
    assert {"copy", "collect"} <= {kind for kind, _ in seen}, seen
    assert all(bulk >= 1 for kind, bulk in seen if kind != "switch-copy"), seen
    assert all(bulk == 0 for kind, bulk in seen if kind == "switch-copy"), seen
    copies = [made.migrate.copy for _, made in groups.log if made.migrate.copy.keys]
    assert copies[0].bulk_pass, "the copy of everything is a bulk pass"
    assert any(MOVING[1] in copy.keys for copy in copies[1:]), "a catch-up copied the change"
    assert not any(copy.bulk_pass for copy in copies[1:]), "catch-ups are no bulk pass"


# -- the operator's limit (Migration.max_keys_per_second) -----------------------------


class _FakeTime:
    """A clock that moves only when the pace sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_a_pace_lets_the_first_step_go_and_holds_each_for_its_keys() -> None:
    time, rate = _FakeTime(), [100]
    pace = migration_driver._Pace(lambda: rate[0], time.clock, time.sleep)
    await pace.take(50)
    assert time.now == 0.0, "the first step goes at once"
    await pace.take(200)
    assert time.now == pytest.approx(0.5), "50 keys at 100 keys/s hold the schedule 0.5 s"
    # No limit: no wait, and nothing held for the step after a new limit.
    rate[0] = 0
    await pace.take(1_000_000)
    assert time.now == pytest.approx(0.5)
    rate[0] = 1
    await pace.take(5)
    assert time.now == pytest.approx(0.5)
    # 5 keys at 1 key/s: 5 s, looked at again every _PACE_RECHECK at least.
    await pace.take(1)
    assert time.now == pytest.approx(5.5)
    assert max(time.slept) <= migration_driver._PACE_RECHECK


async def test_a_pace_applies_a_changed_limit_to_the_step_waiting() -> None:
    time, rate = _FakeTime(), [10]

    async def sleep(seconds: float) -> None:
        await time.sleep(seconds)
        if time.now >= 1.0:
            rate[0] = 1000  # raised: 100 keys now hold the schedule 0.1 s, over already

    pace = migration_driver._Pace(lambda: rate[0], time.clock, sleep)
    await pace.take(100)  # holds the schedule 10 s at 10 keys/s
    await pace.take(1)
    assert time.now == pytest.approx(1.0), "the raised limit let the waiting step go"


async def test_steps_waiting_together_go_one_at_a_time() -> None:
    """On the loop's own clock and sleep: four steps wait at once, and each goes only
    once its predecessor's keys kept to the rate (50 keys at 1,000 keys/s: 50 ms)."""
    loop = asyncio.get_running_loop()
    pace = migration_driver._Pace(lambda: 1000, loop.time)
    went: list[float] = []

    async def step() -> None:
        await pace.take(50)
        went.append(loop.time())

    started = loop.time()
    await asyncio.wait_for(asyncio.gather(*(step() for _ in range(4))), 5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(went)]
    assert went[0] - started < 0.04, "the first goes at once"
    assert all(gap >= 0.045 for gap in gaps), gaps  # (the loop's timers may fire ~1 ms early)


def recording_paces(
    driver: MigrationDriver, source: KeyValueStateMachine, time: _FakeTime
) -> list[tuple[str, int, int, bool]]:
    """Give ``driver`` paces on ``time``'s clock that note each step they take: its kind,
    keys, the source's arc then, and whether a switch was under way."""
    paced: list[tuple[str, int, int, bool]] = []

    def recorded(kind: str, pace: migration_driver._Pace) -> migration_driver._Pace:
        pace._clock, pace._sleep = time.clock, time.sleep
        take = pace.take

        async def taking(keys: int) -> None:
            paced.append((kind, keys, arcs(source)[0][TARGET], not driver._no_switch.is_set()))
            await take(keys)

        pace.take = taking  # type: ignore[method-assign]
        return pace

    recorded("copy", driver._copy_pace)
    recorded("collect", driver._collect_pace)
    return paced


async def test_a_limit_paces_the_bulk_copies_and_collects_but_never_a_switch(
    groups: Groups, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = groups.source
    seed(groups)
    # A session: the switch's last copy carries it, so it is a step too.
    groups.write(source, put(STAYING[0], b"w"), client_id=3, seq=1)
    monkeypatch.setattr(migration_driver, "_BULK_CHUNK_KEYS", 2)
    monkeypatch.setattr(migration_driver, "_COLLECT_CHUNK_KEYS", 4)
    driver, agent, _ = driven(groups)
    agent.map.migration.max_keys_per_second = 2
    time = _FakeTime()
    paced = recording_paces(driver, source, time)
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_COPYING
    groups.write(source, put(MOVING[1], b"changed"))  # a catch-up copies it
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_ACTIVE
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_DONE
    assert not any(switching for *_, switching in paced), "a switch's step was paced"
    copies = [(keys, arc) for kind, keys, arc, _ in paced if kind == "copy"]
    collects = [(keys, arc) for kind, keys, arc, _ in paced if kind == "collect"]
    # The bulk pass in chunks of 2, then the catch-up of the changed key;
    # every one while the source still served the keys.
    assert [keys for keys, _ in copies[:3]] == [2, 2, 2]
    assert sum(keys for keys, _ in copies[3:]) == 1
    assert {arc for _, arc in copies} == {COPYING}
    assert [keys for keys, _ in collects] == [4, 2]
    assert {arc for _, arc in collects} == {cluster_pb2.ARC_OUT_RELEASED}
    # Each step held the schedule for its keys at 2 keys/s: 2+2+2 copied keys
    # before the catch-up, 4 collected keys before the last collect.
    assert sum(time.slept) == pytest.approx(3.0 + 2.0)
    assert value_of(groups.target, MOVING[1]) == b"changed"
    assert all(source.get(key) is None for key in MOVING)


async def test_a_copy_of_a_source_found_frozen_is_not_held_back(groups: Groups) -> None:
    """A crash after the freeze, before its record: the move resumes in MOVE_COPYING
    with its keys unwritable, so its copies run at full speed whatever the limit."""
    source = groups.source
    seed(groups)
    driver, agent, _ = driven(groups)
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_COPYING
    assert groups.migrate(source, step(freeze=True)).applied
    assert source.migration.frozen(TARGET)
    agent.map.migration.max_keys_per_second = 1
    time = _FakeTime()
    paced = recording_paces(driver, source, time)
    assert await asyncio.wait_for(advance(driver, agent), 5) == cluster_pb2.MOVE_ACTIVE
    assert paced == [], "a copy of a frozen source was paced"
    assert time.slept == []
    assert value_of(groups.target, MOVING[1]) == b"v1-" + MOVING[1]
