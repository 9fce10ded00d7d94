"""The committed generated code in shardkv/v1 and shardkv/etcd is what proto/
generates today.

Runs protoc exactly as ``make proto`` does, into a temporary directory, and
compares byte for byte, so a .proto edit without ``make proto`` (or a
grpcio-tools bump without it) fails here instead of on the wire.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
# Our own protocol, and etcd's v3 API (wire-compatible copy): `make proto` builds both.
PROTO_PACKAGES = ("shardkv/v1", "shardkv/etcd")
PROTO_FILES = sorted(path for pkg in PROTO_PACKAGES for path in PROTO_ROOT.glob(f"{pkg}/*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *map(str, PROTO_FILES),
        # As `python -m grpc_tools.protoc` adds it: the well-known types.
        f"-I{resources.files('grpc_tools') / '_proto'}",
    ]
    assert protoc.main(args) == 0, "protoc failed on proto/: fix the .proto files"
    return out


def generated_names(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for pkg in PROTO_PACKAGES
        for path in root.glob(f"{pkg}/*")
        if path.name.endswith(GENERATED_SUFFIXES)
    )


@pytest.mark.parametrize("pkg", PROTO_PACKAGES)
def test_there_are_protos(pkg: str) -> None:
    assert list(PROTO_ROOT.glob(f"{pkg}/*.proto")), f"no .proto files found under proto/{pkg}"


def test_generated_file_set_matches(fresh: Path) -> None:
    assert generated_names(REPO) == generated_names(fresh), (
        "shardkv/v1 and shardkv/etcd do not hold exactly the files proto/ generates: "
        "run `make proto` (and delete generated files of removed .proto files)"
    )


@pytest.mark.parametrize("name", generated_names(REPO))
def test_generated_file_is_fresh(fresh: Path, name: str) -> None:
    regenerated = fresh / name
    assert regenerated.exists(), f"{name} is not generated from proto/ any more: run `make proto`"
    assert (REPO / name).read_bytes() == regenerated.read_bytes(), (
        f"{name} is stale: run `make proto`"
    )
