"""The whole node stack under the seeded nemesis of ``node_sim``, and scripted crashes.

The batch of random seeds runs in every ``make test`` (``SHARDKV_NODE_SIM_SEEDS``
changes how many); ``python -m tests.sim.node_sim --seeds START COUNT`` runs
more. The scripted tests drive ``NodeCluster`` through one situation each,
and the mutation tests show that the checks catch the bugs they are for.
Section numbers are the Raft paper's.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from shardkv.fsm.kv import KeyValueStateMachine
from shardkv.node.peer import Peer, PeerOptions
from shardkv.node.runtime import NodeRuntime
from shardkv.storage import Batch
from shardkv.v1 import kv_pb2
from tests.sim.crash_engine import CrashEngine
from tests.sim.node_cluster import NodeCluster, SimNode
from tests.sim.node_sim import run_node_seed

SEED_COUNT = int(os.environ.get("SHARDKV_NODE_SIM_SEEDS", "400"))
CHUNK = 10
OPTIONS = PeerOptions(election_ticks=10, heartbeat_ticks=1)

_T = TypeVar("_T")


def _cluster(options: PeerOptions = OPTIONS, groups: tuple[int, ...] = (1,)) -> NodeCluster:
    cluster = NodeCluster({group_id: (1, 2, 3) for group_id in groups}, options, seed=1)
    for node_id in cluster.nodes:
        cluster.start(node_id)
    return cluster


async def _leader(
    cluster: NodeCluster, group_id: int, *, other_than: int = 0, bound: int = 300
) -> tuple[SimNode, Peer]:
    def elected() -> bool:
        leader = cluster.leader(group_id)
        return leader is not None and leader[0].node_id != other_than

    assert await cluster.run_until(elected, bound), f"group {group_id} elected no leader"
    leader = cluster.leader(group_id)
    assert leader is not None
    return leader


async def _settle(cluster: NodeCluster, future: asyncio.Future[_T], bound: int = 300) -> _T:
    assert await cluster.run_until(future.done, bound), "the request did not settle"
    return future.result()


def _runtime(node: SimNode) -> NodeRuntime:
    assert node.runtime is not None
    return node.runtime


def _group_peers(cluster: NodeCluster, group_id: int) -> Iterator[tuple[int, Peer]]:
    for node, peer in cluster.peers(group_id):
        yield node.node_id, peer


def _put(key: bytes, value: bytes, client_id: int, seq: int) -> kv_pb2.Command:
    return kv_pb2.Command(
        client_id=client_id,
        seq=seq,
        operations=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=value))],
    )


# -- random seeds ---------------------------------------------------------------------


@pytest.mark.sim
@pytest.mark.parametrize("first", range(0, SEED_COUNT, CHUNK))
def test_random_seeds(first: int) -> None:
    """Linearizable, exactly-once, durable and live under the nemesis (node_sim's checks)."""
    failures = []
    for seed in range(first, min(first + CHUNK, SEED_COUNT)):
        result = run_node_seed(seed)
        if not result.ok:
            failures.append(result.failure)
    assert not failures, f"{len(failures)} seeds failed:\n\n" + "\n\n".join(failures[:2])


def test_a_seed_gives_the_same_run_every_time() -> None:
    """Also in another process with other hash seeds: the replay command replays."""
    first, second = run_node_seed(11), run_node_seed(11)
    assert first.ok, first.failure
    assert first == second
    replay = subprocess.run(
        [sys.executable, "-m", "tests.sim.node_sim", "--seed", "11"],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"digest='{first.digest}'" in replay.stdout


# -- the checks catch what they are for --------------------------------------------------


def _stale_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any replica answers reads from what it applied, without ReadIndex (§8)."""

    def read_barrier(self: NodeRuntime, group_id: int) -> asyncio.Future[None]:
        self.peer(group_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    monkeypatch.setattr(NodeRuntime, "read_barrier", read_barrier)


def _no_dedup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state machine forgets sessions: a retried write applies again."""
    apply = KeyValueStateMachine.apply

    def apply_anonymously(
        self: KeyValueStateMachine, batch: Batch, command: kv_pb2.Command
    ) -> kv_pb2.CommandResult:
        anonymous = kv_pb2.Command()
        anonymous.CopyFrom(command)
        anonymous.client_id = 0
        return apply(self, batch, anonymous)

    monkeypatch.setattr(KeyValueStateMachine, "apply", apply_anonymously)


def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synced writes are not durable: a crash loses votes, terms and log entries."""
    write = CrashEngine._write

    def write_unsynced(self: CrashEngine, batch: Batch, sync: bool) -> None:
        write(self, batch, False)

    async def sync_nothing(self: CrashEngine) -> None:
        return None

    monkeypatch.setattr(CrashEngine, "_write", write_unsynced)
    monkeypatch.setattr(CrashEngine, "_sync", sync_nothing)


@pytest.mark.sim
@pytest.mark.parametrize(
    "mutant", [_stale_reads, _no_dedup, _no_fsync], ids=lambda mutant: mutant.__name__
)
def test_the_checks_catch_a_broken_node(
    mutant: Callable[[pytest.MonkeyPatch], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    mutant(monkeypatch)
    for seed in range(20):
        result = run_node_seed(seed)
        if not result.ok:
            # Caught by a check, not by the stack breaking under the mutant.
            assert "the node stack raised" not in result.failure, result.failure
            return
    pytest.fail(f"no seed caught {mutant.__doc__}")


# -- scripted ------------------------------------------------------------------------------


async def test_a_crash_that_loses_applied_state_reapplies_from_the_log_exactly_once() -> None:
    """Applied state is written unsynced; a power loss makes the log replay it, once."""
    cluster = _cluster(groups=(1, 2))
    node, _ = await _leader(cluster, 1)
    for seq in range(1, 11):
        await _settle(cluster, _runtime(node).propose(1, _put(b"k", b"v%d" % seq, 7, seq)))
    assert await cluster.run_until(lambda: cluster.converged(1), 100)
    applied = {node_id: peer.applied for node_id, peer in _group_peers(cluster, 1)}

    for node_id in cluster.nodes:
        await cluster.crash(node_id, keep_unsynced=0)
    assert cluster.lost_batches > 0
    for node_id in cluster.nodes:
        cluster.start(node_id)
    reopened = dict(_group_peers(cluster, 1))
    assert any(reopened[node_id].applied < applied[node_id] for node_id in applied), (
        "the crash lost some applied state"
    )

    node, leader = await _leader(cluster, 1)
    assert await cluster.run_until(lambda: cluster.converged(1), 300)
    assert cluster.replicas_differ(1) == []
    for _, peer in cluster.peers(1):
        kv = peer.machine.get(b"k")
        assert kv is not None and (kv.value, kv.version) == (b"v10", 10)
        assert peer.machine.writes == 10, "each write applied once"
    # The retry of the last write is answered from the session, not applied again.
    retry = await _settle(cluster, _runtime(node).propose(1, _put(b"k", b"v10", 7, 10)))
    assert retry.results[0].succeeded
    kv = leader.machine.get(b"k")
    assert kv is not None and kv.version == 10


async def test_a_follower_far_behind_catches_up_by_chunked_snapshot_under_drops() -> None:
    """§7: the leader compacted past the follower, and a third of all messages is lost."""
    options = PeerOptions(
        election_ticks=10,
        heartbeat_ticks=1,
        snapshot_interval=5,
        compaction_lag=0,
        snapshot_chunk_size=32,
    )
    cluster = _cluster(options)
    node, leader = await _leader(cluster, 1)
    lagging = next(node_id for node_id in cluster.nodes if node_id != node.node_id)
    lagging_peer = _runtime(cluster.nodes[lagging]).peers[1]
    cluster.network.isolate(lagging)
    for seq in range(1, 31):
        command = _put(b"k%02d" % seq, b"value-%02d" % seq, 5, seq)
        await _settle(cluster, _runtime(node).propose(1, command))
    await cluster.step(3)
    assert leader.storage.first_index() > lagging_peer.raw.raft.log.last_index() + 1, (
        "the leader compacted past the follower's log"
    )

    drops = random.Random(3)
    cluster.network.drop(lambda *_: drops.random() < 0.3)
    cluster.network.heal()
    chunks = cluster.snapshot_chunks
    assert await cluster.run_until(lambda: cluster.converged(1), 2000)
    assert lagging_peer.storage.snapshot_metadata().index > 1, "it caught up by a snapshot"
    assert cluster.snapshots_installed >= 1
    assert cluster.snapshot_chunks - chunks > 10, "the image came in many chunks"
    assert cluster.replicas_differ(1) == []


async def test_a_proposal_whose_index_a_later_term_reuses_is_answered() -> None:
    """A deposed leader's proposals outlive the truncation of its log (peer.py's promise)."""
    cluster = _cluster()
    old, old_peer = await _leader(cluster, 1)
    cluster.network.isolate(old.node_id)
    # Three entries past what the others have, proposed before the old leader steps down.
    stranded = [_runtime(old).propose(1, _put(b"k", b"p%d" % seq, 8, seq)) for seq in (1, 2, 3)]
    for future in stranded:
        future.add_done_callback(lambda done: done.exception())
    new, new_peer = await _leader(cluster, 1, other_than=old.node_id)
    cluster.network.heal()
    # The new leader's no-op overwrites the first of them, truncating the other two.
    assert await cluster.run_until(
        lambda: old_peer.raw.raft.log.last_index() == new_peer.raw.raft.log.last_index(), 300
    )
    new_peer.raw.transfer_leadership(old.node_id)
    old, old_peer = await _leader(cluster, 1, other_than=new.node_id)
    # The old leader's new no-op takes the second index; this proposal takes the third.
    await _settle(cluster, _runtime(old).propose(1, _put(b"k", b"fresh", 9, 1)))
    assert old_peer.applied >= old_peer.raw.raft.log.last_index()
    unanswered = [seq for seq, future in enumerate(stranded, start=1) if not future.done()]
    assert not unanswered, f"proposals {unanswered} never got an answer"
