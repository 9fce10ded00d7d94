"""Run many simulation seeds in parallel: ``python -m tests.sim.soak --seeds N``.

Prints one line of totals, then every failing seed with the command that
replays it; exits 1 if any seed failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections import Counter

from tests.sim.scenario import RunResult, SimulationFailure, replay_command, run_seed


def _run(seed: int) -> tuple[int, RunResult | None, str | None]:
    try:
        return seed, run_seed(seed), None
    except SimulationFailure as failure:
        return seed, None, failure.reason.splitlines()[0]
    except Exception as error:  # a crash of the core or the simulator is a failure too
        return seed, None, f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=100_000, help="how many seeds")
    parser.add_argument("--start", type=int, default=0, help="the first seed")
    parser.add_argument("--jobs", type=int, default=multiprocessing.cpu_count())
    arguments = parser.parse_args(argv)

    started = time.monotonic()
    totals: Counter[str] = Counter()
    failures: list[tuple[int, str]] = []
    seeds = range(arguments.start, arguments.start + arguments.seeds)
    with multiprocessing.Pool(arguments.jobs) as pool:
        for done, (seed, result, failure) in enumerate(
            pool.imap_unordered(_run, seeds, chunksize=64), start=1
        ):
            if failure is not None:
                failures.append((seed, failure))
                print(f"FAIL seed {seed}: {failure}", file=sys.stderr, flush=True)
            elif result is not None:
                totals["steps"] += result.steps
                totals["operations"] += result.completed_ops
                totals["leaders"] += result.leaders
                totals["crashes"] += result.crashes
                totals["snapshots installed"] += result.snapshots_installed
                totals["membership changes"] += result.conf_changes
                totals["transfers"] += result.transfers
                totals["messages"] += result.messages
            if done % 5000 == 0:
                elapsed = time.monotonic() - started
                print(f"{done} seeds, {len(failures)} failed, {elapsed:.0f}s", flush=True)
    elapsed = time.monotonic() - started
    summary = ", ".join(f"{value} {name}" for name, value in totals.items())
    print(
        f"{len(seeds)} seeds from {arguments.start} in {elapsed:.0f}s: "
        f"{len(failures)} failed; {summary}"
    )
    for seed, failure in sorted(failures):
        print(f"seed {seed}: {failure}\n  replay: {replay_command(seed)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
