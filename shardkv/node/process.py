"""One node process's life: open its data, bootstrap on first start, serve, stop.

``NodeProcess.start(config)`` acquires, in this order (a failure releases
what was acquired, in reverse):

1. the listen port is checked free (``check_port_free``) and the data
   directory claimed (``prepare_data_dir``), before anything is written;
2. the RocksDB engine at ``<data_dir>/db``; a directory another process holds
   is a ``ConfigError``;
3. on a fresh data directory, the initial Raft state of every group this node
   hosts (``GroupStorage.bootstrap`` with the group's replicas as voters),
   then ``mark_bootstrapped``;
4. one ``Peer`` per hosted group, the ``GrpcTransport`` and the
   ``NodeRuntime`` on them;
5. the gRPC server (``RaftTransport`` and ``Node`` services, with standard
   health checking and reflection: ``shardkv.health``; NOT_SERVING while a
   hosted group knows no leader: ``shardkv.node.health``) bound to
   ``listen``, the runtime's loop as a task, and the ``ClusterAgent``
   (bootstraps the cluster map, learns it, keeps groups on its ring), and
   the ``TxnResolver`` beside it (finishes, in the groups this node leads,
   transactions whose coordinator went quiet past their deadline), and the
   ``MigrationDriver`` (moves keys for a ring change, where this node leads
   the meta group), and the ``LeaseKeeper`` (expires the leases of the
   groups this node leads: ``shardkv.node.leases``).

Stopping: health turns NOT_SERVING first, then the server stops taking new
calls (calls in flight may finish), then the migration driver (its moves
resume from the map at the next meta leader) and the resolver (its transactions in
flight are cancelled: each step is idempotent, so whoever resolves them next
starts over safely) and the cluster agent, then the runtime stops (waiting callers get
``OutcomeUnknown``: retry with the same client id and seq), then the
transport closes (which ends the inbound Raft streams the server would
otherwise wait for), then the server finishes within a one-second grace,
and the engine closes last.
With ``metrics_port`` set, a Prometheus endpoint (``shardkv.metrics``) serves
the node's metrics on ``metrics_address`` from step 4 on (a port it cannot
bind is a ``ConfigError``); it closes last.
``serve(config)`` runs a node until SIGTERM or SIGINT.

Decisions:

- **Bootstrapping is repeatable.** A crash between two groups' bootstrap
  writes leaves the directory fresh; the next start bootstraps again and
  skips the groups that already hold their initial state
  (``AlreadyBootstrapped``). Nothing but that initial state can be there,
  since a fresh node never ran.
- **Joining** (``join`` set): the node bootstraps no group. At every start
  it first calls ``Join`` on the member named by ``join`` (before claiming
  the data dir, so a refusal leaves nothing behind) (following NOT_LEADER to
  the meta group's leader, and retrying while the cluster answers
  UNAVAILABLE, for up to ``JOIN_TIMEOUT`` seconds) and learns the map it
  answers; the same id and address joining again is a no-op, so a restart
  joins again. A refusal (id or address taken, another cluster) is a
  ``ConfigError``.
- **Which groups.** A node hosts the groups whose replicas list it in the
  configured layout (``NodeConfig.hosted_groups``). On a restart every one
  of them must already have Raft state in the data directory, unless the
  node dropped its replica on purpose since (a replica move took it away, or
  the group retired: ``NodeRuntime.remove_peer`` leaves a mark); one without
  either is a ``ConfigError`` (the layout is read only at a node's first
  start, and a voter that lost its state must not vote again).
  Groups a ring change created later (``ClusterAgent`` starts a replica when
  the map names this node) are found in storage at a restart
  (``stored_groups``) and hosted as well.
- **Log compaction lag.** The config has no setting for it: a snapshot keeps
  ``min(1000, snapshot_interval_entries)`` entries behind it for followers
  only a little behind, so a small snapshot interval (as in tests) really
  compacts and lagging followers catch up by snapshot.
- **Exit statuses** (used by ``main``): 0 after a signal, 2 for a
  ``ConfigError`` (bad settings, data dir, or port), 1 when the runtime
  itself fails (a log write that did not persist).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio

from shardkv.health import Health
from shardkv.interceptors import DecodeInterceptor
from shardkv.metrics import MetricsServer, NodeMetrics
from shardkv.node.cluster import ClusterAgent, initial_map
from shardkv.node.config import ConfigError, NodeConfig
from shardkv.node.data_dir import (
    DataDirState,
    check_port_free,
    mark_bootstrapped,
    prepare_data_dir,
)
from shardkv.node.health import health_interval, leaderless_groups
from shardkv.node.leases import LeaseDeadlines, LeaseKeeper
from shardkv.node.migration import MigrationDriver
from shardkv.node.peer import Peer, PeerOptions
from shardkv.node.placement import PlacementDriver
from shardkv.node.resolver import NodeGroupCalls, TxnResolver
from shardkv.node.runtime import NodeRuntime
from shardkv.node.service import NodeService
from shardkv.node.transport_grpc import GrpcTransport, server_options
from shardkv.storage import (
    AlreadyBootstrapped,
    ColumnFamily,
    DataDirInUse,
    Engine,
    GroupStorage,
    keys,
    stored_groups,
)
from shardkv.tls import TlsError, TlsMaterial, add_port, open_channel
from shardkv.v1 import cluster_pb2, node_pb2, node_pb2_grpc, raft_pb2

__all__ = [
    "ENGINE_DIR",
    "NODE_SERVICES",
    "STOP_GRACE_SECONDS",
    "NodeProcess",
    "peer_options",
    "serve",
]

_log = logging.getLogger(__name__)

# The RocksDB directory inside the data directory, beside IDENTITY.
ENGINE_DIR = "db"
# How long calls in flight may take to finish once the node is stopping.
STOP_GRACE_SECONDS = 1.0
_MAX_COMPACTION_LAG = PeerOptions().compaction_lag
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What health checking answers for (besides the whole server, "") and reflection lists.
NODE_SERVICES = (
    node_pb2.DESCRIPTOR.services_by_name["Node"].full_name,
    raft_pb2.DESCRIPTOR.services_by_name["RaftTransport"].full_name,
)


def peer_options(config: NodeConfig) -> PeerOptions:
    """The Raft and snapshot settings of every peer of this node."""
    return PeerOptions(
        election_ticks=config.election_ticks,
        heartbeat_ticks=config.heartbeat_ticks,
        lease_reads=config.lease_reads,
        snapshot_interval=config.snapshot_interval_entries,
        snapshot_log_bytes=config.snapshot_interval_mb << 20,
        compaction_lag=min(_MAX_COMPACTION_LAG, config.snapshot_interval_entries),
    )


def _open_engine(config: NodeConfig, state: DataDirState) -> Engine:
    try:
        return Engine(state.path / ENGINE_DIR)
    except DataDirInUse as exc:
        raise ConfigError(
            f"data dir {state.path} (from {config.origin('data_dir')}) is in use by another "
            "process, most likely another shardkv-node; stop it or use another --data-dir",
            setting="data_dir",
        ) from exc


def _bootstrap(config: NodeConfig, engine: Engine) -> None:
    """Write the initial Raft state of every hosted group (repeatable, see the docstring)."""
    for group_id in config.hosted_groups:
        try:
            GroupStorage(engine, group_id).bootstrap(config.groups[group_id])
        except AlreadyBootstrapped:
            _log.info("group %d was bootstrapped by an earlier, interrupted start", group_id)


def _build_peers(config: NodeConfig, engine: Engine) -> dict[int, Peer]:
    options = peer_options(config)
    peers: dict[int, Peer] = {}
    stored = stored_groups(engine)
    # Groups created later (a ring change added them) have Raft state here too.
    for group_id in stored:
        if group_id not in config.hosted_groups:
            peers[group_id] = Peer(engine, group_id, config.node_id, options)
    for group_id in config.hosted_groups:
        peer = Peer(engine, group_id, config.node_id, options)
        if peer.storage.snapshot_metadata().index == 0:
            dropped = engine.get(ColumnFamily.META, keys.dropped_group_key(group_id))
            if dropped is not None and group_id not in stored:
                # The layout put it here; a replica move or retirement took it
                # away since. The map says whether it comes back (ClusterAgent).
                _log.info("group %d: this node dropped its replica; not hosting it", group_id)
                continue
            if dropped is None:
                raise ConfigError(
                    f"group {group_id} has no Raft state in data dir {config.data_dir}, although "
                    f"the groups layout (from {config.origin('groups')}) puts it on node "
                    f"{config.node_id}; the layout is read only at a node's first start: restore "
                    "the layout the cluster started with",
                    setting="groups",
                )
        peers[group_id] = peer
    return peers


def _create_group(
    config: NodeConfig,
    engine: Engine,
    runtime: NodeRuntime,
    group_id: int,
    bootstrap: list[int] | None,
) -> None:
    """Start this node's replica of a group the map gives it (``ClusterAgent``): with
    ``bootstrap``, as one of a new group's first voters; without, empty, to catch up."""
    if bootstrap is not None:
        # AlreadyBootstrapped: an earlier start created it; the peer picks up its state.
        with contextlib.suppress(AlreadyBootstrapped):
            GroupStorage(engine, group_id).bootstrap(tuple(bootstrap))
    peer = Peer(engine, group_id, config.node_id, peer_options(config))
    runtime.add_peer(peer)
    if bootstrap and config.node_id == bootstrap[group_id % len(bootstrap)]:
        # The replica that would get the lead anyway (ClusterAgent's spread)
        # stands at once: a new group serves without waiting an election timeout.
        peer.raw.campaign()


def _serve_metrics(config: NodeConfig, metrics: NodeMetrics) -> MetricsServer | None:
    """The node's metrics endpoint, if ``metrics_port`` asks for one."""
    if not config.metrics_port:
        return None
    try:
        return MetricsServer.start(metrics.registry, config.metrics_address, config.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"the metrics endpoint cannot bind {config.metrics_address}:{config.metrics_port} "
            f"(metrics_port from {config.origin('metrics_port')}, metrics_address from "
            f"{config.origin('metrics_address')}): {exc.strerror or exc}; pick another "
            "--metrics-port, or 0 for none",
            setting="metrics_port",
        ) from exc


class NodeProcess:
    """A started node: its engine, runtime, transport and gRPC server.

    Create one with ``await NodeProcess.start(config)``; ``wait()`` returns
    when the runtime's loop ends (it raises if the loop failed), and
    ``stop()`` releases everything. Stopping twice is harmless.
    """

    def __init__(
        self,
        config: NodeConfig,
        engine: Engine,
        runtime: NodeRuntime,
        transport: GrpcTransport,
        server: grpc.aio.Server,
        loop_task: asyncio.Task[None],
        agent: ClusterAgent,
        agent_task: asyncio.Task[None],
        workers: list[tuple[Callable[[], Awaitable[None]], asyncio.Task[None] | None]],
        health: Health,
        metrics_server: MetricsServer | None = None,
    ) -> None:
        self.config = config
        self._engine = engine
        self._runtime = runtime
        self._transport = transport
        self._server = server
        self._loop_task = loop_task
        self._agent = agent
        self._agent_task = agent_task
        # Background work beside the agent (migration driver, resolver): how
        # to stop each, and its task; stopped in this order, before the agent.
        self._workers = workers
        self._health = health
        self._metrics_server = metrics_server
        self._stopped = False

    @classmethod
    async def start(cls, config: NodeConfig) -> NodeProcess:
        """Open, bootstrap if fresh, and serve; ``ConfigError`` if the node cannot start."""
        check_port_free(config.listen)
        tls = _load_tls(config)
        # Before the data dir is claimed: a refused join leaves nothing behind.
        joined = await join_cluster(config, tls) if config.join is not None else None
        state = prepare_data_dir(config)
        engine = _open_engine(config, state)
        async with contextlib.AsyncExitStack() as undo:
            undo.callback(engine.close)
            if state.fresh:
                if config.join is None:
                    _bootstrap(config, engine)
                mark_bootstrapped(state)
            peers = _build_peers(config, engine)
            transport = GrpcTransport(config.node_id, tls=tls)
            # The server takes its limits from the transport, so that what one
            # node sends the other accepts.
            server = grpc.aio.server(
                interceptors=[DecodeInterceptor()],
                options=[*server_options(transport.options), ("grpc.so_reuseport", 0)],
            )
            undo.push_async_callback(server.stop, None)
            # Unwound first: closing the transport ends the inbound Raft
            # streams the server's stop would otherwise wait for.
            undo.push_async_callback(transport.close)
            transport.register(server)
            transport.update_peers(config.initial_cluster)
            metrics = NodeMetrics()
            runtime = NodeRuntime(
                config.node_id,
                engine,
                transport,
                peers,
                tick_interval=config.tick_interval_ms / 1000,
                metrics=metrics,
            )
            metrics.watch(runtime, transport.traffic)
            metrics_server = _serve_metrics(config, metrics)
            if metrics_server is not None:
                undo.push_async_callback(metrics_server.close)
            agent = ClusterAgent(
                runtime,
                initial_map(config),
                config.initial_cluster,
                tls=tls,
                create_group=functools.partial(_create_group, config, engine, runtime),
            )
            undo.push_async_callback(agent.stop)
            resolver = TxnResolver(
                runtime,
                lambda: agent.map,
                interval=config.txn_resolve_interval_ms / 1000,
                tls=tls,
            )
            undo.push_async_callback(resolver.stop)
            deadlines = LeaseDeadlines()
            keeper = LeaseKeeper(runtime, deadlines)
            undo.push_async_callback(keeper.stop)
            driver_calls = NodeGroupCalls(runtime, lambda: agent.map, timeout=10.0, tls=tls)
            undo.push_async_callback(driver_calls.close)
            driver = MigrationDriver(agent, driver_calls)
            undo.push_async_callback(driver.stop)
            placer = PlacementDriver(agent, driver_calls)
            undo.push_async_callback(placer.stop)
            # The generated registration function carries no type hints.
            node_pb2_grpc.add_NodeServicer_to_server(  # type: ignore[no-untyped-call]
                NodeService(runtime, config.initial_cluster, agent, deadlines), server
            )
            health = await Health.add_to(
                server,
                NODE_SERVICES,
                lambda: leaderless_groups(runtime),
                interval=health_interval(config.tick_interval_ms / 1000),
                log_extra={"node_id": config.node_id},
            )
            undo.push_async_callback(health.stop)
            try:
                add_port(server, config.listen, tls)
            except RuntimeError as exc:
                raise ConfigError(
                    f"the gRPC server cannot bind listen address {config.listen} (from "
                    f"{config.origin('listen')}): another process took it since the check, or "
                    "it is not an address of this host; pick another --listen",
                    setting="listen",
                ) from exc
            await server.start()
            loop_task = asyncio.create_task(runtime.run(), name=f"node-{config.node_id}-loop")
            if joined is not None:
                agent.learn(joined)
            agent_task = asyncio.create_task(agent.run(), name=f"node-{config.node_id}-agent")
            resolver_task = asyncio.create_task(
                resolver.run(), name=f"node-{config.node_id}-resolver"
            )
            driver_task = asyncio.create_task(
                driver.run(), name=f"node-{config.node_id}-migrations"
            )
            placer_task = asyncio.create_task(placer.run(), name=f"node-{config.node_id}-placement")
            keeper_task = asyncio.create_task(keeper.run(), name=f"node-{config.node_id}-leases")
            health.start()
            undo.pop_all()
        _log.info(
            "node %d serving groups %s on %s",
            config.node_id,
            sorted(runtime.peers),
            config.listen,
        )
        return cls(
            config,
            engine,
            runtime,
            transport,
            server,
            loop_task,
            agent,
            agent_task,
            [
                (driver.stop, driver_task),
                (placer.stop, placer_task),
                (resolver.stop, resolver_task),
                (keeper.stop, keeper_task),
                (driver_calls.close, None),
            ],
            health,
            metrics_server,
        )

    async def wait(self) -> None:
        """Until the runtime's loop ends: after ``stop()``, or with its error."""
        await asyncio.shield(self._loop_task)

    async def stop(self) -> None:
        """Stop serving and release everything, in the order the module docstring gives."""
        if self._stopped:
            return
        self._stopped = True
        # Health checkers see the node drain before its port closes.
        await self._health.stop()
        # Stops taking new calls at once; the ones in flight get the grace.
        server_stopped = asyncio.create_task(self._server.stop(STOP_GRACE_SECONDS))
        # The driver and the resolver first: they propose through the runtime
        # and read the agent's map.
        for stop, task in self._workers:
            await stop()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._agent.stop()
        self._agent_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._agent_task
        self._runtime.stop()
        with contextlib.suppress(Exception):
            # Its error, if any, was reported by whoever awaited wait().
            await self._loop_task
        # Before the server's grace runs out: the inbound Raft streams end
        # only when the transport closes them.
        await self._transport.close()
        await server_stopped
        self._engine.close()
        if self._metrics_server is not None:
            await self._metrics_server.close()
        _log.info("node %d stopped", self.config.node_id)


JOIN_TIMEOUT = 60.0


def _load_tls(config: NodeConfig) -> TlsMaterial | None:
    """Read the node's TLS files, if it has them; ``ConfigError`` naming the bad one."""
    files = config.tls
    if files is None:
        return None
    try:
        return files.load()
    except TlsError as exc:
        raise ConfigError(
            f"{exc}; fix the file, or the tls_ca_file, tls_cert_file or tls_key_file "
            "setting that names it"
        ) from exc


async def join_cluster(
    config: NodeConfig, tls: TlsMaterial | None = None
) -> cluster_pb2.ClusterMap:
    """Ask the member at ``config.join`` to add this node; the map with it (see the docstring)."""
    assert config.join is not None
    request = node_pb2.JoinRequest(
        node_id=config.node_id, address=config.advertise, cluster_id=config.cluster_id
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOIN_TIMEOUT
    target = config.join
    problem = "no answer yet"
    while loop.time() < deadline:
        response: node_pb2.JoinResponse | None
        async with open_channel(target, tls) as channel:
            stub = node_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]
            try:
                response = await stub.Join(request, timeout=5.0)
            except grpc.aio.AioRpcError as error:
                if error.code() in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ):
                    raise ConfigError(
                        f"the cluster at {target} refused node {config.node_id}: {error.details()}",
                        setting="join",
                    ) from error
                problem = f"{target}: {error.code().name} {error.details()}"
                response = None
        if response is not None and not response.HasField("error"):
            _log.info("node %d joined the cluster through %s", config.node_id, target)
            return response.map
        if response is not None:
            hint = response.error.not_leader.leader_address
            problem = f"{target}: {response.error}"
            target = hint or config.join
        await asyncio.sleep(0.2)
    raise ConfigError(
        f"could not join the cluster through {config.join} (from {config.origin('join')}) "
        f"in {JOIN_TIMEOUT:.0f} s; last: {problem}",
        setting="join",
    )


async def serve(config: NodeConfig) -> int:
    """Run a node until SIGTERM or SIGINT; the process's exit status (see the docstring).

    The signal handlers go in before the node starts, so a signal during
    startup stops the node as soon as it is up instead of killing it midway.
    """
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []
    signalled = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        received.append(signum)
        signalled.set()

    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        node = await NodeProcess.start(config)
        try:
            return await _until_stopped(node, signalled, received)
        finally:
            await node.stop()
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def _until_stopped(
    node: NodeProcess, signalled: asyncio.Event, received: list[signal.Signals]
) -> int:
    signal_wait = asyncio.create_task(signalled.wait())
    node_wait = asyncio.create_task(node.wait())
    await asyncio.wait({signal_wait, node_wait}, return_when=asyncio.FIRST_COMPLETED)
    signal_wait.cancel()
    node_id = node.config.node_id
    if node_wait.done():
        error = node_wait.exception()
        _log.error("node %d: its loop failed; stopping", node_id, exc_info=error)
        return 1
    node_wait.cancel()
    _log.info("node %d: received %s; stopping", node_id, received[0].name)
    return 0
