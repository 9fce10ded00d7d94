"""How fast can the Raft algorithm alone commit? 3 in-memory nodes, no I/O.

Each round the leader takes ``--proposals-per-round`` proposals of
``--batch`` entries each (one ``propose_batch`` call per proposal), then every
node runs its Ready (persist to MemoryStorage, deliver messages in memory,
apply, advance) until the cluster is quiet. Reported: committed entries per
second at the leader, and proposal calls per second. This is the ceiling the
algorithm allows a group in one Python process; the node adds disk and
network on top.

    make bench-raft    (or: .venv/bin/python bench/raft_core.py --seconds 3)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque

from shardkv.raft import Config, MemoryStorage, Message, RawNode, Role

VOTERS = (1, 2, 3)


class InMemoryGroup:
    def __init__(self) -> None:
        self.storages = {node_id: MemoryStorage.with_voters(VOTERS) for node_id in VOTERS}
        self.nodes = {
            node_id: RawNode(
                Config(
                    id=node_id,
                    election_tick=10,
                    heartbeat_tick=1,
                    seed=node_id,
                    max_inflight=256,
                    max_size_per_msg=4 << 20,
                ),
                self.storages[node_id],
            )
            for node_id in VOTERS
        }
        self.mailbox: deque[Message] = deque()
        self.committed = 0

    def run_until_quiet(self) -> None:
        while True:
            busy = False
            for node_id, node in self.nodes.items():
                if not node.has_ready():
                    continue
                busy = True
                ready = node.ready()
                storage = self.storages[node_id]
                if ready.entries:
                    storage.append(ready.entries)
                if ready.hard_state is not None:
                    storage.set_hard_state(ready.hard_state)
                self.mailbox.extend(ready.messages)
                if node_id == 1:
                    self.committed += sum(1 for entry in ready.committed_entries if entry.data)
                node.advance(ready)
            while self.mailbox:
                busy = True
                message = self.mailbox.popleft()
                self.nodes[message.to].step(message)
            if not busy:
                return

    def elect(self) -> RawNode:
        # Fresh nodes refuse votes for one election timeout (they may have
        # promised a lease before a restart): let that pass first.
        for _ in range(10):
            for node in self.nodes.values():
                node.tick()
        leader = self.nodes[1]
        leader.campaign()
        self.run_until_quiet()
        assert leader.raft.role == Role.LEADER
        return leader


def measure(
    batch: int, proposals_per_round: int, seconds: float, entry_size: int
) -> tuple[float, float]:
    group = InMemoryGroup()
    leader = group.elect()
    payloads = [b"x" * entry_size] * batch
    proposals = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(proposals_per_round):
            leader.propose_batch(payloads)
        proposals += proposals_per_round
        group.run_until_quiet()
    elapsed = time.perf_counter() - started
    # Compact now and then would not change the rate; memory is ample here.
    return group.committed / elapsed, proposals / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--entry-size", type=int, default=100)
    arguments = parser.parse_args(argv)
    print(
        f"raft core, 3 nodes in memory, {arguments.entry_size}-byte entries, "
        f"{arguments.seconds:.0f}s per row"
    )
    print(f"{'batch':>6} {'proposals/round':>16} {'entries/s':>12} {'proposals/s':>12}")
    for batch, per_round in ((1, 1), (1, 64), (100, 1), (100, 16)):
        entries, proposals = measure(batch, per_round, arguments.seconds, arguments.entry_size)
        print(f"{batch:>6} {per_round:>16} {entries:>12,.0f} {proposals:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
