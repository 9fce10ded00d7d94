"""The loop every background worker of a node runs: a pass now and then, or when woken.

``run_passes`` calls ``step`` every ``interval`` seconds, and at once when
``wake`` is set, until ``stopping()``; a pass that raises is logged and the
loop goes on (one bad pass must not end the worker). The cluster agent, the
transaction resolver and the meta leader's drivers run on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable

__all__ = ["run_passes"]

_log = logging.getLogger(__name__)


async def run_passes(
    step: Callable[[], object],
    *,
    interval: float,
    wake: asyncio.Event,
    stopping: Callable[[], bool],
    what: str,
) -> None:
    while not stopping():
        try:
            outcome = step()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            _log.exception("%s: a pass failed", what)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await wake.wait()
        wake.clear()
