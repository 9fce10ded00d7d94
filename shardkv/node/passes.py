"""The loop every background worker of a node runs: a pass now and then, or when woken.

A ``Passes`` worker calls ``step`` every ``interval`` seconds, and at once when
woken (``wake``), until it is stopping (``halt``); a pass that raises is
logged and the loop goes on (one bad pass must not end the worker). The
cluster agent, the transaction resolver and the meta leader's drivers are
such workers.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging

__all__ = ["Passes"]

_log = logging.getLogger(__name__)


class Passes(abc.ABC):
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wake = asyncio.Event()
        self._stopping = False

    @abc.abstractmethod
    def step(self) -> object:
        """One pass (a coroutine function, or a plain one)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Who runs the passes, for the log: "node 3: cluster agent"."""

    @property
    def stopping(self) -> bool:
        return self._stopping

    def wake(self) -> None:
        self._wake.set()

    def halt(self) -> None:
        """No pass after the one running (the caller then releases what passes use)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                outcome = self.step()
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                _log.exception("%s: a pass failed", self.describe())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
