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

``--tls-ca-file``, ``--tls-cert-file`` and ``--tls-key-file``
(``SHARDKV_ROUTER_TLS_CA_FILE`` and so on), all three or none: the cluster CA's
certificate and the router's own certificate and key. With them the router
serves clients with mutual TLS only and dials the nodes with mutual TLS
(``shardkv.tls``).

``--tokens-file`` (``SHARDKV_ROUTER_TOKENS_FILE``) turns on authentication:
every Router call then needs a bearer token the file names, with a role that
covers the method (``router.auth``). The limits (``--max-request-bytes``,
``--max-keys-per-call``, ``--max-in-flight``, ``--max-in-flight-per-group``,
``--default-deadline``, ``--max-deadline``) are ``router.limits``.

Beside ``shardkv.v1.Router`` the server answers etcd's v3 API on the same
port (KV, Watch, Lease, Maintenance.Status, Cluster.MemberList, Auth.Authenticate:
``router.etcd``), standard gRPC health checks
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import grpc.aio

from router.auth import AuthInterceptor, Role, load_tokens
from router.etcd import ETCD_SERVICES, add_etcd_services
from router.health import RouterHealthCheck
from router.leases import LeaseReaper, Leases
from router.limits import DEFAULT_LIMITS, InFlightInterceptor, RouterLimits
from router.service import RouterService
from router.topology import MAX_MESSAGE_BYTES, Topology
from shardkv import logs
from shardkv.health import Health
from shardkv.interceptors import DecodeInterceptor
from shardkv.metrics import DEFAULT_METRICS_ADDRESS, MetricsServer
from shardkv.tls import TlsError, TlsFiles, TlsMaterial, add_port
from shardkv.v1 import router_pb2, router_pb2_grpc

__all__ = ["ROUTER_SERVICES", "main", "serve"]

# By its module's name even when run as ``python -m`` (where __name__ is "__main__").
_log = logging.getLogger("router.server")
_STOP_GRACE = 1.0
# What health checking answers for (besides the whole server, "") and reflection lists.
ROUTER_SERVICES = (
    router_pb2.DESCRIPTOR.services_by_name["Router"].full_name,
    *(f"etcdserverpb.{name}" for name in ETCD_SERVICES),
)
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
    auth_and_limits = parser.add_argument_group(
        "authentication and limits",
        "beyond a limit of calls or queued requests a call is refused with RESOURCE_EXHAUSTED "
        "and trailing metadata retry-after-ms",
    )
    auth_and_limits.add_argument(
        "--tokens-file",
        type=Path,
        default=os.environ.get("SHARDKV_ROUTER_TOKENS_FILE") or None,
        help="TOML (.toml) or JSON file with a tokens table of token = role (read-write or "
        "admin); every call then needs 'authorization: Bearer <token>' (default: none, "
        "authentication off) [env SHARDKV_ROUTER_TOKENS_FILE]",
    )
    auth_and_limits.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_LIMITS.max_request_bytes,
        help="the largest request message accepted (default: %(default)s)",
    )
    auth_and_limits.add_argument(
        "--max-keys-per-call",
        type=int,
        default=DEFAULT_LIMITS.max_keys_per_call,
        help="the most items of one Batch, PutMany or GetMany, at most the default "
        "(default: %(default)s)",
    )
    auth_and_limits.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_LIMITS.max_in_flight,
        help="the most calls this router serves at once (default: %(default)s)",
    )
    auth_and_limits.add_argument(
        "--max-in-flight-per-group",
        type=int,
        default=DEFAULT_LIMITS.max_in_flight_per_group,
        help="the most requests waiting at this router for one group (default: %(default)s)",
    )
    auth_and_limits.add_argument(
        "--default-deadline",
        type=float,
        default=DEFAULT_LIMITS.default_deadline,
        help="seconds a call without a deadline gets (default: %(default)s)",
    )
    auth_and_limits.add_argument(
        "--max-deadline",
        type=float,
        default=DEFAULT_LIMITS.max_deadline,
        help="a caller's longer deadline is cut to this many seconds (default: %(default)s)",
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
    for name, what in _TLS_FLAGS:
        parser.add_argument(
            f"--tls-{name}-file",
            metavar="PATH",
            default=os.environ.get(f"SHARDKV_ROUTER_TLS_{name.upper()}_FILE") or None,
            help=f"PEM {what}; with the other two --tls-* flags, mutual TLS to clients "
            f"and nodes (default: plaintext) [env SHARDKV_ROUTER_TLS_{name.upper()}_FILE]",
        )
    return parser


_TLS_FLAGS = (
    ("ca", "certificate of the cluster CA"),
    ("cert", "certificate of this router"),
    ("key", "private key of this router's certificate"),
)


async def serve(
    listen: str,
    nodes: Sequence[str],
    *,
    metrics_port: int = 0,
    metrics_address: str = DEFAULT_METRICS_ADDRESS,
    tls: TlsMaterial | None = None,
    tokens: Mapping[str, Role] | None = None,
    limits: RouterLimits = DEFAULT_LIMITS,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    topology = Topology(nodes, tls=tls)
    service = RouterService(topology, limits=limits)
    # Metrics first, so that refused calls are counted with their codes; then
    # authentication, so that a caller without a token takes no place in flight.
    interceptors: list[grpc.aio.ServerInterceptor] = [service.metrics.interceptor]  # type: ignore[type-arg]
    auth = AuthInterceptor(tokens) if tokens is not None else None
    if auth is not None:
        interceptors.append(auth)
    interceptors.append(InFlightInterceptor(limits.max_in_flight))
    # Last, so that the others see its handlers: a request that does not decode
    # is counted, authenticated and limited like any other, then refused.
    interceptors.append(DecodeInterceptor())
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limits.max_request_bytes),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    router_pb2_grpc.add_RouterServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    leases = Leases(service)
    add_etcd_services(server, service, listen, auth, leases)
    reaper = LeaseReaper(leases)
    health = await Health.add_to(
        server, ROUTER_SERVICES, RouterHealthCheck(topology), interval=_HEALTH_INTERVAL
    )
    try:
        add_port(server, listen, tls)
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
    reaper.start()
    _log.info("router serving on %s, learning the cluster from %s", listen, ",".join(nodes))
    try:
        await stop.wait()
    finally:
        # Health checkers see the router drain before its port closes.
        await health.stop()
        await reaper.close()
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
    try:
        tls_files = TlsFiles.from_options(args.tls_ca_file, args.tls_cert_file, args.tls_key_file)
        tls = tls_files.load() if tls_files is not None else None
    except TlsError as exc:
        print(f"shardkv-router: {exc}; fix the --tls-* flags", file=sys.stderr)
        return 2
    try:
        limits = RouterLimits(
            max_request_bytes=args.max_request_bytes,
            max_keys_per_call=args.max_keys_per_call,
            max_in_flight=args.max_in_flight,
            max_in_flight_per_group=args.max_in_flight_per_group,
            default_deadline=args.default_deadline,
            max_deadline=args.max_deadline,
        )
        tokens = load_tokens(args.tokens_file) if args.tokens_file is not None else None
    except ValueError as exc:  # a bad limit, or a TokensFileError
        print(f"shardkv-router: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_level, args.log_format)
    return asyncio.run(
        serve(
            args.listen,
            nodes,
            metrics_port=args.metrics_port,
            metrics_address=args.metrics_address,
            tls=tls,
            tokens=tokens,
            limits=limits,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
