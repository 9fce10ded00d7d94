"""Checks a node makes on its local resources before it starts: data directory and port.

The data directory carries an ``IDENTITY`` file (JSON)::

    {"format_version": 1, "cluster_id": "shardkv", "node_id": 1, "bootstrapped": false}

written before anything else goes in the directory, so that a node never
opens the data of another cluster or another node (restarting node 2 on
node 1's directory would make it vote twice in each group). The promises:

1. ``prepare_data_dir`` creates a missing directory and claims an empty one
   by writing ``IDENTITY`` atomically (temporary file, fsync, rename, fsync of
   the directory). It refuses, with ``ConfigError``, a directory of another
   cluster or node, a non-empty directory without ``IDENTITY`` (not a shardkv
   data dir: most likely a wrong path), and an ``IDENTITY`` it cannot read.
2. ``DataDirState.fresh`` says whether the node must bootstrap its groups
   from the initial cluster (True) or restart from what its storage holds.
   A directory stays fresh until ``mark_bootstrapped`` records that the
   initial Raft state is durable: a crash in between bootstraps again on the
   next start instead of starting with no state at all. So bootstrapping must
   be repeatable: write the initial state of every group in one batch.
3. Two processes on one directory are stopped by RocksDB's own ``LOCK``.

``check_port_free`` binds the listen address the way gRPC does (SO_REUSEADDR,
and not SO_REUSEPORT, which gRPC enables by default on Linux: the node must
create its server with ``("grpc.so_reuseport", 0)`` or a second node on the
same port would start and share the traffic), then closes it at once. The
check and the server's own bind are not atomic; the check is there for its
clear message, and a failure of the real bind remains the backstop.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from shardkv.node.config import ConfigError, NodeConfig, parse_address

__all__ = [
    "IDENTITY_FILE",
    "IDENTITY_FORMAT_VERSION",
    "DataDirIdentity",
    "DataDirState",
    "check_port_free",
    "mark_bootstrapped",
    "prepare_data_dir",
]

IDENTITY_FILE = "IDENTITY"
IDENTITY_FORMAT_VERSION = 1
_TEMPORARY_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class DataDirIdentity:
    """Whose data this is; the content of ``IDENTITY``."""

    cluster_id: str
    node_id: int
    bootstrapped: bool = False
    format_version: int = IDENTITY_FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class DataDirState:
    path: Path
    identity: DataDirIdentity

    @property
    def fresh(self) -> bool:
        """True: bootstrap the groups from the initial cluster; False: restart from storage."""
        return not self.identity.bootstrapped


def prepare_data_dir(config: NodeConfig) -> DataDirState:
    """Create or check ``config.data_dir`` and claim it for this cluster and node."""
    path = config.data_dir
    where = str(config.origin("data_dir"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(
            f"data dir {path} (from {where}) is a file, not a directory; use another --data-dir",
            setting="data_dir",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot create data dir {path} (from {where}): {exc.strerror}; "
            "use another --data-dir or fix its permissions",
            setting="data_dir",
        ) from exc
    identity_path = path / IDENTITY_FILE
    if identity_path.exists():
        identity = _read_identity(identity_path)
        if (identity.cluster_id, identity.node_id) != (config.cluster_id, config.node_id):
            raise ConfigError(
                f"data dir {path} belongs to cluster {identity.cluster_id} node "
                f"{identity.node_id}, not to cluster {config.cluster_id} node {config.node_id}; "
                "use another --data-dir or remove it",
                setting="data_dir",
            )
        return DataDirState(path, identity)
    temporary = identity_path.with_name(IDENTITY_FILE + _TEMPORARY_SUFFIX)
    # A temporary file is what a crash while claiming the directory leaves.
    strangers = sorted(entry.name for entry in path.iterdir() if entry != temporary)
    if strangers:
        raise ConfigError(
            f"data dir {path} (from {where}) is not empty ({', '.join(strangers[:3])}"
            f"{', ...' if len(strangers) > 3 else ''}) and has no {IDENTITY_FILE} file, so it "
            "is not a shardkv data dir; use a new or empty --data-dir",
            setting="data_dir",
        )
    identity = DataDirIdentity(cluster_id=config.cluster_id, node_id=config.node_id)
    _write_identity(identity_path, identity)
    return DataDirState(path, identity)


def mark_bootstrapped(state: DataDirState) -> DataDirState:
    """Record that the initial Raft state is durable: from now on the node restarts."""
    if not state.fresh:
        return state
    identity = replace(state.identity, bootstrapped=True)
    _write_identity(state.path / IDENTITY_FILE, identity)
    return DataDirState(state.path, identity)


def _read_identity(path: Path) -> DataDirIdentity:
    def unreadable(reason: str) -> ConfigError:
        return ConfigError(
            f"cannot use {path}: {reason}; it was not written by shardkv or is damaged: "
            "restore it from a backup, or remove the data dir to start this node afresh",
            setting="data_dir",
        )

    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise unreadable(f"cannot read it ({exc.strerror})") from exc
    except ValueError as exc:
        raise unreadable(f"it is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise unreadable("it is not a JSON object")
    version = document.get("format_version")
    if isinstance(version, int) and version > IDENTITY_FORMAT_VERSION:
        raise ConfigError(
            f"data dir {path.parent} has format version {version}, newer than this shardkv "
            f"knows ({IDENTITY_FORMAT_VERSION}); run a newer shardkv-node on it",
            setting="data_dir",
        )
    if version != IDENTITY_FORMAT_VERSION:
        raise unreadable(f"format_version is {version!r}")
    cluster_id = document.get("cluster_id")
    node_id = document.get("node_id")
    bootstrapped = document.get("bootstrapped")
    if not isinstance(cluster_id, str) or not cluster_id:
        raise unreadable("cluster_id is missing")
    if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
        raise unreadable("node_id is missing")
    if not isinstance(bootstrapped, bool):
        raise unreadable("bootstrapped is missing")
    return DataDirIdentity(cluster_id, node_id, bootstrapped, version)


def _write_identity(path: Path, identity: DataDirIdentity) -> None:
    document = {
        "format_version": identity.format_version,
        "cluster_id": identity.cluster_id,
        "node_id": identity.node_id,
        "bootstrapped": identity.bootstrapped,
    }
    temporary = path.with_name(path.name + _TEMPORARY_SUFFIX)
    try:
        with temporary.open("wb") as file:
            file.write(json.dumps(document, indent=2).encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {exc.strerror}; check the data dir's permissions and free space",
            setting="data_dir",
        ) from exc


def check_port_free(address: str) -> None:
    """Raise ``ConfigError`` unless this process could bind ``address`` (host:port) now."""
    try:
        host, port = parse_address(address)
    except ValueError as exc:
        raise ConfigError(
            f"listen address {address!r}: {exc}; fix --listen", setting="listen"
        ) from None
    try:
        candidates = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot resolve the host of listen address {address}: {exc.strerror}; "
            "pick another --listen",
            setting="listen",
        ) from exc
    # gRPC binds every address the host resolves to; so does the check. A
    # family this host lacks (IPv6 turned off) is skipped, as gRPC skips it.
    for family, kind, protocol, _, socket_address in candidates:
        try:
            probe = socket.socket(family, kind, protocol)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                continue
            raise _bind_error(address, exc) from exc
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(socket_address)
            except OSError as exc:
                raise _bind_error(address, exc) from exc


def _bind_error(address: str, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        problem = "is in use by another process"
    elif exc.errno == errno.EADDRNOTAVAIL:
        problem = "is not an address of this host"
    elif exc.errno == errno.EACCES:
        problem = "needs privileges this process lacks (ports below 1024 do)"
    else:
        problem = f"cannot be bound: {exc.strerror}"
    return ConfigError(f"address {address} {problem}; pick another --listen", setting="listen")
