"""The randomized simulation over a fixed range of seeds, in every ``make test``.

``SHARDKV_SIM_SEEDS`` changes how many (3,000 by default); ``make sim`` runs
the long soak over many more. Bugs the seeds found are pinned as scripted
tests in ``test_regressions.py``, which keep reproducing them even when the
random scenarios change shape.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.scenario import SimulationFailure, run_seed

SEED_COUNT = int(os.environ.get("SHARDKV_SIM_SEEDS", "3000"))
CHUNK = 50


def _run_all(seeds: range | list[int]) -> None:
    failures: list[str] = []
    for seed in seeds:
        try:
            run_seed(seed)
        except SimulationFailure as failure:
            failures.append(str(failure))
    assert not failures, f"{len(failures)} seeds failed:\n\n" + "\n\n".join(failures[:3])


@pytest.mark.sim
@pytest.mark.parametrize("first", range(0, SEED_COUNT, CHUNK))
def test_random_seeds(first: int) -> None:
    """§5 safety and liveness under faults, linearizable client history."""
    _run_all(range(first, min(first + CHUNK, SEED_COUNT)))
