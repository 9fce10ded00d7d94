"""Entry point of ``shardkv-router``: one stateless router process.

    shardkv-router --listen 127.0.0.1:7000 --nodes 127.0.0.1:7001,127.0.0.1:7002

``--nodes`` names one or more nodes to learn the cluster map from (any
member will do; the map then names the rest). ``SHARDKV_ROUTER_LISTEN`` and
``SHARDKV_ROUTER_NODES`` set the same from the environment. Runs until
SIGTERM or SIGINT; exit status 0 then, 2 for bad arguments or a listen
address that cannot be bound.
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

from router.service import RouterService
from router.topology import MAX_MESSAGE_BYTES, Topology
from shardkv.v1 import router_pb2_grpc

__all__ = ["main", "serve"]

_log = logging.getLogger("router")
_STOP_GRACE = 1.0


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
        "--log-level",
        default=os.environ.get("SHARDKV_LOG_LEVEL") or "INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    return parser


async def serve(listen: str, nodes: Sequence[str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    topology = Topology(nodes)
    service = RouterService(topology)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    router_pb2_grpc.add_RouterServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    try:
        server.add_insecure_port(listen)
    except RuntimeError:
        print(
            f"shardkv-router: cannot listen on {listen}: the port is in use or the address "
            "is not this host's; pick another --listen",
            file=sys.stderr,
        )
        return 2
    topology.start()
    await server.start()
    _log.info("router serving on %s, learning the cluster from %s", listen, ",".join(nodes))
    try:
        await stop.wait()
    finally:
        await server.stop(_STOP_GRACE)
        await service.close()
        await topology.close()
    _log.info("router stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    nodes = [address.strip() for address in args.nodes.split(",") if address.strip()]
    if not nodes:
        print("shardkv-router: --nodes names no node", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return asyncio.run(serve(args.listen, nodes))


if __name__ == "__main__":
    sys.exit(main())
