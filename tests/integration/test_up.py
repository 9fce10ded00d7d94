"""``shardkv up`` and the CLI as a new user runs them: real processes, Ctrl-C, run again.

Starts ``shardkv up`` (as ``python -m router.cli up``) on a free run of ports
and a fresh data dir, waits for its ready line, uses the CLI against it,
kills one node (the launcher reports it and keeps serving), stops it with
SIGINT (exit 0, every child gone), then runs it again on the same data dir
and reads the key back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import clean_environment
from tests.ports import free_port_run

pytestmark = pytest.mark.integration

READY_TIMEOUT = 60.0


class Up:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.output = data_dir.parent / f"up-{port}.out"
        with self.output.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "router.cli",
                    "up",
                    "--nodes",
                    "3",
                    "--groups",
                    "2",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data_dir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_environment(),
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for(self, needle: str, after: int = 0) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if needle in self.text()[after:]:
                return
            if self.process.poll() is not None:
                pytest.fail(f"shardkv up exited with {self.process.returncode}:\n{self.text()}")
            time.sleep(0.1)
        pytest.fail(f"no {needle!r} from shardkv up in {READY_TIMEOUT} s:\n{self.text()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def cli(port: int, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "--router", f"127.0.0.1:{port}", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
        check=False,
    )


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def test_up_serves_the_cli_survives_a_node_crash_and_keeps_data_across_runs(
    tmp_path: Path,
) -> None:
    port = free_port_run(4)
    data_dir = tmp_path / "shardkv-data"
    up = Up(data_dir, port)
    try:
        up.wait_for("ready:")
        put = cli(port, "put", "hello", "world")
        assert put.returncode == 0, put.stderr
        got = cli(port, "get", "hello")
        assert (got.returncode, got.stdout.strip()) == (0, "world"), got.stderr
        missing = cli(port, "get", "nothing-here")
        assert missing.returncode == 1 and missing.stdout == ""
        for number in range(20):
            assert cli(port, "put", f"user/{number:02d}", f"v{number}").returncode == 0
        scanned = cli(port, "scan", "--prefix", "user/", "--limit", "5")
        assert scanned.returncode == 0, scanned.stderr
        assert [line.split("\t")[0] for line in scanned.stdout.splitlines()] == [
            f"user/{number:02d}" for number in range(5)
        ]
        status = cli(port, "status", "--json")
        assert status.returncode == 0 and '"nodes"' in status.stdout, status.stderr

        # One node crashes: reported, and the cluster keeps serving.
        children = children_of(up.process.pid)
        assert len(children) == 4, "three nodes and a router"
        seen = len(up.text())
        os.kill(children[0], signal.SIGKILL)
        up.wait_for("not restarting it", after=seen)
        assert cli(port, "put", "after-crash", "yes").returncode == 0
        assert cli(port, "get", "after-crash").stdout.strip() == "yes"

        assert up.stop() == 0
        assert all(not Path(f"/proc/{child}").exists() for child in children[1:])
    finally:
        up.kill()

    again = Up(data_dir, port)
    try:
        again.wait_for("ready:")
        assert cli(port, "get", "hello").stdout.strip() == "world"
        assert cli(port, "get", "after-crash").stdout.strip() == "yes"
        assert again.stop() == 0
    finally:
        again.kill()
