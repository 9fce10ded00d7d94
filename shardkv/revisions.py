"""Revisions: one order for every write of every group, on the leaders' clocks.

A key's ``create_revision`` and ``mod_revision``, and the revision a write
answers, come from its group. With one counter per group (1, 2, 3, ...) the
revisions of two groups could not be compared: etcd's lock and election
recipes (``Txn(If CreateRevision(k) == 0)``, then "the key of the lowest
create revision under the prefix owns the lock") need a revision order
across every key of the store, and so does a watch that starts at a
revision. So revisions are hybrid-logical timestamps, made unique by the
group that assigns them:

    revision = time << GROUP_BITS | (group_id mod 2**GROUP_BITS)

- **time** is microseconds since 2020-01-01 UTC: at least the proposing
  leader's wall clock when it proposed the command (``Command.stamp``, set by
  the node on every command it proposes), and at least one more than the
  time of the group's last revision. A group that writes faster than one
  command a microsecond, or whose new leader's clock is behind, runs its time
  ahead of the clock; it never goes back.
- **the low bits** are the group's, so two groups never assign the same
  revision: group ids are at most MAX_GROUP_ID (2047; a ring change that
  adds a higher one is refused, and ids are handed out from 1). A key that
  moves keeps its revisions, and its new group raises its time above every
  revision it imports, so a key's revisions keep rising.
- **real-time order**: a node answers a write only once its clock has passed
  the revision's time (``commit_wait_seconds``; Spanner's commit wait with a
  zero bound). A write that starts after another was answered is then
  proposed at a later time, on any group, and gets a higher revision. And a
  linearizable read waits for every entry its group's log held when it
  began (``Peer.read_barrier``), so a write it does not see has a revision
  above the read's start. This holds on one host (one clock); across hosts,
  only while their clocks agree to within the wait's bound, which the node
  passes as 0 today (``max_offset_us`` is there for a configured bound).
- Time up to 2**52 µs (year 2162) fits an etcd revision (int64).

A command without a stamp (0: state machine tests that apply commands
directly) takes the group's revision plus one, as a plain counter.
"""

from __future__ import annotations

import time

__all__ = [
    "EPOCH_US",
    "GROUP_BITS",
    "MAX_GROUP_ID",
    "clock_revision",
    "commit_wait_seconds",
    "next_revision",
    "revision_time_us",
    "stamp_now",
]

GROUP_BITS = 11
_GROUP_MASK = (1 << GROUP_BITS) - 1
# The highest group id whose revisions no other group's can equal.
MAX_GROUP_ID = _GROUP_MASK
# 2020-01-01T00:00:00Z in unix microseconds.
EPOCH_US = 1_577_836_800_000_000


def stamp_now(clock: float | None = None) -> int:
    """The stamp of a command proposed now: µs since EPOCH_US on ``clock`` (unix seconds)."""
    now = time.time() if clock is None else clock
    return max(1, int(now * 1_000_000) - EPOCH_US)


def clock_revision(clock: float | None = None) -> int:
    """The revision of this moment on ``clock`` (unix seconds; now by default), with
    the group bits 0 (the meta group's): no data group's write has it. A read's or
    a watch's mark of "every write below this was applied"."""
    return stamp_now(clock) << GROUP_BITS


def next_revision(previous: int, stamp: int, group_id: int) -> int:
    """The revision a group at ``previous`` assigns to a write of a command stamped ``stamp``."""
    if not stamp:
        return previous + 1
    later = max((previous >> GROUP_BITS) + 1, stamp)
    return (later << GROUP_BITS) | (group_id & _GROUP_MASK)


def revision_time_us(revision: int) -> int:
    """The unix time (µs) a revision stands for."""
    return (revision >> GROUP_BITS) + EPOCH_US


def commit_wait_seconds(revision: int, now: float, max_offset_us: int = 0) -> float:
    """How long to wait before answering a write of ``revision`` at ``now`` (unix seconds).

    Zero unless the group's time ran ahead of this clock (see the module docstring).
    """
    ahead_us = revision_time_us(revision) + max_offset_us - int(now * 1_000_000)
    # 2 µs past it: a float clock read after the wait may round down by one.
    return (ahead_us + 2) / 1_000_000 if ahead_us >= 0 else 0.0
