"""``shardkv up``: a local cluster of node processes and one router, in the foreground.

In the manner of TiDB's playground, ``run_up`` starts every node
(``python -m shardkv.node.main``) and one router (``python -m router.server``)
as child processes and supervises them:

1. The layout (nodes, data groups, port) comes from the flags on the first
   run and is stored in ``DATA/cluster.json``; a later run on the same data
   directory reuses it. A flag that disagrees with the stored layout is
   refused (exit 2) with a message naming both values: the nodes have
   bootstrapped their addresses and groups, so silently changing them would
   start a cluster that cannot form.
2. The ports ``port`` (router) and ``port+1 .. port+N`` (node i on
   ``127.0.0.1:port+i``) must be free, or nothing is started (exit 2).
3. Node i keeps its data in ``DATA/node-i``; each child writes its output to
   ``DATA/logs/<name>.log`` (appended, one header line per start). Nodes get
   ``--groups-count G --replication min(3, N)``, so they lay out the meta
   group and the data groups by the nodes' own round-robin rule
   (docs/node-config.md). Children get the launcher's environment without
   its ``SHARDKV_*`` variables, so that the layout is only what the flags say,
   except ``SHARDKV_LOG_LEVEL`` and ``SHARDKV_LOG_FORMAT``, which every child
   reads: ``SHARDKV_LOG_FORMAT=json shardkv up`` logs JSON everywhere.
4. One line per child is printed, then ``ready: ...`` hints once the router
   answers ClusterStatus with a leader for every group (within 30 s), or a
   note saying what is missing.
5. A child that exits is a crash of that one process: it is reported on
   stderr and not restarted; the others keep running. When every child has
   exited, ``up`` exits with 1.
6. With ``tls`` (``up --tls``), the first such run writes a dev CA and
   certificates into ``DATA/tls`` (``router.certs``), and every node and the
   router run with theirs: every connection is mutual TLS. The ``ready``
   hints name the client's certificate, for the CLI's ``--tls-*`` flags.
7. SIGINT (Ctrl-C) or SIGTERM stops every child: SIGTERM, up to 10 s to
   exit, then SIGKILL; ``up`` then exits with 0. Children run in their own
   session, so a Ctrl-C at the terminal reaches only the launcher, which
   stops them in order; on Linux (with util-linux's ``setpriv``, which
   Debian and most distributions have) they also get SIGTERM if the
   launcher dies, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import router
from router.client import AsyncClient
from router.errors import ClientError
from shardkv.tls import TlsFiles
from shardkv.v1 import router_pb2

if TYPE_CHECKING:
    from router.certs import DevCerts

__all__ = [
    "DEFAULT_GROUPS",
    "DEFAULT_NODES",
    "DEFAULT_PORT",
    "LAYOUT_FILE",
    "ChildSpec",
    "LaunchError",
    "Layout",
    "Supervisor",
    "check_ports_free",
    "child_specs",
    "resolve_layout",
    "run_up",
    "supervise",
    "wait_ready",
    "write_layout",
]

DEFAULT_NODES = 3
DEFAULT_GROUPS = 4
DEFAULT_PORT = 7000
LAYOUT_FILE = "cluster.json"
_LAYOUT_FORMAT = 1
MAX_NODES = 99
STOP_GRACE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 30.0
_READY_POLL_SECONDS = 0.25


class LaunchError(Exception):
    """``up`` cannot start as asked; the message says what to change (exit status 2)."""


@dataclass(frozen=True)
class Layout:
    nodes: int
    groups: int
    port: int

    @property
    def replication(self) -> int:
        return min(3, self.nodes)

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node_address(self, node_id: int) -> str:
        return f"127.0.0.1:{self.port + node_id}"

    @property
    def ports(self) -> range:
        return range(self.port, self.port + self.nodes + 1)

    def flags(self) -> str:
        return f"--nodes {self.nodes} --groups {self.groups} --port {self.port}"

    def check(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise LaunchError(f"--nodes {self.nodes}: give 1 to {MAX_NODES} nodes")
        if self.groups < 1:
            raise LaunchError(f"--groups {self.groups}: give 1 or more data groups")
        if not 1 <= self.port <= 65535 - self.nodes:
            raise LaunchError(
                f"--port {self.port}: the router takes it and node i takes port+i, "
                f"so it must be 1 to {65535 - self.nodes}"
            )


def _read_layout(path: Path) -> Layout:
    try:
        stored = json.loads(path.read_text())
        if stored.get("format") != _LAYOUT_FORMAT:
            raise ValueError(f"format {stored.get('format')!r} is not {_LAYOUT_FORMAT}")
        layout = Layout(nodes=stored["nodes"], groups=stored["groups"], port=stored["port"])
        if not all(isinstance(value, int) for value in (layout.nodes, layout.groups, layout.port)):
            raise ValueError("nodes, groups and port must be whole numbers")
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise LaunchError(
            f"{path} is unreadable ({exc}); fix or remove it, or use another --data-dir"
        ) from exc
    return layout


def resolve_layout(
    data_dir: Path, nodes: int | None, groups: int | None, port: int | None
) -> tuple[Layout, bool]:
    """The layout to run and whether it is new (not yet in ``data_dir``).

    Flags left out (None) take the stored value, or the default on a first run.
    """
    path = data_dir / LAYOUT_FILE
    if not path.exists():
        layout = Layout(
            nodes=DEFAULT_NODES if nodes is None else nodes,
            groups=DEFAULT_GROUPS if groups is None else groups,
            port=DEFAULT_PORT if port is None else port,
        )
        layout.check()
        return layout, True
    stored = _read_layout(path)
    asked = {"nodes": nodes, "groups": groups, "port": port}
    conflicts = [
        f"--{name} {value} (stored: {getattr(stored, name)})"
        for name, value in asked.items()
        if value is not None and value != getattr(stored, name)
    ]
    if conflicts:
        raise LaunchError(
            f"{data_dir} holds a cluster made with {stored.flags()}, and its nodes keep that "
            f"layout; these flags disagree: {', '.join(conflicts)}. Leave them out to start "
            "it again, or pick another --data-dir for a new cluster"
        )
    return stored, False


def write_layout(data_dir: Path, layout: Layout) -> None:
    record = {
        "format": _LAYOUT_FORMAT,
        "nodes": layout.nodes,
        "groups": layout.groups,
        "port": layout.port,
    }
    path = data_dir / LAYOUT_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    temporary.replace(path)


def check_ports_free(ports: Sequence[int]) -> None:
    """Raise ``LaunchError`` naming every port of ``ports`` on 127.0.0.1 another process holds."""
    busy: list[int] = []
    for port in ports:
        with socket.socket() as probe:
            # As the nodes' own check does: a port in TIME_WAIT after a stop is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    if busy:
        raise LaunchError(
            f"port{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} on 127.0.0.1 "
            f"{'are' if len(busy) > 1 else 'is'} in use; shardkv up needs "
            f"{ports[0]}-{ports[-1]}: stop what holds them or pick another --port "
            "(with a new --data-dir)"
        )


# -- the children ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    log_path: Path


def _tls_flags(files: TlsFiles | None) -> tuple[str, ...]:
    if files is None:
        return ()
    return (
        "--tls-ca-file",
        str(files.ca),
        "--tls-cert-file",
        str(files.cert),
        "--tls-key-file",
        str(files.key),
    )


def child_specs(layout: Layout, data_dir: Path, certs: DevCerts | None = None) -> list[ChildSpec]:
    """The node processes, then the router, as ``up`` starts them (with TLS given ``certs``)."""
    logs = data_dir / "logs"
    node_ids = range(1, layout.nodes + 1)
    initial_cluster = ",".join(f"{i}={layout.node_address(i)}" for i in node_ids)
    specs = [
        ChildSpec(
            name=f"node-{i}",
            argv=(
                sys.executable,
                "-m",
                "shardkv.node.main",
                "--node-id",
                str(i),
                "--listen",
                layout.node_address(i),
                "--data-dir",
                str(data_dir / f"node-{i}"),
                "--initial-cluster",
                initial_cluster,
                "--groups-count",
                str(layout.groups),
                "--replication",
                str(layout.replication),
                *_tls_flags(certs.node(i) if certs is not None else None),
            ),
            log_path=logs / f"node-{i}.log",
        )
        for i in node_ids
    ]
    specs.append(
        ChildSpec(
            name="router",
            argv=(
                sys.executable,
                "-m",
                "router.server",
                "--listen",
                layout.router_address,
                "--nodes",
                ",".join(layout.node_address(i) for i in node_ids),
                *_tls_flags(certs.router if certs is not None else None),
            ),
            log_path=logs / "router.log",
        )
    )
    return specs


# How the children log is the user's to choose; it has nothing to do with the layout.
_PASSED_TO_CHILDREN = frozenset({"SHARDKV_LOG_LEVEL", "SHARDKV_LOG_FORMAT"})


def _child_environment() -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SHARDKV_") or name in _PASSED_TO_CHILDREN
    }
    # So that ``-m shardkv.node.main`` and ``-m router.server`` import this very
    # code, installed or not.
    source_root = str(Path(router.__file__).resolve().parent.parent)
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = source_root if not path else f"{source_root}{os.pathsep}{path}"
    return environment


# On Linux a child gets SIGTERM when the launcher dies (even by SIGKILL):
# util-linux's setpriv sets the parent-death signal and execs the command.
# Not a preexec_fn: Python code between fork and exec is unsafe in a process
# with threads (gRPC's), and one aborted a child (SIGABRT) under the full
# test suite. Without setpriv, children do not die with the launcher.
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


def _dying_with_parent(argv: Sequence[str]) -> tuple[str, ...]:
    """``argv`` run so that it gets SIGTERM when the launcher dies, where that can be had.

    setpriv sets the signal before it runs ``argv``: a launcher killed in
    between (within its first moments) leaves that child running."""
    if _SETPRIV is None:
        return tuple(argv)
    return (_SETPRIV, "--pdeathsig", "TERM", "--", *argv)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Child:
    def __init__(self, spec: ChildSpec, process: asyncio.subprocess.Process) -> None:
        self.spec = spec
        self.process = process

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class Supervisor:
    """Starts children, reports the ones that exit, and stops them all on request.

    ``out`` gets the lines a user reads (one per child, ready hints); ``err``
    gets crashes and shutdown notes.
    """

    def __init__(self, out: IO[str], err: IO[str], grace: float = STOP_GRACE_SECONDS) -> None:
        self._out = out
        self._err = err
        self._grace = grace
        self._children: list[_Child] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.all_exited = asyncio.Event()

    def _say(self, stream: IO[str], text: str) -> None:
        print(text, file=stream, flush=True)

    async def start(self, spec: ChildSpec) -> None:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with spec.log_path.open("a") as log:
            log.write(
                f"--- shardkv up: {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(spec.argv)}\n"
            )
            log.flush()
            process = await asyncio.create_subprocess_exec(
                *_dying_with_parent(spec.argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=_child_environment(),
                start_new_session=True,
            )
        child = _Child(spec, process)
        self._children.append(child)
        self._say(self._out, f"{spec.name}: pid {process.pid}, log {spec.log_path}")
        self._watchers.append(asyncio.get_running_loop().create_task(self._watch(child)))

    async def _watch(self, child: _Child) -> None:
        returncode = await child.process.wait()
        if not self._stopping:
            others = sum(1 for other in self._children if other.running)
            self._say(
                self._err,
                f"shardkv up: {child.spec.name} (pid {child.process.pid}) "
                f"{_describe_exit(returncode)}; not restarting it, {others} other "
                f"process{'es' if others != 1 else ''} keep running; see {child.spec.log_path}",
            )
        if not any(other.running for other in self._children):
            self.all_exited.set()

    def is_running(self, name: str) -> bool:
        return any(child.spec.name == name and child.running for child in self._children)

    async def stop(self) -> None:
        """SIGTERM to every running child, ``grace`` seconds to exit, then SIGKILL."""
        self._stopping = True
        running = [child for child in self._children if child.running]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
        waits = {child: asyncio.ensure_future(child.process.wait()) for child in running}
        if waits:
            await asyncio.wait(waits.values(), timeout=self._grace)
        for child, wait in waits.items():
            if not wait.done():
                self._say(
                    self._err,
                    f"shardkv up: {child.spec.name} did not stop within {self._grace:g} s: "
                    "killing it",
                )
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await wait
        await asyncio.gather(*self._watchers)


async def wait_ready(
    router_address: str,
    router_running: Callable[[], bool],
    *,
    out: IO[str],
    err: IO[str],
    timeout: float = READY_TIMEOUT_SECONDS,
    tls: TlsFiles | None = None,
) -> bool:
    """Poll the router until every group has a leader; print the hints, or what is missing."""
    from router.cli import summarize_status  # the status command's own view of a cluster

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    problem = "the router has not answered"
    async with AsyncClient(router_address, timeout=2.0, tls=tls) as client:
        while loop.time() < deadline:
            if not router_running():
                print(
                    "shardkv up: the router is not running, so the cluster cannot be reached; "
                    "the nodes keep running",
                    file=err,
                    flush=True,
                )
                return False
            try:
                status: router_pb2.ClusterStatusResponse = await client.status()
            except ClientError as exc:
                problem = f"the router answers {exc.code.name}: {exc.details}"
            else:
                summary = summarize_status(status)
                leaderless = [group.group_id for group in summary.groups if group.leader is None]
                if summary.groups and not leaderless:
                    router_flag = " ".join(
                        ["shardkv", "--router", router_address, *_tls_flags(tls)]
                    )
                    print(
                        f"ready: {router_flag} put hello world\n"
                        f"       {router_flag} get hello\n"
                        f"       {router_flag} status",
                        file=out,
                        flush=True,
                    )
                    return True
                problem = (
                    f"groups without a leader: {', '.join(map(str, leaderless))}"
                    if leaderless
                    else "the router knows no groups yet"
                )
            await asyncio.sleep(_READY_POLL_SECONDS)
    print(
        f"shardkv up: not ready after {timeout:g} s ({problem}); still running, see the logs",
        file=err,
        flush=True,
    )
    return False


async def supervise(
    specs: Sequence[ChildSpec],
    *,
    out: IO[str],
    err: IO[str],
    when_started: Callable[[Supervisor], Coroutine[Any, Any, None]] | None = None,
    grace: float = STOP_GRACE_SECONDS,
) -> int:
    """Run ``specs`` until SIGINT/SIGTERM (0) or until every child has exited (1)."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    supervisor = Supervisor(out, err, grace)
    tasks: list[asyncio.Task[Any]] = []
    try:
        try:
            for spec in specs:
                await supervisor.start(spec)
        except OSError as exc:
            print(f"shardkv up: cannot start a child: {exc}", file=err, flush=True)
            return 1
        if when_started is not None:
            tasks.append(loop.create_task(when_started(supervisor)))
        stop_wait = loop.create_task(stop_requested.wait())
        exited_wait = loop.create_task(supervisor.all_exited.wait())
        tasks += [stop_wait, exited_wait]
        await asyncio.wait((stop_wait, exited_wait), return_when=asyncio.FIRST_COMPLETED)
        if stop_wait.done():
            print("shardkv up: stopping every process", file=err, flush=True)
            return 0
        print("shardkv up: every process has exited", file=err, flush=True)
        return 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await supervisor.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run_up(
    data_dir: Path,
    nodes: int | None,
    groups: int | None,
    port: int | None,
    *,
    tls: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    ready_timeout: float = READY_TIMEOUT_SECONDS,
) -> int:
    """``shardkv up``: exit status 0 after Ctrl-C/SIGTERM, 2 if it cannot start as asked."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    data_dir = data_dir.resolve()
    try:
        layout, new = resolve_layout(data_dir, nodes, groups, port)
        check_ports_free(layout.ports)
        data_dir.mkdir(parents=True, exist_ok=True)
        if new:
            write_layout(data_dir, layout)
        certs = _dev_certs(data_dir, layout) if tls else None
    except (LaunchError, OSError) as exc:
        print(f"shardkv up: {exc}", file=err, flush=True)
        return 2
    print(
        f"shardkv up: {'new' if new else 'existing'} cluster in {data_dir} ({layout.flags()}, "
        f"{layout.replication} replica{'s' if layout.replication > 1 else ''} per group)",
        file=out,
        flush=True,
    )
    if certs is not None:
        client = certs.client
        print(
            f"shardkv up: mutual TLS, certificates in {certs.directory}; for the CLI:\n"
            f"  export SHARDKV_TLS_CA_FILE={client.ca} SHARDKV_TLS_CERT_FILE={client.cert} "
            f"SHARDKV_TLS_KEY_FILE={client.key}",
            file=out,
            flush=True,
        )

    async def when_started(supervisor: Supervisor) -> None:
        await wait_ready(
            layout.router_address,
            lambda: supervisor.is_running("router"),
            out=out,
            err=err,
            timeout=ready_timeout,
            tls=certs.client if certs is not None else None,
        )

    return asyncio.run(
        supervise(child_specs(layout, data_dir, certs), out=out, err=err, when_started=when_started)
    )


def _dev_certs(data_dir: Path, layout: Layout) -> DevCerts:
    """The certificates in ``DATA/tls``, written by the first ``up --tls``."""
    # Imported here: only ``up --tls`` needs the cryptography package.
    from router.certs import DevCerts, write_dev_certs

    directory = data_dir / "tls"
    if not directory.exists():
        return write_dev_certs(directory, layout.nodes)
    certs = DevCerts(directory, layout.nodes)
    missing = [path for path in certs.paths() if not path.exists()]
    if missing:
        raise LaunchError(
            f"{missing[0]} is missing: {directory} holds an incomplete set of certificates; "
            "remove the directory to make new ones"
        )
    return certs
