"""Test-only network faults at the transport seam: cuts, message loss and delay.

A node started with ``SHARDKV_NET_FAULTS`` naming a file reads the faults it
must inflict on the Raft messages it RECEIVES from that file, and reads it
again whenever it changes (checked at most every ``RELOAD_INTERVAL``). The
nemesis tests (``tests/fault``) write one file per node, so every fault is a
rule at the receiving end::

    {"cut": [2, 3], "loss": 0.1, "delay_ms": [5, 50]}

- ``cut``: node ids whose messages are all dropped. A partition between A
  and B is a cut on both sides; a one-way cut is a cut on one side only; an
  isolated leader is cut off by every other node and cuts every other node.
- ``loss``: the probability that any other message is dropped.
- ``delay_ms``: each message that is not dropped is handed to Raft after a
  delay drawn uniformly from the range (so messages also arrive reordered,
  which Raft must tolerate like any network's reordering).

A missing, empty or unreadable file means no faults. Without the variable
the transport never consults this module. Only Raft traffic between nodes
is affected: client calls, ``Export`` streams of a migration and the
routers' calls go through untouched (the network-namespace test cuts those
too, with real packet filters). Nothing in production sets the variable.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass

__all__ = ["ENV", "NetFaults", "Rules"]

ENV = "SHARDKV_NET_FAULTS"
RELOAD_INTERVAL = 0.05

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rules:
    cut: frozenset[int] = frozenset()
    loss: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def parse(cls, text: str) -> Rules:
        if not text.strip():
            return cls()
        data = json.loads(text)
        low, high = data.get("delay_ms", (0, 0))
        return cls(
            cut=frozenset(int(node) for node in data.get("cut", ())),
            loss=float(data.get("loss", 0.0)),
            delay=(float(low) / 1000, float(high) / 1000),
        )


class NetFaults:
    """The rules of one node, reread from their file when it changes."""

    def __init__(self, path: str, rng: random.Random | None = None) -> None:
        self.path = path
        self.rules = Rules()
        self._rng = rng or random.Random()
        self._checked_at = float("-inf")
        self._stamp: tuple[int, int] | None = None

    @classmethod
    def from_environment(cls) -> NetFaults | None:
        path = os.environ.get(ENV)
        if not path:
            return None
        _log.warning("test-only network faults are read from %s (%s)", path, ENV)
        return cls(path)

    def inbound(self, from_node: int) -> float | None:
        """None: drop this message from ``from_node``; else its delay in seconds."""
        self._reload()
        rules = self.rules
        if from_node in rules.cut or (rules.loss and self._rng.random() < rules.loss):
            return None
        low, high = rules.delay
        return self._rng.uniform(low, high) if high else 0.0

    def _reload(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < RELOAD_INTERVAL:
            return
        self._checked_at = now
        try:
            stat = os.stat(self.path)
        except OSError:
            self._stamp, self.rules = None, Rules()
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, encoding="utf-8") as file:
                rules = Rules.parse(file.read())
        except (OSError, ValueError, TypeError) as exc:
            # Caught mid-write, most likely: keep the old rules, read it next time.
            _log.warning("cannot read the network faults in %s: %s", self.path, exc)
            return
        self._stamp, self.rules = stamp, rules
        _log.info("network faults now: %s", rules)
