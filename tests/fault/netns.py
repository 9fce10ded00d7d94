"""A private network of Linux network namespaces, cut and healed with nftables.

``Network.create(prefix, members)`` builds one namespace per member and a
"hub" namespace holding a bridge; each member gets one veth pair whose far
end is a port of that bridge, and one address on ``10.77.0.0/24``. Every
interface is created directly inside its namespace (``ip link add ... netns``),
so nothing is ever added to the host's own namespace, and no member's address
is reachable from it: only processes started inside the members (``popen``,
``run``) talk on this network.

Faults are nftables rules inside one member's namespace, in one table
(``inet skvfault``) that ``heal`` deletes: ``cut(member, peers, "both")``
drops packets to and from the peers' addresses, ``"in"`` only those arriving
from them, ``"out"`` only those leaving for them (one-way cuts). Packets are
dropped, not rejected, as a pulled cable or a dead switch port would.

``missing_requirement()`` says, in words a user can act on, why this machine
cannot build such a network (not root, no ``ip``, no ``nft``, namespaces not
allowed), or None. ``Network.destroy()`` kills whatever still runs in the
namespaces (only processes started there by this network's user can be
there), then deletes them, which deletes their veths and the bridge too;
calling it twice is harmless. Every name starts with the caller's prefix
(e.g. ``skv<pid>``), so concurrent runs never collide.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["Direction", "Network", "missing_requirement"]

Direction = Literal["both", "in", "out"]

_SUBNET = "10.77.0"
_PREFIX_LENGTH = 24
_TABLE = "skvfault"
_COMMAND_TIMEOUT = 10.0
# Longest Linux interface name (IFNAMSIZ - 1).
_MAX_INTERFACE_NAME = 15
_KILL_WAIT = 5.0


def _ip() -> str:
    return shutil.which("ip") or "ip"


def _nft() -> str:
    return shutil.which("nft") or "nft"


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one setup command; raise with its stderr if it fails."""
    result = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def missing_requirement() -> str | None:
    """Why this machine cannot run the network tests, with how to fix it; None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root: run the tests as root"
    if shutil.which("ip") is None:
        return "the ip command is missing: apt-get install iproute2"
    if shutil.which("nft") is None:
        return "the nft command is missing: apt-get install nftables (make does it as root)"
    probe = f"skvprobe{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        _run([_ip(), "netns", "add", probe])
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"this machine does not allow network namespaces (ip netns add: {exc})"
    try:
        _run([_ip(), "netns", "exec", probe, _nft(), "list", "ruleset"])
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"nftables does not work in a network namespace here (nft: {exc})"
    finally:
        subprocess.run(
            [_ip(), "netns", "delete", probe],
            capture_output=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
    return None


@dataclass
class Network:
    """Namespaces ``<prefix>-<member>`` on one bridge in ``<prefix>-hub``; see the module doc."""

    prefix: str
    addresses: dict[str, str]
    namespaces: dict[str, str] = field(default_factory=dict, init=False)
    hub: str = field(default="", init=False)
    # Every namespace made so far, hub first, for destroy().
    _made: list[str] = field(default_factory=list, init=False)

    @classmethod
    def create(cls, prefix: str, members: Sequence[str]) -> Network:
        """Build the network; on any failure, undo what was made and raise."""
        if len(members) > 200:
            raise ValueError("at most 200 members fit the subnet")
        network = cls(
            prefix=prefix,
            addresses={
                member: f"{_SUBNET}.{number}" for number, member in enumerate(members, start=1)
            },
        )
        try:
            network._build(members)
        except BaseException:
            network.destroy()
            raise
        return network

    def _interface(self, name: str) -> str:
        # Interfaces live only in this network's namespaces, so they cannot collide
        # with anyone's; the prefix is in them all the same, for whoever lists them.
        # A "skv<pid>" prefix becomes "s<pid>", to fit Linux's 15 characters.
        interface = f"s{self.prefix.removeprefix('skv')}{name}"
        if len(interface) > _MAX_INTERFACE_NAME:
            raise ValueError(f"interface name {interface!r} is longer than 15 characters")
        return interface

    def _add_namespace(self, name: str) -> str:
        namespace = f"{self.prefix}-{name}"
        _run([_ip(), "netns", "add", namespace])
        self._made.append(namespace)
        _run([_ip(), "-n", namespace, "link", "set", "lo", "up"])
        return namespace

    def _build(self, members: Sequence[str]) -> None:
        self.hub = self._add_namespace("hub")
        bridge = self._interface("br")
        _run([_ip(), "-n", self.hub, "link", "add", bridge, "type", "bridge"])
        _run([_ip(), "-n", self.hub, "link", "set", bridge, "up"])
        for member in members:
            namespace = self._add_namespace(member)
            self.namespaces[member] = namespace
            inside, port = self._interface(member), self._interface(f"h{member}")
            # Both ends are born in their namespaces: the host's namespace never sees them.
            _run(
                [
                    *(_ip(), "link", "add", inside, "netns", namespace),
                    *("type", "veth", "peer", "name", port, "netns", self.hub),
                ]
            )
            _run([_ip(), "-n", self.hub, "link", "set", port, "master", bridge, "up"])
            address = f"{self.addresses[member]}/{_PREFIX_LENGTH}"
            _run([_ip(), "-n", namespace, "addr", "add", address, "dev", inside])
            _run([_ip(), "-n", namespace, "link", "set", inside, "up"])

    # -- running things inside ------------------------------------------------------------

    def command(self, member: str, argv: Sequence[str]) -> list[str]:
        """``argv`` to run inside ``member``'s namespace (``ip netns exec`` execs it in place)."""
        return [_ip(), "netns", "exec", self.namespaces[member], *argv]

    def popen(
        self,
        member: str,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str],
        cwd: Path,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``member``'s namespace, stdout and stderr appended to ``log``."""
        with log.open("ab") as output:
            return subprocess.Popen(
                self.command(member, argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
            )

    def run(
        self,
        member: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``member``'s namespace to the end (at most ``timeout`` s)."""
        return subprocess.run(
            self.command(member, argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dict(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )

    # -- faults ---------------------------------------------------------------------------

    def cut(self, member: str, peers: Sequence[str], direction: Direction = "both") -> None:
        """Drop packets between ``member`` and ``peers`` (see the module doc), in ``member``."""
        if not peers:
            raise ValueError("cut needs at least one peer")
        others = ", ".join(self.addresses[peer] for peer in peers)
        chains = []
        if direction in ("both", "in"):
            chains.append(
                f"chain input {{ type filter hook input priority 0; policy accept; "
                f"ip saddr {{ {others} }} drop; }}"
            )
        if direction in ("both", "out"):
            chains.append(
                f"chain output {{ type filter hook output priority 0; policy accept; "
                f"ip daddr {{ {others} }} drop; }}"
            )
        # One nft transaction: the table appears with all its rules at once.
        script = f"table inet {_TABLE} {{\n" + "\n".join(chains) + "\n}\n"
        _run(self.command(member, [_nft(), "-f", "-"]), stdin=script)

    def heal(self, member: str) -> None:
        """Remove every cut made in ``member`` (deleting the table; none is fine)."""
        # Adding first makes the delete succeed whether or not a cut was made.
        script = f"add table inet {_TABLE}\ndelete table inet {_TABLE}\n"
        _run(self.command(member, [_nft(), "-f", "-"]), stdin=script)

    def heal_all(self) -> None:
        for member in self.namespaces:
            self.heal(member)

    # -- teardown -------------------------------------------------------------------------

    def destroy(self) -> None:
        """Kill what still runs inside, delete every namespace made; harmless twice."""
        for namespace in reversed(self._made):
            self._kill_inside(namespace)
            subprocess.run(
                [_ip(), "netns", "delete", namespace],
                capture_output=True,
                timeout=_COMMAND_TIMEOUT,
                check=False,
            )
        self._made.clear()

    @staticmethod
    def _kill_inside(namespace: str) -> None:
        """SIGKILL the processes inside ``namespace``, waiting (bounded) until none is left."""
        deadline = time.monotonic() + _KILL_WAIT
        for _ in range(100):
            listed = subprocess.run(
                [_ip(), "netns", "pids", namespace],
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT,
                check=False,
            )
            pids = [int(word) for word in listed.stdout.split() if word.isdigit()]
            if not pids or time.monotonic() > deadline:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
