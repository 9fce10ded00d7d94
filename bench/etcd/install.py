"""Finds the etcd server binary, and installs Debian's ``etcd-server`` when it is missing.

    .venv/bin/python -m bench.etcd.install

does nothing when ``etcd`` is on PATH or at /usr/bin/etcd; otherwise, as root
with apt-get available, it runs ``apt-get update`` and
``apt-get install -y etcd-server`` (etcd 3.4 on Debian bookworm). Elsewhere it
exits non-zero and says what to run.

On a machine that boots with systemd the package also starts a system etcd on
127.0.0.1:2379; the benchmark's own cluster picks free ports, so the two do
not clash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.etcd.errors import EtcdNotInstalled

__all__ = ["ensure_etcd", "find_etcd"]

DEBIAN_PATH = Path("/usr/bin/etcd")
INSTALL_HINT = (
    "etcd is not installed: run `.venv/bin/python -m bench.etcd.install` as root, "
    "or `sudo apt-get install -y etcd-server`"
)


def find_etcd() -> Path:
    """The etcd binary on PATH, else Debian's /usr/bin/etcd; raises EtcdNotInstalled."""
    found = shutil.which("etcd")
    if found is not None:
        return Path(found)
    if DEBIAN_PATH.exists():
        return DEBIAN_PATH
    raise EtcdNotInstalled(INSTALL_HINT)


def ensure_etcd() -> Path:
    """Return the etcd binary, installing ``etcd-server`` with apt-get only if it is missing."""
    try:
        return find_etcd()
    except EtcdNotInstalled:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # A fresh machine may have no package lists yet: install would find nothing.
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "etcd-server"],
        check=True,
        env=environment,
    )
    return find_etcd()


def main() -> int:
    try:
        etcd = ensure_etcd()
    except (EtcdNotInstalled, subprocess.CalledProcessError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"etcd: {etcd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
