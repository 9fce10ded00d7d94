"""The layering rules of docs/design.md, checked on the source.

Every import statement is read with ``ast`` (also those inside functions and
under ``TYPE_CHECKING``), so nothing is imported to check it:

1. ``shardkv/raft`` imports nothing of the project but ``shardkv.raft``, and of
   the outside world only the standard library, without the modules that
   bring I/O, threads or the clock (the core is a pure, deterministic state
   machine: time comes as ticks, randomness from a seeded ``random.Random``).
2. Nothing under ``shardkv/`` imports ``router``.

The checker itself is tested on small synthetic trees, so these rules cannot
pass vacuously.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = frozenset({"shardkv", "router"})

# Standard-library modules the Raft core must not use: I/O, sockets, threads,
# processes, the wall clock, and pickling (messages are typed, not pickled).
FORBIDDEN_IN_RAFT = frozenset(
    {
        "_thread",
        "asyncio",
        "concurrent",
        "datetime",
        "marshal",
        "multiprocessing",
        "os",
        "pathlib",
        "pickle",
        "select",
        "selectors",
        "shelve",
        "shutil",
        "signal",
        "socket",
        "socketserver",
        "sqlite3",
        "ssl",
        "subprocess",
        "tempfile",
        "threading",
        "time",
    }
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """Yield (line, absolute dotted name) for everything ``path`` imports.

    ``from a import b`` yields ``a.b``, since ``b`` may be a submodule.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def python_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.py"))


def raft_violations(root: Path) -> list[str]:
    violations = []
    for path in python_files(root / "shardkv" / "raft"):
        for line, imported in imports(path, root):
            top = imported.partition(".")[0]
            where = f"{path.relative_to(root)}:{line} imports {imported}"
            if top in PROJECT_PACKAGES:
                if not (imported == "shardkv.raft" or imported.startswith("shardkv.raft.")):
                    violations.append(f"{where}: the Raft core imports nothing of the project")
            elif top == "__future__":
                continue
            elif top not in sys.stdlib_module_names:
                violations.append(f"{where}: the Raft core uses the standard library only")
            elif top in FORBIDDEN_IN_RAFT:
                violations.append(f"{where}: the Raft core has no I/O, threads or clock")
    return violations


def router_violations(root: Path) -> list[str]:
    return [
        f"{path.relative_to(root)}:{line} imports {imported}: shardkv never imports router"
        for path in python_files(root / "shardkv")
        for line, imported in imports(path, root)
        if imported.partition(".")[0] == "router"
    ]


# The rules, on the real tree


def test_raft_core_imports_only_itself_and_pure_stdlib() -> None:
    assert python_files(REPO / "shardkv" / "raft"), "no modules under shardkv/raft"
    violations = raft_violations(REPO)
    assert not violations, "\n".join(violations)


def test_shardkv_never_imports_router() -> None:
    violations = router_violations(REPO)
    assert not violations, "\n".join(violations)


# The checker, on synthetic trees


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


@pytest.mark.parametrize(
    "source",
    [
        "import grpc\n",
        "from google.protobuf import message\n",
        "import rocksdict\n",
        "import asyncio\n",
        "import socket\n",
        "import threading\n",
        "from time import monotonic\n",
        "import os.path\n",
        "from shardkv.v1 import raft_pb2\n",
        "from shardkv import storage\n",
        "from router import ring\n",
        "from .. import node\n",
        "from ..fsm import machine\n",
        "def later():\n    import socket\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpc\n",
    ],
)
def test_checker_catches_a_bad_raft_import(tmp_path: Path, source: str) -> None:
    root = write_tree(tmp_path, {"shardkv/raft/__init__.py": "", "shardkv/raft/bad.py": source})
    assert len(raft_violations(root)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations\n",
        "import random\nimport struct\nimport enum\n",
        "from collections.abc import Sequence\nfrom dataclasses import dataclass\n",
        "from shardkv.raft.types import Entry\n",
        "from shardkv import raft\n",
        "from . import types\n",
        "from .types import Entry\n",
    ],
)
def test_checker_allows_a_good_raft_import(tmp_path: Path, source: str) -> None:
    root = write_tree(tmp_path, {"shardkv/raft/__init__.py": "", "shardkv/raft/good.py": source})
    assert raft_violations(root) == []


def test_checker_resolves_relative_imports_in_a_package_init(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"shardkv/raft/__init__.py": "from .. import node\n"})
    assert len(raft_violations(root)) == 1


def test_checker_catches_router_imported_anywhere_in_shardkv(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "shardkv/node/transport.py": "import router.client\n",
            "shardkv/fsm/deep/machine.py": "def f():\n    from router import ring\n",
            "shardkv/storage/keys.py": "from shardkv.raft import types\n",
        },
    )
    assert len(router_violations(root)) == 2
