"""Regenerates ``bench/etcd/etcdpb`` from the protos in ``bench/proto/etcd``.

    .venv/bin/python -m bench.etcd.generate_proto      (from the repository root)

runs, for kv.proto and then rpc.proto (only rpc.proto has services, so only it
gets a ``_grpc`` module)::

    python -m grpc_tools.protoc -Ibench/etcd/etcdpb=bench/proto/etcd \\
        --python_out=. --pyi_out=. [--grpc_python_out=.] bench/proto/etcd/NAME.proto

The ``-I VIRTUAL=DISK`` mapping makes each proto's import path
``bench/etcd/etcdpb/NAME.proto``, so the generated code imports
``bench.etcd.etcdpb`` and resolves under ``python -m bench.…`` from the root.

Then it puts ``# mypy: ignore-errors`` at the top of each generated file mypy
reads (the ``.pyi`` stubs and the ``_grpc`` module): they are never edited by
hand, and protoc's output is not written for ``mypy --strict``. Their types
still reach the code that uses them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["generate"]

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = Path("bench/proto/etcd")
OUT_PACKAGE = Path("bench/etcd/etcdpb")
MYPY_HEADER = "# mypy: ignore-errors\n"


def _protoc(proto: Path, *, services: bool) -> None:
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{OUT_PACKAGE.as_posix()}={PROTO_DIR.as_posix()}",
        "--python_out=.",
        "--pyi_out=.",
    ]
    if services:
        command.append("--grpc_python_out=.")
    command.append(proto.as_posix())
    subprocess.run(command, cwd=ROOT, check=True)


def _stamp(path: Path) -> None:
    text = path.read_text()
    if not text.startswith(MYPY_HEADER):
        path.write_text(MYPY_HEADER + text)


def generate() -> None:
    """Run protoc on both protos and stamp the outputs mypy reads."""
    _protoc(PROTO_DIR / "kv.proto", services=False)
    _protoc(PROTO_DIR / "rpc.proto", services=True)
    out = ROOT / OUT_PACKAGE
    for name in ("kv_pb2.pyi", "rpc_pb2.pyi", "rpc_pb2_grpc.py"):
        _stamp(out / name)


if __name__ == "__main__":
    generate()
