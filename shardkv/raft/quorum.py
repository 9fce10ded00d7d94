"""Majority arithmetic over a set of voters (single-server membership changes)."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

__all__ = ["VoteResult", "committed_index", "quorum_size", "vote_result"]


class VoteResult(enum.IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


def quorum_size(voter_count: int) -> int:
    return voter_count // 2 + 1


def committed_index(voters: Collection[int], acked: Mapping[int, int]) -> int:
    """The largest index that a majority of ``voters`` have acknowledged.

    With no voters the answer is unbounded in etcd; here it is 0, since a group
    with no voters cannot commit anything.
    """
    if not voters:
        return 0
    indexes = sorted((acked.get(voter, 0) for voter in voters), reverse=True)
    return indexes[quorum_size(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    granted = rejected = 0
    for voter in voters:
        vote = votes.get(voter)
        if vote is True:
            granted += 1
        elif vote is False:
            rejected += 1
    needed = quorum_size(len(voters))
    if granted >= needed:
        return VoteResult.WON
    if len(voters) - rejected < needed:
        return VoteResult.LOST
    return VoteResult.PENDING
