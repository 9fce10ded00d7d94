"""Debian's etcdctl, run against a router: the helper and fixtures the etcd API tests share."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from tests.integration.conftest import Cluster
from tests.integration.routers import RouterProcess

__all__ = ["ETCDCTL", "TIMEOUT", "Etcdctl", "etcdctl", "etcdctl_path"]

ETCDCTL = shutil.which("etcdctl")
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def etcdctl_path() -> str:
    if ETCDCTL is None:
        pytest.skip("etcdctl is not installed: make test installs Debian's etcd-client as root")
    return ETCDCTL


class Etcdctl:
    def __init__(self, path: str, endpoint: str) -> None:
        self.path = path
        self.endpoint = endpoint

    def run(self, *arguments: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            [self.path, f"--endpoints={self.endpoint}", "--command-timeout=20s", *arguments],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"etcdctl {' '.join(arguments)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done.stdout if check else done.stdout + done.stderr

    def json(self, *arguments: str) -> Any:
        return json.loads(self.run("-w", "json", *arguments))


@pytest.fixture
def etcdctl(etcdctl_path: str, routed: tuple[Cluster, RouterProcess]) -> Etcdctl:
    return Etcdctl(etcdctl_path, routed[1].address)
