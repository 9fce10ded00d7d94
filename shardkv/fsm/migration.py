"""One group's part in a ring change: who serves a moving key, and what the copy needs.

A ring change (``ClusterMap.migration``) moves, for every pair of groups
(source, target), the keys the current ring gives the source and the target
ring gives the target. The meta group's leader drives each move
(``shardkv.node.migration``) through ``MigrateStep`` commands in both groups'
logs, so every replica of a group agrees on the state of every move at every
index. The group keeps that state (``GroupMigration``) in its meta, and:

- **Source** (``outgoing[target]``):
  ``ARC_OUT_COPYING`` serves the moving keys and *marks* every change of one
  (write or delete: meta ``mark_key(group, target, key)`` holding the
  revision), so the copy can catch up with what changed after it read;
  ``ARC_OUT_FROZEN`` refuses writes and new transaction prepares on them
  (WRONG_GROUP), while reads and the decisions and finishes of transactions
  already prepared still go on (finishing one marks its writes);
  ``ARC_OUT_SEALED`` is taken only once no lock is left on a moving key (by
  the freeze itself when it may, ``seal_when_free``, and none is held), and
  refuses everything on them: the source's copy is final, and the last copy
  reads it; ``ARC_OUT_RELEASED`` says the target serves them, so scans leave
  them out instead of asking the router to wait. ``collect`` then drops the
  moved keys, and the last collect the marks and the moved transaction records.
- **Target** (``incoming[source]``): ``ARC_IN_IMPORTING`` takes copies
  (``copy``: stored records as they are, deletions, client sessions,
  transaction records whose primary key moves) and does not serve them;
  ``ARC_IN_ACTIVE`` serves them (``activate``, or the last copy's
  ``activate`` flag, in the same entry).

A moving key is refused with WRONG_GROUP naming the migration's epoch, so a
router learns there is a newer map; from the seal on, the refusal also names
the target (``moved_to``), so a router can try it there at once instead of
waiting for the map to say the move is active. Between a seal and the activation, no
group serves a moving key; that window is what the driver keeps short (the
copy before the freeze does the bulk, the one after only the last changes).

Decisions:

- **Revisions.** An import raises the target's revision to at least every
  imported record's revisions, so a key's ``mod_revision`` keeps rising
  across the move.
- **Sessions** move whole (every client's floor and kept results), merged at
  the target: the higher floor, and results the target does not have. A
  retry of a write that applied at the source is then answered from the
  result at the target.
- **Transactions.** Locks do not move: the freeze lets the ones on moving
  keys drain (their transactions finish at the source; the resolver ends
  abandoned ones after their deadline), and the seal waits for that. Records
  move with their primary key, in the copy after the seal, which is why the
  seal also refuses decisions whose primary key moves: no record for a
  moving primary can appear at the source after it was copied.
- **Fencing.** Every step carries the driver's token (the meta group's term
  when it began). A group refuses a step with a lower token than it has seen:
  a deposed driver cannot import an old copy over what its successor copied.
- **Steps are idempotent** and say when they did not apply (``MigrateResult``:
  another epoch, not yet, or not in this state), so the driver may repeat any
  step after a crash.
- **Bulk chunks go through the round's batch.** A copy's records and
  deletions, and a collect's keys, are written through
  ``import_records``/``drop_keys``, with the keys to count read in one call.
  Not as ingested tables: each ingest flushed the memtable, and the
  compactions that followed rewrote the node's data over and over.
- **Counting copied keys in.** The chunks of the driver's bulk copy
  (``bulk_pass``) are new at the target while nothing else with keys came
  from the source and each lies above what the pass brought (``_all_new``,
  ``GroupMigration.bulk_imports``): they are counted without reading each
  one, which was most of a chunk's cost. Any other copy with keys or
  deletions makes the later ones read their keys, as before; so does a
  replica that counted its keys at its start (``KeyValueStateMachine``), and
  a chunk with a key written earlier in the same round.
- **Counting moved keys out.** A release that carries ``released_keys`` (the
  driver's count of the moving keys the source holds, each checked against
  both rings there) takes them off the key count once, and the arc's
  collects then drop the keys they are given without reading or checking
  each. Without it, a collect keeps only keys this group finds moving and
  counts those it holds.
- The group's applied ring reaching the migration's epoch ends its part:
  the state is dropped (every move is done by then).
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from shardkv.ring import KeyRing, build_ring, moving_keys, ring_position
from shardkv.storage import keys
from shardkv.storage.engine import Batch, ColumnFamily
from shardkv.v1 import cluster_pb2, kv_pb2

if TYPE_CHECKING:
    from shardkv.fsm.kv import KeyValueStateMachine

__all__ = ["Access", "Migration"]

_log = logging.getLogger(__name__)


class _Wait(str):
    """A refusal that says: repeat the step shortly (``MigrateResult.wait``)."""


class _TargetActive(str):
    """A copy refused by a target serving the keys already (``MigrateResult.target_active``)."""


_COUNTER = struct.Struct(">Q")
# Keys per list of a scan of the group's keys.
_SCAN_BATCH = 4096

_OUT_COPYING = cluster_pb2.ARC_OUT_COPYING
_OUT_FROZEN = cluster_pb2.ARC_OUT_FROZEN
_OUT_SEALED = cluster_pb2.ARC_OUT_SEALED
_OUT_RELEASED = cluster_pb2.ARC_OUT_RELEASED
_IN_IMPORTING = cluster_pb2.ARC_IN_IMPORTING
_IN_ACTIVE = cluster_pb2.ARC_IN_ACTIVE


class Access(enum.Enum):
    """What a command does with a key, for who may serve it during a move."""

    WRITE = "write"  # plain writes and transaction prepares
    DECIDE = "decide"  # a transaction's record, by its primary key
    READ = "read"


class Migration:
    """The group's ``GroupMigration``, applied through its log; see the module docstring."""

    def __init__(self, machine: KeyValueStateMachine) -> None:
        self.machine = machine
        self.group_id = machine.group_id
        stored = machine.engine.get(ColumnFamily.META, keys.migration_key(self.group_id))
        self.state: cluster_pb2.GroupMigration | None = None
        self.target_ring: KeyRing | None = None
        if stored is not None:
            self._set(cluster_pb2.GroupMigration.FromString(stored))

    def _set(self, state: cluster_pb2.GroupMigration | None) -> None:
        self.state = state
        self.target_ring = build_ring(state.target) if state is not None else None

    @property
    def active(self) -> bool:
        return self.state is not None

    # -- ownership ----------------------------------------------------------------------

    def refusal(self, key: bytes, access: Access) -> kv_pb2.WrongGroup | None:
        """Why this group does not serve ``key`` for ``access`` now, or None if it does."""
        state, target_ring, ring = self.state, self.target_ring, self.machine.ring
        assert state is not None and target_ring is not None
        position = ring_position(key)
        owner = ring.owner_at(position) if ring is not None and ring.weights else None
        moved_to = target_ring.owner_at(position) if target_ring.weights else None
        group = self.group_id
        if owner == group:
            if moved_to == group or moved_to is None:
                return None
            arc = state.outgoing.get(moved_to, cluster_pb2.ARC_NONE)
            if arc in (cluster_pb2.ARC_NONE, _OUT_COPYING):
                return None
            if arc == _OUT_FROZEN and access is not Access.WRITE:
                return None
            if arc in (_OUT_SEALED, _OUT_RELEASED):
                return kv_pb2.WrongGroup(
                    group_id=group, epoch=state.epoch, key=key, moved_to=moved_to
                )
        elif moved_to == group and owner is not None:
            if state.incoming.get(owner) == _IN_ACTIVE:
                return None
        else:
            epoch = self.machine.epoch
            return kv_pb2.WrongGroup(group_id=group, epoch=epoch, key=key)
        return kv_pb2.WrongGroup(group_id=group, epoch=state.epoch, key=key)

    def importing(self, keys: Iterable[bytes], *, every: bool = True) -> bool:
        """Whether every one of ``keys`` (with ``every=False``: any) comes to this group
        in a move it takes copies of but does not serve yet (``ARC_IN_IMPORTING``):
        refused now, served once the move is active. A leader holds a request of
        such keys for a moment (``shardkv.node.service``). No keys: False."""
        state, target_ring, ring = self.state, self.target_ring, self.machine.ring
        if state is None or target_ring is None or ring is None or not ring.weights:
            return False
        incoming = state.incoming
        if _IN_IMPORTING not in incoming.values():
            return False  # a source, or every move here active: no hash per key
        owner_at, target_at, group = ring.owner_at, target_ring.owner_at, self.group_id
        found = False
        for key in keys:
            position = ring_position(key)
            owner = owner_at(position)
            found = (
                owner != group
                and target_at(position) == group
                and incoming.get(owner) == _IN_IMPORTING
            )
            if found != every:
                return found  # every: one served (or never ours) decides; any: one waiting
        return found

    def scan_refusal(self, groups: Sequence[int] = ()) -> kv_pb2.WrongGroup | None:
        """Why a scan over ``groups`` must not be answered here now, or None: keys of this
        group's range are in transit (sealed, not yet served by the target), or served
        by a target the scan does not ask (a router whose map predates the move)."""
        state = self.state
        if state is None:
            return None
        for target, arc in sorted(state.outgoing.items()):
            if arc == _OUT_SEALED:
                return kv_pb2.WrongGroup(group_id=self.group_id, epoch=state.epoch)
            if arc == _OUT_RELEASED and groups and target not in groups:
                return kv_pb2.WrongGroup(group_id=self.group_id, epoch=state.epoch, moved_to=target)
        return None

    def moving_keys(
        self, target: int, *, skip: int = 0
    ) -> Callable[[Iterable[bytes]], list[bytes]]:
        """The ones of many keys of this group that move to ``target`` (``moving_to(key)
        == target`` for each), in one call: for an export, a collect. With ``skip``,
        of keys that many bytes longer (engine keys)."""
        ring, target_ring = self.machine.ring, self.target_ring
        if ring is None or target_ring is None or not ring.weights or not target_ring.weights:
            return lambda keys: []
        return moving_keys(ring, target_ring, self.group_id, target, skip=skip)

    def counted_out_held(self) -> int:
        """Moved keys still stored here that a release counted out already (for a
        count of the group's keys from its stored ones)."""
        if self.state is None or not self.state.counted_out:
            return 0
        skip = keys.GROUP_KEY_SIZE
        selects = [self.moving_keys(target, skip=skip) for target in set(self.state.counted_out)]
        low, high = keys.data_range(self.group_id)

        def held(listed: list[bytes]) -> list[bytes]:
            moving = {key for select in selects for key in select(listed)}
            return [key for key in listed if key in moving]

        scan = self.machine.engine.scan_picked(
            ColumnFamily.DATA, low, high, pick=held, batch=_SCAN_BATCH, values=False
        )
        return sum(len(picked) for picked in scan)

    def moving_to(self, key: bytes) -> int | None:
        """The group ``key`` moves to from this one in the migration, if it moves."""
        ring, target_ring = self.machine.ring, self.target_ring
        if ring is None or target_ring is None or not ring.weights or not target_ring.weights:
            return None
        position = ring_position(key)
        if ring.owner_at(position) != self.group_id:
            return None
        moved_to = target_ring.owner_at(position)
        return moved_to if moved_to != self.group_id else None

    # -- marks --------------------------------------------------------------------------

    def mark(self, batch: Batch, key: bytes, revision: int) -> None:
        """Remember that ``key`` changed at ``revision`` if it is moving out and being copied."""
        state = self.state
        if state is None or not state.outgoing:
            return
        moved_to = self.moving_to(key)
        if moved_to is None or state.outgoing.get(moved_to) not in (_OUT_COPYING, _OUT_FROZEN):
            return
        self.machine.write_meta(
            batch, keys.mark_key(self.group_id, moved_to, key), _COUNTER.pack(revision)
        )

    # -- applying a step ----------------------------------------------------------------

    def apply(self, batch: Batch, step: kv_pb2.MigrateStep) -> kv_pb2.CommandResult:
        kind = step.WhichOneof("kind")
        if kind == "begin":
            refused = self._begin(batch, step)
        else:
            refused = self._check(step)
            if refused is None:
                refused = getattr(self, f"_{kind}")(batch, step)
        if refused is None and self.state is not None and step.driver > self.state.driver:
            self.state.driver = step.driver
            self._store(batch)
        return kv_pb2.CommandResult(
            migrate=kv_pb2.MigrateResult(
                applied=refused is None,
                reason=refused or "",
                wait=isinstance(refused, _Wait),
                target_active=isinstance(refused, _TargetActive),
                sealed=kind == "freeze" and refused is None and self._sealed(step.target),
            ),
            revision=self.machine.revision,
        )

    def end(self, batch: Batch, epoch: int) -> None:
        """The group applied the ring of ``epoch``: a migration up to it is over."""
        if self.state is not None and self.state.epoch <= epoch:
            self._set(None)
            self.machine.write_meta(batch, keys.migration_key(self.group_id), None)

    def _store(self, batch: Batch) -> None:
        assert self.state is not None
        self.machine.write_meta(
            batch, keys.migration_key(self.group_id), self.state.SerializeToString()
        )

    def _check(self, step: kv_pb2.MigrateStep) -> str | None:
        state = self.state
        if state is None or state.epoch != step.epoch:
            return f"group {self.group_id} takes no part in the migration to epoch {step.epoch}"
        if step.driver < state.driver:
            return f"superseded driver {step.driver} (seen {state.driver})"
        return None

    def _begin(self, batch: Batch, step: kv_pb2.MigrateStep) -> str | None:
        machine = self.machine
        if step.HasField("base") and machine.epoch < step.base.epoch == step.epoch - 1:
            machine.apply_ring(batch, step.base)  # a new group: its first ring
        if machine.epoch >= step.epoch:
            return f"group {self.group_id} applied epoch {machine.epoch} already"
        if machine.epoch != step.epoch - 1:
            return f"group {self.group_id} applies epoch {machine.epoch}, not {step.epoch - 1} yet"
        if step.source != self.group_id and step.target != self.group_id:
            return f"group {self.group_id} is neither source nor target"
        state = self.state
        if state is None or state.epoch != step.epoch:
            state = cluster_pb2.GroupMigration(epoch=step.epoch)
            state.target.CopyFrom(step.begin)
        elif step.driver < state.driver:
            return f"superseded driver {step.driver} (seen {state.driver})"
        if step.source == self.group_id:
            state.outgoing[step.target] = state.outgoing.get(step.target) or _OUT_COPYING
        else:
            state.incoming[step.source] = state.incoming.get(step.source) or _IN_IMPORTING
        self._set(state)
        self._store(batch)
        return None

    def _advance(
        self, batch: Batch, arcs: dict[int, int], peer: int, before: int, after: int
    ) -> str | None:
        arc = arcs.get(peer, cluster_pb2.ARC_NONE)
        if arc == before:
            arcs[peer] = after
            self._store(batch)
            return None
        if arc >= after:
            return None  # done already: a repeated step
        name = cluster_pb2.ArcState.Name
        return f"move {peer} is {name(arc)}, not {name(before)}"

    def _freeze(self, batch: Batch, step: kv_pb2.MigrateStep) -> str | None:
        assert self.state is not None
        refused = self._advance(batch, self.state.outgoing, step.target, _OUT_COPYING, _OUT_FROZEN)  # type: ignore[arg-type]
        if refused is None and step.seal_when_free:
            self._seal(batch, step)  # sealed at once unless a lock is held (then: frozen)
        return refused

    def _seal(self, batch: Batch, step: kv_pb2.MigrateStep) -> str | None:
        assert self.state is not None
        if self.state.outgoing.get(step.target) == _OUT_FROZEN:
            held = sum(1 for key in self.machine.txns.locks if self.moving_to(key) == step.target)
            if held:
                return _Wait(f"waiting for {held} locked moving keys to be released")
        return self._advance(batch, self.state.outgoing, step.target, _OUT_FROZEN, _OUT_SEALED)  # type: ignore[arg-type]

    def frozen(self, target: int) -> bool:
        """Whether writes of the keys moving to ``target`` are refused here already
        (frozen or sealed: its move is in its switch)."""
        state = self.state
        return state is not None and state.outgoing.get(target) in (_OUT_FROZEN, _OUT_SEALED)

    def _sealed(self, target: int) -> bool:
        state = self.state
        return state is not None and state.outgoing.get(target) in (_OUT_SEALED, _OUT_RELEASED)

    def _release(self, batch: Batch, step: kv_pb2.MigrateStep) -> str | None:
        assert self.state is not None
        sealed = self.state.outgoing.get(step.target) == _OUT_SEALED
        refused = self._advance(batch, self.state.outgoing, step.target, _OUT_SEALED, _OUT_RELEASED)  # type: ignore[arg-type]
        if refused is None and sealed and step.HasField("released_keys"):
            # Once only (the arc leaves SEALED here): the moved keys are counted out.
            if step.released_keys > self.machine.key_count:
                _log.warning(
                    "group %d: released %d keys but counts %d; the count says 0",
                    self.group_id,
                    step.released_keys,
                    self.machine.key_count,
                )
            self.machine.key_count = max(0, self.machine.key_count - step.released_keys)
            self.state.counted_out.append(step.target)
            self._store(batch)
            self.machine.finish_import(batch)
        return refused

    def _activate(self, batch: Batch, step: kv_pb2.MigrateStep) -> str | None:
        assert self.state is not None
        return self._advance(batch, self.state.incoming, step.source, _IN_IMPORTING, _IN_ACTIVE)  # type: ignore[arg-type]

    def _copy(self, batch: Batch, step: kv_pb2.MigrateStep) -> str | None:
        assert self.state is not None
        arc = self.state.incoming.get(step.source, cluster_pb2.ARC_NONE)
        if arc == _IN_ACTIVE:
            return _TargetActive(f"group {self.group_id} serves the keys of {step.source} already")
        if arc != _IN_IMPORTING:
            return f"move from {step.source} is {cluster_pb2.ArcState.Name(arc)}, not importing"
        data = step.copy
        machine = self.machine
        machine.import_records(batch, data.keys, data.records, new=self._all_new(batch, step))
        machine.drop_keys(batch, data.deleted)
        for session in data.sessions:
            machine.merge_session(batch, session)
        for txn_record in data.txn_records:
            machine.txns.import_record(batch, txn_record)
        machine.finish_import(batch)
        if data.activate:
            self.state.incoming[step.source] = _IN_ACTIVE
            self._store(batch)
        return None

    def _all_new(self, batch: Batch, step: kv_pb2.MigrateStep) -> bool:
        """Whether no key of the copy can be here yet, so none is read to count it.

        At ``begin`` the target holds no key of the arcs it takes: a group holds
        only keys it owns or has not collected yet, and a migration ends only
        once its collects did. A bulk pass's chunks are cut from one iterator,
        in key order, so they cover ranges that do not overlap; while every
        copy with keys from the source so far belonged to one pass, a chunk of
        it wholly above the highest key the pass brought holds new keys. One
        that is not (applied twice, out of order, or sent again by a restarted
        stream) has its keys read. Any other copy with keys or deletions (a
        catch-up, another pass after a driver restart) ends it for the move:
        every later copy's keys are read.
        """
        assert self.state is not None
        data, imports = step.copy, self.state.bulk_imports
        if not data.keys and not data.deleted:
            return False  # sessions and records only: no key here changes
        seen = imports.get(step.source)
        same_pass = bool(data.bulk_pass and data.keys and not data.deleted) and (
            seen is None or seen.bulk_pass == data.bulk_pass
        )
        if not same_pass:
            if seen is None or seen.bulk_pass:
                imports[step.source].CopyFrom(cluster_pb2.BulkImport())  # pass 0: read from now on
                self._store(batch)
            return False
        highest = max(data.keys)
        new = seen is None or min(data.keys) > seen.last_key
        if seen is not None:
            highest = max(highest, seen.last_key)
        imports[step.source].CopyFrom(
            cluster_pb2.BulkImport(bulk_pass=data.bulk_pass, last_key=highest)
        )
        self._store(batch)
        return new

    def _collect(self, batch: Batch, step: kv_pb2.MigrateStep) -> str | None:
        assert self.state is not None
        arc = self.state.outgoing.get(step.target, cluster_pb2.ARC_NONE)
        if arc != _OUT_RELEASED:
            return f"move to {step.target} is {cluster_pb2.ArcState.Name(arc)}, not released"
        machine = self.machine
        moved: Sequence[bytes] = step.collect.keys
        counted = step.target not in self.state.counted_out
        if counted:
            # Keys this group finds moving itself. Counted out, they are the ones
            # the driver copied, checked against both rings there.
            moved = self.moving_keys(step.target)(moved)
        machine.drop_keys(batch, moved, counted=counted)
        machine.finish_import(batch)
        if step.collect.last:
            low, high = keys.mark_range(self.group_id, step.target)
            batch.delete_range(ColumnFamily.META, low, high)
            for record in machine.txns.records():
                if record.primary_key and self.moving_to(record.primary_key) == step.target:
                    machine.txns.drop_record(batch, record.txn)
        return None

    # -- reading what moves (the source's side of Export) -------------------------------

    def changed_since(self, target: int, revision: int) -> Iterator[bytes]:
        """Moving keys to ``target`` marked as changed after ``revision``."""
        low, high = keys.mark_range(self.group_id, target)
        for engine_key, stored in self.machine.engine.scan(ColumnFamily.META, low, high):
            if _COUNTER.unpack(stored)[0] > revision:
                yield engine_key[len(low) :]

    def sessions(self) -> list[kv_pb2.SessionCopy]:
        """Every client session of the group: floors and kept results."""
        engine, group = self.machine.engine, self.group_id
        copies: dict[int, kv_pb2.SessionCopy] = {}
        low, high = keys.session_range(group)
        for engine_key, stored in engine.scan(ColumnFamily.META, low, high):
            client_id = _COUNTER.unpack(engine_key[len(low) :])[0]
            copies[client_id] = kv_pb2.SessionCopy(
                client_id=client_id, floor=_COUNTER.unpack(stored)[0]
            )
        low, high = keys.all_results_range(group)
        for engine_key, stored in engine.scan(ColumnFamily.META, low, high):
            client_id, seq = keys.decode_result_key(engine_key)
            copy = copies.setdefault(client_id, kv_pb2.SessionCopy(client_id=client_id))
            copy.seqs.append(seq)
            copy.results.append(stored)
        return list(copies.values())

    def moving_records(self, target: int) -> list[kv_pb2.TxnRecord]:
        """Transaction records kept here whose primary key moves to ``target``."""
        return [
            record
            for record in self.machine.txns.records()
            if record.primary_key and self.moving_to(record.primary_key) == target
        ]
