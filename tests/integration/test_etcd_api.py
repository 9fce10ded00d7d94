"""etcd's v3 API on the router, driven by Debian's etcdctl, a client nobody here wrote.

Every call goes through a real router process to a three-node cluster of
four groups: keys of one prefix land in every group, so a prefix read, a
range delete and a transaction over several keys all cross groups.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from shardkv.etcd import rpc_pb2, rpc_pb2_grpc
from shardkv.revisions import GROUP_BITS
from tests.integration.conftest import Cluster, clean_environment
from tests.integration.etcdctl import Etcdctl
from tests.integration.etcdctl import etcdctl as etcdctl  # the fixtures
from tests.integration.etcdctl import etcdctl_path as etcdctl_path
from tests.integration.routers import RouterProcess

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0


def lines(output: str) -> list[str]:
    return output.splitlines()


def test_put_get_and_delete_keys_across_groups(etcdctl: Etcdctl) -> None:
    written = list(range(20))
    random.Random(5).shuffle(written)  # creation order is not key order
    for n in written:
        assert etcdctl.run("put", f"/svc/{n:02d}", f"v{n}").strip() == "OK"
    etcdctl.run("put", "/other", "x")
    assert lines(etcdctl.run("get", "/svc/07")) == ["/svc/07", "v7"]
    assert etcdctl.run("get", "/missing") == ""
    listed = lines(etcdctl.run("get", "--prefix", "/svc/"))
    assert listed[0::2] == [f"/svc/{n:02d}" for n in range(20)], "every group's keys, in key order"
    assert listed[1::2] == [f"v{n}" for n in range(20)]
    keys_only = lines(etcdctl.run("get", "--prefix", "--keys-only", "/svc/"))
    assert keys_only[0::2] == [f"/svc/{n:02d}" for n in range(20)]
    assert keys_only[1::2] == [""] * 20, "no values"
    assert lines(etcdctl.run("get", "--prefix", "--limit=3", "/svc/"))[0::2] == [
        "/svc/00",
        "/svc/01",
        "/svc/02",
    ]
    assert etcdctl.json("get", "--prefix", "--limit=1", "/svc/")["count"] == 20
    # A range: [/svc/05, /svc/08).
    assert lines(etcdctl.run("get", "/svc/05", "/svc/08"))[0::2] == [
        "/svc/05",
        "/svc/06",
        "/svc/07",
    ]
    # Descending by key, and by create revision (the order they were written in).
    descending = lines(etcdctl.run("get", "--prefix", "--sort-by=KEY", "--order=DESCEND", "/svc/"))
    assert descending[0::2] == [f"/svc/{n:02d}" for n in reversed(range(20))]
    by_create = lines(etcdctl.run("get", "--prefix", "--sort-by=CREATE", "--order=ASCEND", "/svc/"))
    assert by_create[0::2] == [f"/svc/{n:02d}" for n in written], "revisions order every group"
    # Every key from /svc/18 on.
    assert lines(etcdctl.run("get", "--from-key", "/svc/18"))[0::2] == ["/svc/18", "/svc/19"]

    assert etcdctl.run("put", "--prev-kv", "/svc/03", "again").splitlines() == [
        "OK",
        "/svc/03",
        "v3",
    ]
    assert lines(etcdctl.run("del", "/svc/03")) == ["1"]
    assert lines(etcdctl.run("del", "--prev-kv", "/svc/04")) == ["1", "/svc/04", "v4"]
    assert lines(etcdctl.run("del", "--prefix", "/svc/1")) == ["10"]
    assert lines(etcdctl.run("get", "--prefix", "--keys-only", "/svc/"))[0::2] == [
        "/svc/00",
        "/svc/01",
        "/svc/02",
        "/svc/05",
        "/svc/06",
        "/svc/07",
        "/svc/08",
        "/svc/09",
    ]
    assert lines(etcdctl.run("get", "/other")) == ["/other", "x"], "outside the prefix: kept"


def test_versions_and_revisions_are_etcds(etcdctl: Etcdctl) -> None:
    first = etcdctl.json("put", "k", "1")
    second = etcdctl.json("put", "k", "2")
    got = etcdctl.json("get", "k")
    (kv,) = got["kvs"]
    assert kv["version"] == 2
    assert kv["create_revision"] == first["header"]["revision"]
    assert kv["mod_revision"] == second["header"]["revision"] > kv["create_revision"]
    # One after another over keys of every group: each ranks above the one before.
    revisions = [etcdctl.json("put", f"order/{n}", "x")["header"]["revision"] for n in range(12)]
    assert revisions == sorted(revisions) and revisions[0] > second["header"]["revision"]
    groups = {revision % (1 << GROUP_BITS) for revision in revisions}
    assert len(groups) > 1, f"the keys landed in one group only: {groups}"
    assert got["header"]["revision"] % (1 << GROUP_BITS) == 0, "a read's revision is no write's"
    # Compaction keeps nothing: a read at a past revision is refused, as etcd refuses it.
    assert etcdctl.run("compaction", str(first["header"]["revision"])).startswith("compacted")
    refused = etcdctl.run("get", "k", f"--rev={first['header']['revision']}", check=False)
    assert "required revision has been compacted" in refused


def test_transactions_compare_and_write_keys_of_several_groups(etcdctl: Etcdctl) -> None:
    for n in range(6):
        etcdctl.run("put", f"acct/{n}", "10")
    script = (
        "\n".join(
            [
                'value("acct/0") = "10"',
                'version("acct/1") = "1"',
                "",
                "put acct/0 5",
                "put acct/1 15",
                "put acct/2 12",
                "get acct/3",
                "",
                "put acct/0 refused",
                "",
            ]
        )
        + "\n"
    )
    out = lines(etcdctl.run("txn", stdin=script))
    assert out == ["SUCCESS", "", "OK", "", "OK", "", "OK", "", "acct/3", "10"]
    assert lines(etcdctl.run("get", "acct/0")) == ["acct/0", "5"]
    assert lines(etcdctl.run("get", "acct/1")) == ["acct/1", "15"]
    assert lines(etcdctl.run("get", "acct/2")) == ["acct/2", "12"]
    # The compare fails now: the failure branch runs, the success branch does not.
    out = lines(etcdctl.run("txn", stdin=script))
    assert out == ["FAILURE", "", "OK"]
    assert lines(etcdctl.run("get", "acct/0")) == ["acct/0", "refused"]
    assert lines(etcdctl.run("get", "acct/1")) == ["acct/1", "15"]
    # The lock recipe's compare: create only if absent, and read the prefix after.
    create = "\n".join(
        [
            'create("lock/a") = "0"',
            "",
            "put lock/a me",
            "get --prefix lock/",
            "",
            "get lock/a",
            "",
            "",
        ]
    )
    assert lines(etcdctl.run("txn", stdin=create)) == ["SUCCESS", "", "OK", "", "lock/a", "me"]
    assert lines(etcdctl.run("txn", stdin=create)) == ["FAILURE", "", "lock/a", "me"]
    # prev-kv puts and deletes ride in the transaction; a range delete runs after it.
    etcdctl.run("put", "lock/b", "b")
    moves = "\n".join(
        [
            'value("lock/a") = "me"',
            "",
            "put --prev-kv lock/a you",
            "del --prev-kv lock/b",
            "del --prefix acct/",
            "",
            "",
            "",
        ]
    )
    assert lines(etcdctl.run("txn", stdin=moves)) == [
        "SUCCESS",
        "",
        "OK",
        "lock/a",
        "me",
        "",
        "1",
        "lock/b",
        "b",
        "",
        "6",
    ]
    assert lines(etcdctl.run("get", "--prefix", "lock/")) == ["lock/a", "you"]
    assert etcdctl.run("get", "--prefix", "acct/") == ""


def test_endpoint_status_member_list_and_errors(etcdctl: Etcdctl) -> None:
    (status,) = etcdctl.json("endpoint", "status")
    assert status["Status"]["version"] == "3.5.0"
    members = etcdctl.json("member", "list")["members"]
    assert [member["clientURLs"] for member in members] == [[f"http://{etcdctl.endpoint}"]]
    health = etcdctl.run("endpoint", "health", check=False)
    assert "is healthy" in health, health
    refused = etcdctl.run("put", "leased", "x", "--lease=1234abcd", check=False)
    assert "requested lease not found" in refused


def test_range_requests_over_grpc_keep_etcds_wire_format(
    routed: tuple[Cluster, RouterProcess],
) -> None:
    _, router = routed
    with grpc.insecure_channel(router.address) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for n in range(5):
            kv.Put(rpc_pb2.PutRequest(key=b"w/%d" % n, value=b"%d" % n), timeout=TIMEOUT)
        everything = kv.Range(rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00"), timeout=TIMEOUT)
        assert [item.key for item in everything.kvs] == [b"w/%d" % n for n in range(5)]
        limited = kv.Range(
            rpc_pb2.RangeRequest(key=b"w/", range_end=b"w0", limit=2), timeout=TIMEOUT
        )
        assert (len(limited.kvs), limited.more, limited.count) == (2, True, 5)
        counted = kv.Range(
            rpc_pb2.RangeRequest(key=b"w/", range_end=b"w0", count_only=True), timeout=TIMEOUT
        )
        assert (len(counted.kvs), counted.count) == (0, 5)
        newest = max(everything.kvs, key=lambda item: item.mod_revision)
        since = kv.Range(
            rpc_pb2.RangeRequest(key=b"w/", range_end=b"w0", min_mod_revision=newest.mod_revision),
            timeout=TIMEOUT,
        )
        assert [item.key for item in since.kvs] == [newest.key]
        backwards = kv.Range(rpc_pb2.RangeRequest(key=b"w/3", range_end=b"w/1"), timeout=TIMEOUT)
        assert (list(backwards.kvs), backwards.count) == ([], 0), "an empty range, as etcd's"


def test_the_pypi_etcd3_client_works_unchanged(routed: tuple[Cluster, RouterProcess]) -> None:
    _, router = routed
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.etcd3_client", router.address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **clean_environment(),
            "PYTHONPATH": str(REPO),
            "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
        },
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
