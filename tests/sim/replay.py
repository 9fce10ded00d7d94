"""Replay one simulation seed: ``python -m tests.sim.replay --seed N``."""

from __future__ import annotations

import argparse
import sys

from tests.sim.scenario import SimulationFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    arguments = parser.parse_args(argv)
    try:
        result = run_seed(arguments.seed)
    except SimulationFailure as failure:
        print(failure, file=sys.stderr)
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
