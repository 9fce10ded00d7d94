"""Entry point of ``shardkv-router``: one stateless router process.

    shardkv-router --listen 127.0.0.1:7000 --nodes 127.0.0.1:7001,127.0.0.1:7002

``--nodes`` names one or more nodes to learn the cluster map from (any
member will do; the map then names the rest). ``SHARDKV_ROUTER_LISTEN`` and
``SHARDKV_ROUTER_NODES`` set the same from the environment. ``--log-level``
and ``--log-format`` (``text`` or ``json``: ``shardkv.logs``) default to
``SHARDKV_LOG_LEVEL`` and ``SHARDKV_LOG_FORMAT``, as for a node. Runs until
SIGTERM or SIGINT; exit status 0 then, 2 for bad arguments or a listen
address that cannot be bound.

``--metrics-port`` (``SHARDKV_ROUTER_METRICS_PORT``; 0, the default: none)
serves the router's Prometheus metrics (``router.metrics``) over HTTP on
``--metrics-address`` (``SHARDKV_ROUTER_METRICS_ADDRESS``, default
127.0.0.1).

Beside ``shardkv.v1.Router`` the server answers standard gRPC health checks
(SERVING once it has a cluster map and every group on the ring has a leader
it can reach: ``router.health``) and server reflection (``shardkv.health``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import grpc
import grpc.aio

from router.health import RouterHealthCheck
from router.service import RouterService
from router.topology import MAX_MESSAGE_BYTES, Topology
from shardkv import logs
from shardkv.health import Health
from shardkv.metrics import DEFAULT_METRICS_ADDRESS, MetricsServer
from shardkv.v1 import router_pb2, router_pb2_grpc

__all__ = ["ROUTER_SERVICES", "main", "serve"]

# By its module's name even when run as ``python -m`` (where __name__ is "__main__").
_log = logging.getLogger("router.server")
_STOP_GRACE = 1.0
# What health checking answers for (besides the whole server, "") and reflection lists.
ROUTER_SERVICES = (router_pb2.DESCRIPTOR.services_by_name["Router"].full_name,)
# How often health is checked: each check asks every node for its Status.
_HEALTH_INTERVAL = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardkv-router",
        description="The shardkv router: routes each key to the group that owns it.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--listen",
        default=os.environ.get("SHARDKV_ROUTER_LISTEN") or "127.0.0.1:7000",
        help="host:port to serve clients on (default: %(default)s)",
    )
    parser.add_argument(
        "--nodes",
        default=os.environ.get("SHARDKV_ROUTER_NODES") or "127.0.0.1:7101",
        help="comma-separated host:port of nodes to learn the cluster from (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=os.environ.get("SHARDKV_ROUTER_METRICS_PORT") or 0,
        help="port of the Prometheus metrics HTTP endpoint (/metrics); 0: none "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("SHARDKV_ROUTER_METRICS_ADDRESS") or DEFAULT_METRICS_ADDRESS,
        help="address the metrics endpoint binds (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SHARDKV_LOG_LEVEL") or "INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="the least severe level logged (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("SHARDKV_LOG_FORMAT") or "text",
        type=str.lower,
        choices=logs.LOG_FORMATS,
        help="text, or json for one JSON object a line (default: %(default)s)",
    )
    return parser


async def serve(
    listen: str,
    nodes: Sequence[str],
    *,
    metrics_port: int = 0,
    metrics_address: str = DEFAULT_METRICS_ADDRESS,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    topology = Topology(nodes)
    service = RouterService(topology)
    server = grpc.aio.server(
        interceptors=[service.metrics.interceptor],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    router_pb2_grpc.add_RouterServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    health = await Health.add_to(
        server, ROUTER_SERVICES, RouterHealthCheck(topology), interval=_HEALTH_INTERVAL
    )
    try:
        server.add_insecure_port(listen)
    except RuntimeError:
        print(
            f"shardkv-router: cannot listen on {listen}: the port is in use or the address "
            "is not this host's; pick another --listen",
            file=sys.stderr,
        )
        return 2
    metrics_server: MetricsServer | None = None
    if metrics_port:
        try:
            metrics_server = MetricsServer.start(
                service.metrics.registry, metrics_address, metrics_port
            )
        except OSError as exc:
            print(
                f"shardkv-router: the metrics endpoint cannot bind {metrics_address}:"
                f"{metrics_port}: {exc.strerror or exc}; pick another --metrics-port",
                file=sys.stderr,
            )
            return 2
    topology.start()
    await server.start()
    health.start()
    _log.info("router serving on %s, learning the cluster from %s", listen, ",".join(nodes))
    try:
        await stop.wait()
    finally:
        # Health checkers see the router drain before its port closes.
        await health.stop()
        await server.stop(_STOP_GRACE)
        await service.close()
        await topology.close()
        if metrics_server is not None:
            await metrics_server.close()
    _log.info("router stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    nodes = [address.strip() for address in args.nodes.split(",") if address.strip()]
    if not nodes:
        print("shardkv-router: --nodes names no node", file=sys.stderr)
        return 2
    if not 0 <= args.metrics_port <= 65535:
        print("shardkv-router: --metrics-port must be 1 to 65535, or 0 for none", file=sys.stderr)
        return 2
    logs.configure(args.log_level, args.log_format)
    return asyncio.run(
        serve(
            args.listen,
            nodes,
            metrics_port=args.metrics_port,
            metrics_address=args.metrics_address,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
