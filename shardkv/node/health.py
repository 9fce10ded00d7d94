"""When a node is healthy: every group it hosts has a leader.

``leaderless_groups(runtime)`` is the node's health check for
``shardkv.health.Health``: the node is NOT_SERVING while any replica it hosts
knows no leader of its group, SERVING otherwise. That covers the two ways a
group stops serving through this node:

- a follower whose leader went silent: after an election timeout it turns
  (pre-)candidate and forgets the leader, and stays so while it cannot win a
  (pre-)vote, that is while its group has no quorum it can reach;
- a leader that lost its quorum: check-quorum steps it down within an
  election timeout, with no leader known.

An election in a healthy group also counts for its few ticks, which is what
a load balancer should see: requests to that group would wait meanwhile. A
node that hosts no group (one that joined and has no replica yet) is
healthy. The check reads the runtime's peers between rounds, on the same
event loop: it never blocks and costs a few attribute reads per group.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardkv.node.runtime import NodeRuntime
from shardkv.raft import NONE

__all__ = ["HEALTH_INTERVAL_MAX", "health_interval", "leaderless_groups"]

# The status lags the groups by at most this long.
HEALTH_INTERVAL_MAX = 1.0
_HEALTH_INTERVAL_MIN = 0.1


def health_interval(tick_interval: float) -> float:
    """How often to check: every tick, but no more than 10 times and no less than once a second."""
    return min(HEALTH_INTERVAL_MAX, max(_HEALTH_INTERVAL_MIN, tick_interval))


async def leaderless_groups(runtime: NodeRuntime) -> Sequence[str]:
    """The node's problems: one line naming the groups whose replica here knows no leader."""
    groups = sorted(
        group_id for group_id, peer in runtime.peers.items() if peer.raw.raft.lead == NONE
    )
    if not groups:
        return ()
    return (
        f"no known leader (no quorum reachable) in group{'s' if len(groups) > 1 else ''} "
        + ", ".join(map(str, groups)),
    )
