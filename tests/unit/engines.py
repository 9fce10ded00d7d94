"""Opening storage engines in tests: the same contract tests run on both kinds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shardkv.storage import Engine, MemoryDisk, MemoryEngine, StorageEngine
from shardkv.v1 import kv_pb2

Opener = Callable[[], StorageEngine]


@contextmanager
def engine_opener(
    kind: str,
    path: Path,
    memory_engine: Callable[[MemoryDisk], StorageEngine] = MemoryEngine,
) -> Iterator[Opener]:
    """An opener of engines over one state ("memory" or "rocksdb" at ``path``).

    Every engine it opened is closed on exit; opening again after a close is
    a restart on the same state.
    """
    opened: list[StorageEngine] = []
    disk = MemoryDisk()

    def open_() -> StorageEngine:
        engine = memory_engine(disk) if kind == "memory" else Engine(path)
        opened.append(engine)
        return engine

    yield open_
    for engine in opened:
        engine.close()


def replayed(result: kv_pb2.CommandResult) -> kv_pb2.CommandResult:
    """``result`` as a retry gets it: answered from the session (``replayed``)."""
    answered = kv_pb2.CommandResult()
    answered.CopyFrom(result)
    answered.replayed = True
    return answered
