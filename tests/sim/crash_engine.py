"""A ``MemoryEngine`` whose disk loses the writes a power loss would lose.

``MemoryDisk`` keeps every written batch, synced or not. ``CrashDisk`` adds
the crash model of RocksDB's write-ahead log: one ordered stream, in which
a synced write makes every earlier write durable, and a power loss keeps a
prefix of what was written since. ``CrashEngine`` is a ``MemoryEngine`` on
such a disk; ``CrashDisk.lose_unsynced(keep)`` is the power loss.

Not modelled: torn or corrupted batches (a batch survives whole or not at
all), failed writes, and a crash that loses a synced write.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardkv.storage import Batch, ColumnFamily, MemoryDisk, MemoryEngine

__all__ = ["CrashDisk", "CrashEngine"]

# Restore ``key`` of a column family to ``value`` (None: absent).
_Undo = tuple[ColumnFamily, bytes, bytes | None]


class CrashDisk:
    """A ``MemoryDisk`` that can lose the writes made since the last synced one.

    RocksDB's write-ahead log is one ordered stream: a synced write makes
    every earlier write durable, and a power loss keeps a prefix of what
    came after. So the disk keeps an undo record per unsynced batch and, on
    ``lose_unsynced(keep)``, rolls back all but the first ``keep`` of them.
    """

    def __init__(self) -> None:
        self.memory = MemoryDisk()
        self._unsynced: list[list[_Undo]] = []

    @property
    def unsynced_batches(self) -> int:
        return len(self._unsynced)

    def record(self, undo: list[_Undo] | None) -> None:
        """One batch was written: ``undo`` reverts it, None means it was synced."""
        if undo is None:
            self._unsynced.clear()
        else:
            self._unsynced.append(undo)

    def lose_unsynced(self, keep: int) -> int:
        """Power loss: keep the first ``keep`` unsynced batches; return how many were lost."""
        lost = self._unsynced[keep:]
        self._unsynced.clear()
        tables = self.memory.tables
        for undo in reversed(lost):
            for cf, key, value in reversed(undo):
                if value is None:
                    tables[cf].delete(key)
                else:
                    tables[cf].put(key, value)
        return len(lost)


@dataclass(frozen=True, slots=True)
class _Write:
    cf: ColumnFamily
    key: bytes
    value: bytes | None = None  # a put's value; None for deletes
    end: bytes | None = None  # set for a range delete of [key, end)


class _CrashBatch(Batch):
    def __init__(self, engine: CrashEngine) -> None:
        super().__init__(engine)
        self.writes: list[_Write] = []

    def _put(self, cf: ColumnFamily, key: bytes, value: bytes) -> None:
        self.writes.append(_Write(cf, key, value))

    def _delete(self, cf: ColumnFamily, key: bytes) -> None:
        self.writes.append(_Write(cf, key))

    def _delete_range(self, cf: ColumnFamily, start: bytes, end: bytes) -> None:
        self.writes.append(_Write(cf, start, end=end))


class CrashEngine(MemoryEngine):
    """A ``MemoryEngine`` on a ``CrashDisk``: unsynced batches can be lost by a crash."""

    def __init__(self, disk: CrashDisk) -> None:
        super().__init__(disk.memory)
        self.crash_disk = disk

    def _new_batch(self) -> Batch:
        return _CrashBatch(self)

    async def _sync(self) -> None:
        self.crash_disk.record(None)  # everything written so far is durable

    def _write(self, batch: Batch, sync: bool) -> None:
        assert isinstance(batch, _CrashBatch)
        tables = self.disk.tables
        undo: list[_Undo] | None = None if sync else []
        for write in batch.writes:
            table = tables[write.cf]
            if write.end is not None:
                if undo is not None:
                    removed = table.items(write.key, write.end)
                    undo.extend((write.cf, key, value) for key, value in removed)
                table.delete_range(write.key, write.end)
                continue
            if undo is not None:
                undo.append((write.cf, write.key, table.values.get(write.key)))
            if write.value is None:
                table.delete(write.key)
            else:
                table.put(write.key, write.value)
        self.crash_disk.record(undo)
