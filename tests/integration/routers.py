"""Router processes beside a test ``Cluster``: started, killed and restarted.

``RouterProcess`` runs ``python -m router.server`` with ``--nodes`` naming
the cluster's nodes, logs under the cluster's root, and waits until the
router answers ``ClusterStatus`` with every group led, so tests start from a
working front door. ``env`` adds to the router's environment, e.g.
``{"SHARDKV_FAILPOINTS": "txn.after_record=exit"}`` (``shardkv.failpoints``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest

from shardkv.v1 import router_pb2, router_pb2_grpc
from tests.integration.conftest import READY_TIMEOUT, STOP_TIMEOUT, Cluster, clean_environment
from tests.ports import free_ports

__all__ = ["RouterProcess", "wait_ready"]


class RouterProcess:
    def __init__(self, cluster: Cluster, name: str, env: Mapping[str, str] | None = None) -> None:
        self.cluster = cluster
        self.name = name
        self.env = dict(env or {})
        (port,) = free_ports(1)
        self.address = f"127.0.0.1:{port}"
        self.log_path: Path = cluster.root / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    def start(self, wait: bool = True) -> None:
        assert self.process is None, f"{self.name} is already running"
        nodes = ",".join(self.cluster.addresses[node] for node in sorted(self.cluster.addresses))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "router.server",
                    "--listen",
                    self.address,
                    "--nodes",
                    nodes,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**clean_environment(), **self.env},
                cwd=self.cluster.root,
            )
        if wait:
            wait_ready(self.stub(), self.cluster.group_ids)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(STOP_TIMEOUT)
        self.process = None
        self._close_channel()

    def stop(self) -> int:
        assert self.process is not None
        self.process.terminate()
        status = self.process.wait(STOP_TIMEOUT)
        self.process = None
        self._close_channel()
        return status

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit status of a router that ends by itself (a failpoint's ``exit``)."""
        assert self.process is not None
        status = self.process.wait(timeout)
        self.process = None
        self._close_channel()
        return status

    def stub(self) -> router_pb2_grpc.RouterStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return router_pb2_grpc.RouterStub(self._channel)  # type: ignore[no-untyped-call]

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self.process = None
        self._close_channel()


def wait_ready(
    stub: router_pb2_grpc.RouterStub, group_ids: tuple[int, ...], timeout: float = READY_TIMEOUT
) -> router_pb2.ClusterStatusResponse:
    """Until the router answers ClusterStatus with a leader for every group on the ring."""
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while time.monotonic() < deadline:
        try:
            status: router_pb2.ClusterStatusResponse = stub.ClusterStatus(
                router_pb2.ClusterStatusRequest(), timeout=2
            )
        except grpc.RpcError as error:
            problem = f"{error.code().name}: {error.details()}"
            time.sleep(0.1)
            continue
        led = {
            group.group_id
            for node in status.nodes
            for group in node.status.groups
            if group.role == "leader" and group.epoch == status.map.ring.epoch
        }
        if set(group_ids) <= led:
            return status
        problem = f"groups led at the ring's epoch: {sorted(led)}"
        time.sleep(0.1)
    pytest.fail(f"the router did not become ready in {timeout} s: {problem}")
