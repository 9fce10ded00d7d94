"""etcd's leases on the router, driven by Debian's etcdctl.

Through a real router to three nodes of four groups: a lease's keys land in
several groups, and its record in one of them (its owner group), whose
leader expires it; the router deletes what it held in one transaction.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from shardkv.leases import lease_key
from tests.integration.conftest import Cluster, wait_until
from tests.integration.etcdctl import Etcdctl
from tests.integration.etcdctl import etcdctl as etcdctl  # the fixtures
from tests.integration.etcdctl import etcdctl_path as etcdctl_path
from tests.integration.routers import RouterProcess

pytestmark = pytest.mark.integration

GRANTED = re.compile(r"lease ([0-9a-f]+) granted with TTL\((\d+)s\)")


def grant(etcdctl: Etcdctl, ttl: int) -> str:
    found = GRANTED.search(etcdctl.run("lease", "grant", str(ttl)))
    assert found is not None
    assert int(found.group(2)) == ttl
    return found.group(1)


def keys(etcdctl: Etcdctl, prefix: str) -> list[str]:
    return etcdctl.run("get", "--prefix", "--keys-only", prefix).split()


def test_grant_attach_list_keep_alive_and_revoke(etcdctl: Etcdctl) -> None:
    asked = time.monotonic()
    lease = grant(etcdctl, 30)
    names = [f"/svc/{n}" for n in range(8)]  # keys of every group
    for name in names:
        assert etcdctl.run("put", f"--lease={lease}", name, "up").strip() == "OK"
    etcdctl.run("put", "/svc/plain", "no lease")
    got = etcdctl.json("get", "/svc/3")
    assert got["kvs"][0]["lease"] == int(lease, 16)
    assert lease in etcdctl.run("lease", "list")
    ttl = etcdctl.run("lease", "timetolive", "--keys", lease)
    assert f"lease {lease} granted with TTL(30s)" in ttl
    remaining = int(re.search(r"remaining\((\d+)s\)", ttl).group(1))  # type: ignore[union-attr]
    assert 30 - (time.monotonic() - asked) - 1 <= remaining <= 30
    assert sorted(re.search(r"attached keys\(\[(.*)\]\)", ttl).group(1).split()) == names  # type: ignore[union-attr]
    assert f"lease {lease} keepalived with TTL(30)" in etcdctl.run(
        "lease", "keep-alive", "--once", lease
    )
    # A key put again without the lease leaves it; the others go with the lease.
    etcdctl.run("put", "/svc/0", "kept")
    assert etcdctl.run("lease", "revoke", lease).strip() == f"lease {lease} revoked"
    assert keys(etcdctl, "/svc/") == ["/svc/0", "/svc/plain"], "deleted before the answer"
    assert etcdctl.run("get", "/svc/0").split() == ["/svc/0", "kept"]
    assert lease not in etcdctl.run("lease", "list")
    assert f"lease {lease} already expired" in etcdctl.run("lease", "timetolive", lease)
    # The lease is gone: attaching to it or revoking it again is refused.
    refused = etcdctl.run("put", f"--lease={lease}", "/svc/late", "x", check=False)
    assert "requested lease not found" in refused
    assert "requested lease not found" in etcdctl.run("lease", "revoke", lease, check=False)
    # The store's own keys (lease records, the index) are not listed.
    everything = etcdctl.run("get", "--from-key", "", "--keys-only").split()
    assert everything == ["/svc/0", "/svc/plain"]


def test_keys_vanish_once_their_lease_expires(etcdctl: Etcdctl) -> None:
    ttl = 6
    asked = time.monotonic()  # before the grant: its TTL runs from a little later
    lease = grant(etcdctl, ttl)
    for n in range(6):
        etcdctl.run("put", f"--lease={lease}", f"/tmp/{n}", "x")
    present = keys(etcdctl, "/tmp/")
    if time.monotonic() - asked >= ttl - 0.5:
        pytest.fail("granting and putting took the whole TTL; nothing checked before it")
    assert len(present) == 6, "not before the TTL"
    started = time.monotonic()
    wait_until("the leased keys gone", lambda: keys(etcdctl, "/tmp/") == [], ttl + 10)
    took = time.monotonic() - started
    assert time.monotonic() - asked >= ttl, "not before the TTL"
    assert took < ttl + 6
    assert f"lease {lease} already expired" in etcdctl.run("lease", "timetolive", lease)


def test_register_under_a_lease_list_by_prefix_kill_the_registrar_and_see_them_vanish(
    etcdctl: Etcdctl, routed: tuple[Cluster, RouterProcess]
) -> None:
    """The pattern of etcd's docs: services register under a lease a keep-alive renews;
    discovery lists the prefix; the registrar dies and its entries go after the TTL,
    while a leader of the lease's group fails over in between."""
    cluster, _ = routed
    ttl = 4
    lease = grant(etcdctl, ttl)
    services = [f"/services/api/{n}" for n in range(5)]
    for n, name in enumerate(services):
        etcdctl.run("put", f"--lease={lease}", name, f"10.0.0.{n}:80")
    registrar = subprocess.Popen(
        [etcdctl.path, f"--endpoints={etcdctl.endpoint}", "lease", "keep-alive", lease],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )
    try:
        # Renewed past several TTLs, across a node's crash and restart (some
        # group leaders move; a new leader restarts the deadlines at the full TTL).
        time.sleep(ttl + 1)
        owner = cluster.ring.group_for(lease_key(int(lease, 16)))
        leader = cluster.wait_leaders()[owner]
        cluster.kill(leader)  # the lease's owner group fails over
        time.sleep(ttl + 1)
        assert keys(etcdctl, "/services/") == services
        cluster.start(leader)
        time.sleep(1)
        assert keys(etcdctl, "/services/") == services
        assert registrar.poll() is None, "the keep-alive runs on"
    finally:
        registrar.send_signal(signal.SIGKILL)
        output, _ = registrar.communicate(timeout=10)
    assert f"lease {lease} keepalived with TTL({ttl})" in output
    killed = time.monotonic()
    wait_until("the registrations gone", lambda: keys(etcdctl, "/services/") == [], ttl + 10)
    assert time.monotonic() - killed >= ttl - 1.5, "not long before the TTL"


def test_a_lease_outlives_a_router_restart(
    etcdctl: Etcdctl, routed: tuple[Cluster, RouterProcess]
) -> None:
    _, router = routed
    lease = grant(etcdctl, 60)
    etcdctl.run("put", f"--lease={lease}", "/held", "x")
    router.stop()
    router.start()
    assert "granted with TTL(60s)" in etcdctl.run("lease", "timetolive", lease)
    assert etcdctl.run("get", "/held").split() == ["/held", "x"]
