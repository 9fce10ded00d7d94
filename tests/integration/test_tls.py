"""A cluster with mutual TLS on every connection, end to end, with real processes.

``shardkv certs`` writes a CA and certificates; three nodes (``--tls-*``
flags) and a router (``SHARDKV_ROUTER_TLS_*``) run with them, so node to node,
router to node and client to router are all mutual TLS. A client with the
CA's client certificate puts, gets and commits a transaction across groups; a
plaintext client, and a client whose certificate another CA signed, are
refused (UNAVAILABLE: the handshake fails, no RPC reaches the router), and so
are such callers at a node's port.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from router import Client, Unavailable
from router.certs import DevCerts
from router.transactions import put
from shardkv.tls import TlsFiles
from shardkv.v1 import node_pb2, node_pb2_grpc, router_pb2_grpc
from tests.integration.conftest import RPC_TIMEOUT, Cluster, Settings, clean_environment
from tests.integration.routers import RouterProcess

pytestmark = pytest.mark.integration

NODES = 3


def secure_channel(address: str, files: TlsFiles) -> grpc.Channel:
    material = files.load()
    return grpc.secure_channel(address, material.channel_credentials())


class TlsCluster(Cluster):
    """A test cluster whose nodes run with the certificates of ``certs``."""

    def __init__(self, root: Path, settings: Settings, certs: DevCerts) -> None:
        super().__init__(root, settings)
        self.certs = certs

    def node_arguments(self, node_id: int) -> list[str]:
        files = self.certs.node(node_id)
        return [
            *super().node_arguments(node_id),
            "--tls-ca-file",
            str(files.ca),
            "--tls-cert-file",
            str(files.cert),
            "--tls-key-file",
            str(files.key),
        ]

    def stub(self, node_id: int) -> node_pb2_grpc.NodeStub:
        channel = self._channels.get(node_id)
        if channel is None:
            # The test talks to the nodes as the router would.
            channel = secure_channel(self.addresses[node_id], self.certs.router)
            self._channels[node_id] = channel
        return node_pb2_grpc.NodeStub(channel)  # type: ignore[no-untyped-call]


class TlsRouter(RouterProcess):
    def __init__(self, cluster: TlsCluster) -> None:
        files = cluster.certs.router
        super().__init__(
            cluster,
            "router",
            env={
                "SHARDKV_ROUTER_TLS_CA_FILE": str(files.ca),
                "SHARDKV_ROUTER_TLS_CERT_FILE": str(files.cert),
                "SHARDKV_ROUTER_TLS_KEY_FILE": str(files.key),
            },
        )
        self.client_files = cluster.certs.client

    def stub(self) -> router_pb2_grpc.RouterStub:
        if self._channel is None:
            self._channel = secure_channel(self.address, self.client_files)
        return router_pb2_grpc.RouterStub(self._channel)  # type: ignore[no-untyped-call]


def make_certs(out: Path, nodes: int) -> DevCerts:
    """Certificates as a user makes them: with the ``shardkv certs`` command."""
    subprocess.run(
        [sys.executable, "-m", "router.cli", "certs", "--out", str(out), "--nodes", str(nodes)],
        check=True,
        env=clean_environment(),
        capture_output=True,
    )
    return DevCerts(out, nodes)


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[TlsCluster, TlsRouter]]:
    certs = make_certs(tmp_path / "certs", NODES)
    root = tmp_path / "cluster"
    root.mkdir()
    cluster = TlsCluster(root, Settings(nodes=NODES, groups=2), certs)
    router = TlsRouter(cluster)
    try:
        cluster.start_all()
        router.start()
        yield cluster, router
    finally:
        router.close()
        cluster.close()


def test_tls_cluster_serves_a_tls_client_and_refuses_others(
    tls_cluster: tuple[TlsCluster, TlsRouter], tmp_path: Path
) -> None:
    cluster, router = tls_cluster
    keys = [cluster.key(group_id, f"tls-{group_id}") for group_id in cluster.group_ids]

    with Client(router.address, timeout=15.0, tls=cluster.certs.client) as client:
        client.put(keys[0], b"secret")
        assert client.get(keys[0]) == b"secret"
        # Across both groups: a two-phase commit, so node-to-node and
        # router-to-node TLS carry it all.
        result = client.txn([], [put(key, b"both") for key in keys])
        assert result.succeeded
        assert [client.get(key) for key in keys] == [b"both", b"both"]

    # A refused handshake is UNAVAILABLE: retried until the deadline, then raised.
    with Client(router.address, timeout=2.0) as plaintext, pytest.raises(Unavailable):
        plaintext.get(keys[0])

    stranger = make_certs(tmp_path / "other-ca", 1).client
    with Client(router.address, timeout=2.0, tls=stranger) as wrong_ca, pytest.raises(Unavailable):
        wrong_ca.get(keys[0])

    # A node's port refuses a plaintext caller too, and one with another CA's certificate.
    for channel in (
        grpc.insecure_channel(cluster.addresses[1]),
        secure_channel(cluster.addresses[1], stranger),
    ):
        with channel, pytest.raises(grpc.RpcError) as refused:
            node_pb2_grpc.NodeStub(channel).Status(  # type: ignore[no-untyped-call]
                node_pb2.StatusRequest(), timeout=RPC_TIMEOUT
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
