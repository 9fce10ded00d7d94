"""Free ports on 127.0.0.1 for tests that start servers."""

from __future__ import annotations

import random
import socket

__all__ = ["free_port_run", "free_ports"]

# Ports below Linux's ephemeral range (32768 and up), so that no outgoing
# connection takes a node's port while the node is down for a restart.
_PORT_RANGE = (20000, 32000)


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (``shardkv up`` takes port..port+N)."""
    rng = random.Random()
    for _ in range(1000):
        first = rng.randrange(_PORT_RANGE[0], _PORT_RANGE[1] - count)
        if all(_is_free(port) for port in range(first, first + count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free ports")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that nothing listens on right now."""
    rng = random.Random()
    ports: list[int] = []
    for _ in range(1000):
        if len(ports) == count:
            return ports
        port = rng.randrange(*_PORT_RANGE)
        if port in ports or not _is_free(port):
            continue
        ports.append(port)
    raise RuntimeError(f"found only {len(ports)} free ports of {count}")
