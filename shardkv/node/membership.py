"""A group leader's side of a replica move: one Raft membership change at a time.

``reconfigure(runtime, request)`` runs at the group's leader (``Node.Reconfigure``)
and is idempotent, so the placement driver may repeat it after any failure:

- ``RECONFIGURE_ADD_LEARNER``: the node becomes a learner (done at once if it
  is a member already). It gets the log, or a snapshot when the log it needs
  was compacted, without counting for any quorum.
- ``RECONFIGURE_PROMOTE``: a learner becomes a voter only once it has caught
  up (its match index reached the leader's commit index): a voter that lags
  would weaken the quorum it joins. Until then the answer is "not done".
- ``RECONFIGURE_REMOVE``: the node leaves the group. A leader asked to remove
  itself first hands its lead to the most caught-up other voter (answering
  "not done"); the new leader removes it on the repeat.

Every change is a single-server change (``shardkv.raft``): at most one is
pending in a group, and a second waits ("not done", retry).
"""

from __future__ import annotations

from shardkv.errors import FailedPrecondition, NotLeader, ProposalFailed
from shardkv.node.runtime import NodeRuntime
from shardkv.raft import ConfChange, ConfChangeType, Role
from shardkv.v1 import node_pb2

__all__ = ["reconfigure"]


async def reconfigure(
    runtime: NodeRuntime, request: node_pb2.ReconfigureRequest
) -> node_pb2.ReconfigureResponse:
    peer = runtime.peer(request.group_id)
    if peer.role != Role.LEADER:
        raise NotLeader(request.group_id, peer.raw.status().leader_id)
    raft = peer.raw.raft
    node_id = request.node_id
    voters, learners = set(raft.voters), set(raft.learners)

    def answer(done: bool, reason: str = "") -> node_pb2.ReconfigureResponse:
        state = peer.conf_state
        return node_pb2.ReconfigureResponse(
            done=done,
            reason=reason,
            voters=state.voters,
            learners=state.learners,
            index=peer.applied,
        )

    if request.kind == node_pb2.RECONFIGURE_ADD_LEARNER:
        if node_id in voters or node_id in learners:
            return answer(True)
        change = ConfChange(ConfChangeType.ADD_LEARNER, node_id)
    elif request.kind == node_pb2.RECONFIGURE_PROMOTE:
        if node_id in voters:
            return answer(True)
        if node_id not in learners:
            raise FailedPrecondition(
                f"node {node_id} is not a learner of group {request.group_id}: add it first"
            )
        progress = raft.progress.get(node_id)
        committed = raft.log.committed
        if progress is None or progress.match < committed:
            match = progress.match if progress is not None else 0
            return answer(False, f"node {node_id} is catching up (index {match} of {committed})")
        change = ConfChange(ConfChangeType.ADD_VOTER, node_id)
    elif request.kind == node_pb2.RECONFIGURE_REMOVE:
        if node_id not in voters and node_id not in learners:
            return answer(True)
        if node_id == runtime.node_id:
            others = [voter for voter in voters if voter != node_id]
            if not others:
                raise FailedPrecondition(f"node {node_id} is the last voter of the group")
            successor = max(others, key=lambda voter: raft.progress[voter].match)
            runtime.transfer_leadership(request.group_id, successor)
            return answer(False, f"handing the lead to node {successor} before leaving")
        change = ConfChange(ConfChangeType.REMOVE_NODE, node_id)
    else:
        raise FailedPrecondition(f"unknown reconfiguration {request.kind}")
    try:
        await runtime.propose_conf_change(request.group_id, change)
    except ProposalFailed as refused:
        return answer(False, str(refused))
    return answer(True)
