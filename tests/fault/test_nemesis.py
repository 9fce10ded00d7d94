"""Short nemesis runs, one per workload, each with a fixed seed (``make soak`` runs them long).

Each run starts a fresh cluster (three or four nodes, two routers), throws
the seed's faults at it for ``SECONDS`` of load, one failpoint included,
heals, and checks the workload's history: linearizable registers, no lost
insert, a conserved bank, no serializability cycle. The schedule is printed
(``-s`` shows it), and a failure names the command that replays it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shardkv.storage.engine import UNSAFE_NO_FSYNC_ENV
from tests.fault.run import run_one

pytestmark = [pytest.mark.fault, pytest.mark.integration]

SECONDS = 20.0
# (workload, seed, nodes): the four-node runs can move replicas.
RUNS = [
    ("register", 101, 3),
    ("set", 202, 4),
    ("bank", 303, 3),
    ("list-append", 404, 4),
]


@pytest.mark.parametrize(("workload", "seed", "nodes"), RUNS, ids=[run[0] for run in RUNS])
def test_nemesis_run_finds_no_anomaly(tmp_path: Path, workload: str, seed: int, nodes: int) -> None:
    result = run_one(tmp_path, seed, workload, SECONDS, nodes=nodes)
    print(result.report())
    # The run itself counts as anomalies a nemesis that failed or skipped faults
    # and a cluster that answered fewer than MIN_OK operations.
    assert not result.anomalies, result.report()
    assert result.inflicted >= 3, result.report()


def test_the_nemesis_catches_a_store_that_loses_acknowledged_writes(tmp_path: Path) -> None:
    """The negative control: with durability off (test-only), a power cut must show as lost data."""
    result = run_one(
        tmp_path,
        505,
        "set",
        8.0,
        kinds=("kill-all",),
        failpoint=False,
        node_env={UNSAFE_NO_FSYNC_ENV: "1"},
    )
    print(result.report())
    assert any("kill -9 every node" in line for line in result.nemesis), result.report()
    lost = [anomaly for anomaly in result.anomalies if anomaly.startswith("set: lost")]
    assert lost, f"the nemesis missed a store without durability:\n{result.report()}"
