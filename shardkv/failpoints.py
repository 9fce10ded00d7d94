"""Named hooks in the code that tests turn into crashes, pauses or errors.

A failpoint is a call, ``failpoint("txn.after_record")``, placed where a
crash would hurt most. It does nothing unless the process was started with
``SHARDKV_FAILPOINTS`` naming it (only tests do)::

    SHARDKV_FAILPOINTS="txn.after_record=exit;txn.resolver=sleep(0.5)"

Actions: ``exit`` (the process kills itself with SIGKILL: a crash at exactly
that point, nothing flushed), ``sleep(S)`` (a pause of S seconds, the event
loop included), ``error`` (raises ``FailpointError``). Without a count the
action fires every time the point is reached; with one, ``name=2*sleep(1)``,
it fires once, on the second time (the first is passed), and never again.

The points, with where they sit:

- Raft, in the node's round: ``raft.before_persist`` (a round's Raft state
  is built, nothing of it written), ``raft.after_persist`` (written and
  fsynced, not yet sent), ``fsm.before_apply`` (committed entries applied
  into the round's batch, not yet written), ``fsm.after_apply`` (written,
  proposers not yet answered).
- Snapshots: ``snapshot.send`` (a chunk about to leave for a follower),
  ``snapshot.install`` (a follower about to stage a received snapshot).
- Migration, in the driver at the meta leader: ``migration.after_begin``,
  ``migration.after_copy`` (the bulk copy, before the catch-up rounds),
  ``migration.after_freeze``, ``migration.after_seal``,
  ``migration.after_activate`` (the target serves, the map not yet told),
  ``migration.before_collect`` (released, nothing dropped yet).
- Transactions: ``txn.after_prepare`` (the coordinator, after the first
  participant prepared and before the others answered), ``txn.after_record``
  (after the primary wrote the record, before any other participant
  finished), ``txn.between_commits`` (after one other participant
  finished), ``txn.resolver`` (a node's resolver, after it settled the
  record at the primary and before it finished its own group).

``POINTS`` lists them all, for tests that draw one at random.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass

__all__ = ["POINTS", "FailpointError", "configure", "failpoint"]

ENV = "SHARDKV_FAILPOINTS"

_log = logging.getLogger(__name__)

# Node-side points first, then the router's (txn.after_* and between_commits).
POINTS = (
    "raft.before_persist",
    "raft.after_persist",
    "fsm.before_apply",
    "fsm.after_apply",
    "snapshot.send",
    "snapshot.install",
    "migration.after_begin",
    "migration.after_copy",
    "migration.after_freeze",
    "migration.after_seal",
    "migration.after_activate",
    "migration.before_collect",
    "txn.resolver",
    "txn.after_prepare",
    "txn.after_record",
    "txn.between_commits",
)

_ACTION = re.compile(r"^(?:(\d+)\*)?(exit|error|sleep\(([0-9.]+)\))$")


class FailpointError(RuntimeError):
    """Raised by a failpoint whose action is ``error``."""


@dataclass(slots=True)
class _Point:
    countdown: int
    action: str
    seconds: float
    # Counted ("N*action"): fires on the N-th hit only.
    once: bool


def _parse(spec: str) -> dict[str, _Point]:
    points: dict[str, _Point] = {}
    for part in filter(None, (item.strip() for item in spec.split(";"))):
        name, _, action = part.partition("=")
        match = _ACTION.match(action.strip())
        if not name or match is None:
            raise ValueError(f"{ENV}: cannot read {part!r} (name=exit|error|sleep(S), N*action)")
        count = int(match.group(1) or 1)
        action = "sleep" if match.group(3) else match.group(2)
        once = match.group(1) is not None
        points[name.strip()] = _Point(count, action, float(match.group(3) or 0), once)
    return points


_points = _parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    """Act as ``SHARDKV_FAILPOINTS`` says for ``name``; nothing when it is not named."""
    if not _points:
        return
    point = _points.get(name)
    if point is None:
        return
    point.countdown -= 1
    if point.countdown > 0:
        return
    if point.once:
        del _points[name]
    # Flushed by the handler before an exit: the log says where the crash was.
    _log.warning("failpoint %s fires: %s", name, point.action)
    if point.action == "exit":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # the signal is on its way
    elif point.action == "error":
        raise FailpointError(f"failpoint {name}")
    else:
        time.sleep(point.seconds)


def configure(spec: str) -> None:
    """Replace the enabled failpoints (in-process tests)."""
    global _points
    _points = _parse(spec)
