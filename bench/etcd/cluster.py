"""A throwaway etcd cluster of real ``etcd`` processes on 127.0.0.1, for benchmarks.

``EtcdCluster(data_dir)`` is an async context manager. Entering it:

1. finds the etcd binary (``bench.etcd.install.find_etcd``; ``EtcdNotInstalled``
   says how to install it when it is missing);
2. gives each member a client and a peer port (free ones, or ``base_port``,
   ``base_port + 1``, … when given), a fresh data dir ``data_dir/NAME`` and a
   log file ``data_dir/NAME.log`` (etcd's stdout and stderr);
3. starts every member with the same ``--initial-cluster`` and
   ``--initial-cluster-state new``;
4. waits until every member answers a linearizable Range (so a leader is
   elected and every member serves), raising ``EtcdClusterError`` with the log
   tail when a member exits or ``start_timeout`` passes.

Leaving it stops the members one at a time: SIGTERM, then SIGKILL after
``stop_timeout``. Stopping twice is harmless; ``endpoints`` after stop raises.

Settings are etcd's defaults (fsync on every commit, 100 ms heartbeat, 1 s
election timeout, ``--snapshot-count`` 100000, 2 GiB backend quota) except two
raised limits, so that a bulk load can use txns past etcd's default caps of
128 operations and 1.5 MiB per request: ``--max-txn-ops`` (``max_txn_ops``,
default 4096) and ``--max-request-bytes`` (``max_request_bytes``, 8 MiB).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from bench.etcd.client import EtcdClient, find_leader
from bench.etcd.errors import EtcdClusterError, EtcdRequestError
from bench.etcd.install import find_etcd
from tests.ports import free_ports

__all__ = ["EtcdCluster", "Member"]

MAX_TXN_OPS = 4096
MAX_REQUEST_BYTES = 8 * 1024 * 1024
CLUSTER_TOKEN = "shardkv-bench-etcd"
HEALTH_KEY = b"bench/health"
LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class Member:
    """One etcd member's name, ports and files."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path

    @property
    def endpoint(self) -> str:
        """The gRPC target of this member's client port."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError as exc:
            return f"(no log: {exc})"


def _listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class EtcdCluster:
    """``members`` etcd processes on 127.0.0.1 forming one new cluster."""

    def __init__(
        self,
        data_dir: Path,
        members: int = 3,
        *,
        base_port: int | None = None,
        max_txn_ops: int = MAX_TXN_OPS,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        ports = (
            free_ports(2 * members)
            if base_port is None
            else list(range(base_port, base_port + 2 * members))
        )
        self.members = [
            Member(
                name=f"etcd{index + 1}",
                client_port=ports[2 * index],
                peer_port=ports[2 * index + 1],
                data_dir=data_dir / f"etcd{index + 1}",
                log_path=data_dir / f"etcd{index + 1}.log",
            )
            for index in range(members)
        ]
        self.data_dir = data_dir
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._running = False

    @property
    def endpoints(self) -> list[str]:
        """Every member's gRPC target; only while the cluster runs."""
        if not self._running:
            raise EtcdClusterError("the etcd cluster is not running")
        return [member.endpoint for member in self.members]

    async def leader_endpoint(self) -> str:
        """The current leader's gRPC target."""
        return await find_leader(self.endpoints)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every member and wait until all serve; stops them again on failure."""
        if self._processes:
            raise EtcdClusterError("this etcd cluster was already started")
        etcd = find_etcd()
        for member in self.members:
            if member.data_dir.exists() and any(member.data_dir.iterdir()):
                raise EtcdClusterError(f"{member.data_dir} is not empty: pass a fresh data_dir")
            # Another server on these ports would answer the health check for us.
            for port in (member.client_port, member.peer_port):
                if _listening(port):
                    raise EtcdClusterError(f"127.0.0.1:{port} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The cluster's settings come from flags alone, not from ETCD_* variables.
        environment = {
            name: value for name, value in os.environ.items() if not name.startswith("ETCD_")
        }
        try:
            for member in self.members:
                log = open(member.log_path, "wb")  # noqa: SIM115 - closed in stop()
                self._logs.append(log)
                self._processes.append(
                    subprocess.Popen(
                        [str(etcd), *self._flags(member)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=environment,
                    )
                )
            self._running = True
            await self._wait_healthy()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """SIGTERM each member in turn, killing it after ``stop_timeout``; idempotent.

        One at a time, because a leader that gets SIGTERM first hands its
        leadership to a connected follower and waits for that to finish:
        stopping all at once leaves it waiting out the transfer's timeout
        (7 s) for a follower that is gone. In turn, a leader either hands over
        to a live follower or, with no follower left, exits at once.
        """
        self._running = False
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def _flags(self, member: Member) -> list[str]:
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={CLUSTER_TOKEN}",
            f"--max-txn-ops={self.max_txn_ops}",
            f"--max-request-bytes={self.max_request_bytes}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        waiting = list(self.members)
        while waiting:
            for member, process in zip(self.members, self._processes, strict=True):
                if process.poll() is not None:
                    raise EtcdClusterError(
                        f"etcd member {member.name} exited with {process.returncode}:\n"
                        f"{member.log_tail()}"
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tails = "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in waiting)
                raise EtcdClusterError(
                    f"etcd members {[m.name for m in waiting]} not serving after "
                    f"{self.start_timeout:.0f}s:\n{tails}"
                )
            for member in list(waiting):
                async with EtcdClient(member.endpoint, timeout=min(1.0, remaining)) as client:
                    try:
                        await client.get(HEALTH_KEY)
                    except EtcdRequestError:
                        continue
                waiting.remove(member)
            if waiting:
                await asyncio.sleep(0.1)
