"""Real node processes finish transactions whose coordinator died (the resolver).

No router runs here: the tests write the coordinator's commands straight into
the groups (``ClusterClient.write``) and then stop, as a router that crashed
at that point would. Nothing else touches the keys afterwards, so only the
nodes' background resolvers can free them, within about the locks' deadline
plus the resolve interval (0.5 s by default).
"""

from __future__ import annotations

import sys
import time

import grpc
import pytest

from shardkv.txn_protocol import now_ms
from shardkv.v1 import kv_pb2, node_pb2
from tests.integration.conftest import (
    RPC_TIMEOUT,
    Cluster,
    ClusterClient,
    MakeCluster,
    Settings,
    clean_environment,
    put_command,
    wait_until,
)

pytestmark = pytest.mark.integration

CLIENT = 0x7E5
TTL_MS = 1000
# How long past the deadline the resolvers may take (interval 0.5 s, plus a
# new leader's election when one was killed).
SLACK = 6.0


def prepare_command(
    seq: int, key: bytes, primary_key: bytes, deadline_ms: int, participants: list[bytes]
) -> kv_pb2.Command:
    prepare = kv_pb2.TxnPrepare(
        primary_key=primary_key,
        deadline_ms=deadline_ms,
        then_ops=[kv_pb2.Operation(put=kv_pb2.Put(key=key, value=b"staged"))],
        participant_keys=participants,
    )
    return kv_pb2.Command(client_id=CLIENT, seq=seq, txn=kv_pb2.TxnStep(prepare=prepare))


def prepare_two(
    client: ClusterClient, primary: tuple[int, bytes], other: tuple[int, bytes]
) -> tuple[kv_pb2.TxnRef, int]:
    """Prepare one transaction in both groups, as its coordinator would; its ref and deadline."""
    seq = client.next_seq()
    deadline_ms = now_ms() + TTL_MS
    (primary_group, primary_key), (other_group, other_key) = primary, other
    for group_id, key, participants in (
        (primary_group, primary_key, [primary_key, other_key]),
        (other_group, other_key, []),
    ):
        result = client.write(
            group_id, prepare_command(seq, key, primary_key, deadline_ms, participants)
        )
        assert not result.HasField("locked") and not result.txn.HasField("record"), result
    return kv_pb2.TxnRef(client_id=CLIENT, seq=seq), deadline_ms


def list_txns(cluster: Cluster, group_id: int) -> node_pb2.ListTxnsResponse | None:
    """The group's transactions from its leader, or None if none answers now."""
    leaders = cluster.leaders()
    if leaders is None:
        return None
    request = node_pb2.ListTxnsRequest(group_id=group_id)
    try:
        response: node_pb2.ListTxnsResponse = cluster.stub(leaders[group_id]).ListTxns(
            request, timeout=RPC_TIMEOUT
        )
    except grpc.RpcError:
        return None
    return None if response.HasField("error") else response


def resolved(
    cluster: Cluster, primary: int, other: int, txn: kv_pb2.TxnRef
) -> kv_pb2.TxnRecord | None:
    """The finished record, once neither group holds a lock or a prepare any more."""
    answers = [list_txns(cluster, group_id) for group_id in (primary, other)]
    if any(answer is None or answer.prepared for answer in answers):
        return None
    records = [record for record in answers[0].records if record.txn == txn]  # type: ignore[union-attr]
    return records[0] if records and records[0].finished else None


def until_deadline(deadline_ms: int) -> float:
    return max(0.0, deadline_ms / 1000 - time.time()) + SLACK


def cluster_of(make_cluster: MakeCluster, groups: int = 4) -> tuple[Cluster, ClusterClient]:
    cluster = make_cluster(Settings(nodes=3, groups=groups))
    cluster.start_all()
    cluster.wait_leaders()
    return cluster, ClusterClient(cluster, client_id=CLIENT)


def test_an_undecided_transaction_is_aborted_once_its_locks_expire(
    make_cluster: MakeCluster,
) -> None:
    cluster, client = cluster_of(make_cluster)
    primary_key, other_key = cluster.key(1, "primary"), cluster.key(2, "other")
    txn, deadline_ms = prepare_two(client, (1, primary_key), (2, other_key))
    locked = client.write(2, client_put(client, other_key, b"early"))
    assert locked.HasField("locked") and locked.locked.txn == txn

    record = wait_until(
        "the resolvers to abort the transaction in both groups",
        lambda: resolved(cluster, 1, 2, txn),
        until_deadline(deadline_ms),
    )
    assert record.state == kv_pb2.TXN_ABORTED
    assert client.read(1, [primary_key]) == {}
    assert client.read(2, [other_key]) == {}
    for group_id, key in ((1, primary_key), (2, other_key)):
        after = client.put(group_id, key, b"after")
        assert not after.HasField("locked"), after


def test_a_commit_recorded_at_the_primary_only_is_finished_everywhere(
    make_cluster: MakeCluster,
) -> None:
    cluster, client = cluster_of(make_cluster)
    primary_key, other_key = cluster.key(3, "primary"), cluster.key(4, "other")
    txn, deadline_ms = prepare_two(client, (3, primary_key), (4, other_key))
    decide = kv_pb2.TxnDecide(txn=txn, commit=True, then_branch=True)
    decided = client.write(3, kv_pb2.Command(txn=kv_pb2.TxnStep(decide=decide)))
    assert decided.txn.record.state == kv_pb2.TXN_COMMITTED
    # The router "died" here: group 4 still holds its lock and its staged put.
    assert client.read(4, [other_key]) == {}

    record = wait_until(
        "the resolvers to finish the committed transaction",
        lambda: resolved(cluster, 3, 4, txn),
        until_deadline(deadline_ms),
    )
    assert record.state == kv_pb2.TXN_COMMITTED
    assert client.read(3, [primary_key])[primary_key].value == b"staged"
    assert client.read(4, [other_key])[other_key].value == b"staged"


def test_a_resolver_that_crashes_after_the_record_is_finished_by_the_next_leaders(
    make_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Groups 3 and 6 prefer node 1 as their leader (group_id mod 3 voters);
    # only node 1 runs with the failpoint, so its resolver dies right after
    # writing ABORTED at the primary and before finishing anything else.
    cluster = make_cluster(Settings(nodes=3, groups=6))
    harness = sys.modules[Cluster.__module__]
    for node_id in (2, 3):
        cluster.start(node_id, wait=False)
    with monkeypatch.context() as patch:
        patch.setattr(
            harness,
            "clean_environment",
            lambda: {**clean_environment(), "SHARDKV_FAILPOINTS": "txn.resolver=exit"},
        )
        cluster.start(1, wait=False)
    for node_id in (1, 2, 3):
        cluster.wait_serving(node_id)

    def node_1_leads_both() -> bool:
        leaders = cluster.leaders()
        return leaders is not None and leaders[3] == leaders[6] == 1

    wait_until("node 1 to lead groups 3 and 6", node_1_leads_both)
    client = ClusterClient(cluster, client_id=CLIENT)
    primary_key, other_key = cluster.key(3, "primary"), cluster.key(6, "other")
    txn, deadline_ms = prepare_two(client, (3, primary_key), (6, other_key))

    process = cluster.processes[1]
    wait_until(
        "node 1 to crash at the failpoint",
        lambda: process.poll() is not None,
        until_deadline(deadline_ms),
    )
    assert process.returncode == -9, cluster.log_tail(1)
    cluster.kill(1)  # (already dead: forgotten by the harness)

    record = wait_until(
        "nodes 2 and 3 to finish what node 1's resolver left",
        lambda: resolved(cluster, 3, 6, txn),
        until_deadline(deadline_ms),
    )
    assert record.state == kv_pb2.TXN_ABORTED
    assert client.read(3, [primary_key]) == {}
    assert client.read(6, [other_key]) == {}


def client_put(client: ClusterClient, key: bytes, value: bytes) -> kv_pb2.Command:
    return put_command(client.client_id, client.next_seq(), key, value)
