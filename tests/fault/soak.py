"""``make soak MINUTES=60``: nemesis runs one after another until the time is up.

Each run takes the next seed and the next workload in turn (register, set,
bank, list-append), on a fresh cluster, for ``--run-seconds`` of load
under faults (every fault kind, ring changes and replica moves included:
half the runs use four nodes so replicas can move). A run's data and logs
are deleted when it passes and kept, with the replay command, when it
finds an anomaly. At the end a summary table goes to stdout: per workload,
the runs, faults thrown, failpoints fired, operations (ok, failed,
unknown) and anomalies; the exit status is 1 if any run found one.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.fault.run import RunResult, run_one
from tests.fault.workloads import WORKLOADS

__all__ = ["summary_table"]


def summary_table(results: Sequence[RunResult]) -> str:
    header = (
        "workload",
        "runs",
        "faults",
        "failpoints fired",
        "ok",
        "failed",
        "unknown",
        "anomalies",
    )
    rows: list[tuple[str, ...]] = []
    for name in (*WORKLOADS, "all"):
        chosen = [result for result in results if name in ("all", result.workload)]
        rows.append(
            (
                name,
                str(len(chosen)),
                str(sum(result.inflicted for result in chosen)),
                str(sum(result.failpoint_fired for result in chosen)),
                str(sum(result.ok for result in chosen)),
                str(sum(result.failed for result in chosen)),
                str(sum(result.unknown for result in chosen)),
                str(sum(len(result.anomalies) for result in chosen)),
            )
        )
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends the soak as Ctrl-C does: the current run's processes are killed.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--run-seconds", type=float, default=45.0)
    parser.add_argument("--first-seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    workloads = args.workloads.split(",")
    ends = time.monotonic() + args.minutes * 60
    results: list[RunResult] = []
    kept: list[Path] = []
    seed = args.first_seed
    print(f"soak: {args.minutes:g} minutes from seed {seed}", flush=True)
    try:
        # A run needs its load time plus about 30 s to start, heal and check.
        while time.monotonic() + args.run_seconds + 30 < ends or not results:
            workload = workloads[len(results) % len(workloads)]
            nodes = 4 if (len(results) // len(workloads)) % 2 else 3
            root = Path(tempfile.mkdtemp(prefix=f"shardkv-soak-{seed}-"))
            try:
                result = run_one(root, seed, workload, args.run_seconds, nodes=nodes)
            except (Exception, pytest.fail.Exception):
                # A harness failure (the harness fails with pytest.fail too) is an
                # anomaly of its own, never a silent pass.
                result = RunResult(seed, workload, args.run_seconds, "", nodes=nodes)
                result.anomalies.append(f"the run itself failed:\n{traceback.format_exc()}")
            results.append(result)
            print(result.report(), flush=True)
            if result.anomalies:
                kept.append(root)
                print(f"  logs and data kept in {root}", flush=True)
            else:
                shutil.rmtree(root, ignore_errors=True)
            seed += 1
    except KeyboardInterrupt:
        print(f"\nsoak interrupted after {len(results)} runs", flush=True)
    print()
    print(summary_table(results))
    failing = [result for result in results if result.anomalies]
    for result in failing:
        print(f"anomaly in {result.workload} seed {result.seed}: replay with {result.replay}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
