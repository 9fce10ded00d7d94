"""The randomized simulation over a fixed range of seeds, in every ``make test``.

``SHARDKV_SIM_SEEDS`` changes how many (2,000 by default); ``make sim`` runs
the long soak over many more. Seeds that once failed beyond that range are
pinned in ``REGRESSION_SEEDS``.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.scenario import SimulationFailure, run_seed

SEED_COUNT = int(os.environ.get("SHARDKV_SIM_SEEDS", "2000"))
CHUNK = 50

# Seeds the soak found failing, kept after their fix.
REGRESSION_SEEDS: list[int] = []


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


@pytest.mark.sim
@pytest.mark.skipif(not REGRESSION_SEEDS, reason="no regression seeds pinned yet")
def test_regression_seeds() -> None:
    _run_all(REGRESSION_SEEDS)
