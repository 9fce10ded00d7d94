"""Errors shardkv raises that a user can cause or act on.

::

    ShardKVError
    └── InvalidArgument      the request breaks a rule (empty or oversized key, ...): fix it

More (NotLeader, WrongGroup, ServerBusy) arrive with the node's service. The
router shares this module, so one request is judged the same on both sides.
"""

from __future__ import annotations

__all__ = ["InvalidArgument", "ShardKVError"]


class ShardKVError(Exception):
    """Root of shardkv's errors."""


class InvalidArgument(ShardKVError):
    """The request is malformed or breaks a limit; retrying it unchanged fails again."""
