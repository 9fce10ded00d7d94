"""One nemesis run: a fresh cluster, a workload, a seeded fault schedule, a verdict.

``run_one`` starts nodes and routers under ``root``, arms the schedule's
failpoint, runs the workload while the nemesis thread carries out the
schedule, heals everything, waits until every group is led again, lets the
workload do its final reads, and checks the history. Anomalies are what
the workload's checker found, plus any process that died other than by
the nemesis' hand or a failpoint's, a cluster that did not recover after
healing or answered too few operations (``MIN_OK``), and a nemesis that
failed or did not carry out its whole schedule. Replay a run with the seed it printed::

    .venv/bin/python -m tests.fault.run --seed 7 --workload bank --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.fault.harness import FaultCluster, FaultSettings
from tests.fault.nemesis import (
    ALL_NODES,
    ALL_ROUTERS,
    FAULTS,
    NemesisLog,
    describe,
    plan,
    run_schedule,
)
from tests.fault.workloads import WORKLOADS, make_workload

__all__ = ["MIN_OK", "RunResult", "run_one"]

REPLICAS = 3
# Fewest operations a run must see answered OK: a wedged cluster must not pass.
MIN_OK = {"register": 200, "set": 200, "bank": 20, "list-append": 30}
# The workloads that run transactions (the coordinator's failpoints can fire).
TRANSACTIONAL = ("bank", "list-append")


@dataclass(slots=True)
class RunResult:
    seed: int
    workload: str
    seconds: float
    schedule: str
    nodes: int = 3
    # Planned, and carried out (not refused by the cluster).
    faults: int = 0
    inflicted: int = 0
    failpoint: str = ""
    failpoint_fired: bool = False
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    anomalies: list[str] = field(default_factory=list)
    nemesis: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    detail: str = ""
    elapsed: float = 0.0

    @property
    def replay(self) -> str:
        return (
            f"python -m tests.fault.run --seed {self.seed} --workload {self.workload} "
            f"--seconds {self.seconds:g} --nodes {self.nodes}"
        )

    def report(self) -> str:
        lines = [
            f"{self.workload} seed {self.seed}: {self.ok} ok, {self.failed} failed, "
            f"{self.unknown} unknown; {self.inflicted} of {self.faults} faults inflicted; "
            f"{self.failpoint or 'no failpoint'}"
            f"{' (fired)' if self.failpoint_fired else ''}; {self.elapsed:.0f} s",
            f"  {self.detail}",
            *(f"  nemesis: {line}" for line in self.nemesis),
            *(f"  refused: {line}" for line in self.refused),
        ]
        if self.anomalies:
            lines.append(f"  ANOMALIES ({len(self.anomalies)}); replay: {self.replay}")
            lines += [f"    {anomaly}" for anomaly in self.anomalies]
        return "\n".join(lines)


def run_one(
    root: Path,
    seed: int,
    workload: str,
    seconds: float,
    *,
    nodes: int = 3,
    kinds: Sequence[str] = FAULTS,
    failpoint: bool = True,
    node_env: Mapping[str, str] | None = None,
) -> RunResult:
    """One run; ``node_env`` adds to every node's environment (test-only modes)."""
    started = time.monotonic()
    schedule = plan(
        seed,
        seconds,
        nodes=nodes,
        replicas=REPLICAS,
        kinds=kinds,
        failpoint=failpoint,
        transactions=workload in TRANSACTIONAL,
    )
    result = RunResult(
        seed, workload, seconds, describe(schedule), nodes=nodes, faults=len(schedule.faults)
    )
    print(result.schedule, flush=True)
    cluster = FaultCluster(root, FaultSettings(nodes=nodes, replicas=REPLICAS))
    cluster.nodes.env.update(node_env or {})
    point = schedule.failpoint
    if point is not None:
        result.failpoint = str(point)
        if point.where == ALL_ROUTERS:
            cluster.set_router_failpoint(point.spec)
        else:
            for node_id in cluster.node_ids() if point.where == ALL_NODES else [point.where]:
                cluster.set_failpoint(node_id, point.spec)
    try:
        cluster.start(restart_clean=bool(node_env))
        addresses = cluster.addresses
        chosen = make_workload(workload)
        asyncio.run(chosen.setup(addresses))
        stop = threading.Event()
        log = NemesisLog()
        nemesis = threading.Thread(
            target=run_schedule, args=(cluster, schedule, stop, log), name="nemesis", daemon=True
        )
        nemesis.start()
        try:
            asyncio.run(chosen.run(addresses, seconds, seed))
        finally:
            stop.set()
            nemesis.join(timeout=120)
        if nemesis.is_alive():
            result.anomalies.append("the nemesis did not end within 120 s of the load")
        if log.error:
            result.anomalies.append(f"the nemesis failed:\n{log.error}")
        elif log.completed < len(schedule.faults):
            result.anomalies.append(
                f"the nemesis carried out {log.completed} of {len(schedule.faults)} faults"
            )
        cluster.heal()
        try:
            cluster.wait_healthy(timeout=60)
        except AssertionError as error:
            result.anomalies.append(f"no recovery after healing: {error}")
        asyncio.run(chosen.final(addresses))
        verdict = chosen.check()
        result.ok, result.failed, result.unknown = verdict.ok, verdict.failed, verdict.unknown
        if verdict.ok < MIN_OK[workload]:
            # A cluster that served (almost) nothing proves nothing: wedged is a finding.
            result.anomalies.append(
                f"only {verdict.ok} operations answered OK (at least {MIN_OK[workload]} expected)"
            )
        result.detail = verdict.detail
        result.anomalies.extend(verdict.anomalies)
        cluster.check_processes()
        result.anomalies.extend(f"crash: {crash}" for crash in cluster.events.crashes)
        result.failpoint_fired = point is not None and any(
            f"failpoint {point.name} fires" in log_path.read_text(errors="replace")
            for log_path in root.glob("*.log")
        )
        result.nemesis, result.refused = log.done, log.refused
        result.inflicted = log.inflicted
    finally:
        cluster.close()
    result.elapsed = time.monotonic() - started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--workload", choices=WORKLOADS, default="register")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated fault kinds")
    parser.add_argument("--no-failpoint", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the data and logs")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix=f"shardkv-fault-{args.seed}-"))
    result = run_one(
        root,
        args.seed,
        args.workload,
        args.seconds,
        nodes=args.nodes,
        kinds=args.faults.split(","),
        failpoint=not args.no_failpoint,
    )
    print(result.report())
    if result.anomalies or args.keep:
        print(f"logs and data: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if result.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
