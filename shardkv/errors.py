"""Errors shardkv raises that a user can cause or act on.

::

    ShardKVError
    ├── InvalidArgument      the request breaks a rule (empty or oversized key, ...): fix it
    ├── NotLeader            this replica does not lead the group: retry at ``leader_id``
    ├── ProposalFailed       the write was not applied and never will be: safe to retry
    ├── OutcomeUnknown       the write may or may not apply: retry with the same (client, seq)
    ├── UnknownGroup         this node hosts no replica of the group
    ├── FailedPrecondition   the cluster is not in a state that allows it (a node id taken, ...)
    └── ConfigError          the node's config, data dir or port is unusable (shardkv.node.config)

The router shares this module, so one request is judged the same on both sides.
"""

from __future__ import annotations

__all__ = [
    "FailedPrecondition",
    "InvalidArgument",
    "NotLeader",
    "OutcomeUnknown",
    "ProposalFailed",
    "ShardKVError",
    "UnknownGroup",
]


class ShardKVError(Exception):
    """Root of shardkv's errors."""


class InvalidArgument(ShardKVError):
    """The request is malformed or breaks a limit; retrying it unchanged fails again."""


class NotLeader(ShardKVError):
    """Only the group's leader serves this; ``leader_id`` is the one we know (0: none)."""

    def __init__(self, group_id: int, leader_id: int) -> None:
        hint = f"node {leader_id} leads it" if leader_id else "no leader is known yet"
        super().__init__(f"this node does not lead group {group_id}: {hint}")
        self.group_id = group_id
        self.leader_id = leader_id


class ProposalFailed(ShardKVError):
    """The write lost its place in the log (a new leader overwrote it): not applied."""


class OutcomeUnknown(ShardKVError):
    """The write may yet apply (leadership changed, or the node is stopping)."""


class FailedPrecondition(ShardKVError):
    """The request is well formed but the cluster's state refuses it; fix that state first."""


class UnknownGroup(ShardKVError):
    def __init__(self, group_id: int) -> None:
        super().__init__(f"this node hosts no replica of group {group_id}")
        self.group_id = group_id
