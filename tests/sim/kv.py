"""The replicated key-value state machine the simulator runs on top of Raft.

Commands are JSON (simulation only: the real node uses protobuf). Each carries
``(client_id, seq)``; the dedup table applies a command at most once and
answers a retry of the latest one from its cache, so clients can retry through
any node without applying a write twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["STALE", "Command", "KeyValueStore"]

# The answer to a command older than the client's latest applied one: it was
# never applied, and never will be.
STALE = "stale"


@dataclass(frozen=True, slots=True)
class Command:
    client_id: int
    seq: int
    kind: str  # put | get | cas
    key: str
    value: str | None = None
    expected: str | None = None

    def encode(self) -> bytes:
        return json.dumps(
            [self.client_id, self.seq, self.kind, self.key, self.value, self.expected]
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Command:
        client_id, seq, kind, key, value, expected = json.loads(data)
        return cls(client_id, seq, kind, key, value, expected)


class KeyValueStore:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        # client_id -> (latest applied seq, its result)
        self.sessions: dict[int, tuple[int, Any]] = {}

    def apply(self, command: Command) -> Any:
        session = self.sessions.get(command.client_id)
        if session is not None:
            last_seq, result = session
            if command.seq == last_seq:
                return result
            if command.seq < last_seq:
                return STALE
        result = self._execute(command)
        self.sessions[command.client_id] = (command.seq, result)
        return result

    def _execute(self, command: Command) -> Any:
        if command.kind == "put":
            assert command.value is not None
            self.data[command.key] = command.value
            return None
        if command.kind == "get":
            return self.data.get(command.key)
        if command.kind == "cas":
            assert command.value is not None
            if self.data.get(command.key) != command.expected:
                return False
            self.data[command.key] = command.value
            return True
        raise ValueError(f"unknown command kind {command.kind!r}")

    def snapshot(self) -> bytes:
        sessions = {str(client): list(entry) for client, entry in self.sessions.items()}
        return json.dumps([self.data, sessions], sort_keys=True).encode()

    @classmethod
    def restore(cls, data: bytes) -> KeyValueStore:
        store = cls()
        if data:
            values, sessions = json.loads(data)
            store.data = values
            store.sessions = {
                int(client): (seq, result) for client, (seq, result) in sessions.items()
            }
        return store
