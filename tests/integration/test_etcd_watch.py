"""etcd's Watch, lock and election on the router, driven by Debian's etcdctl.

Through a real router to three nodes of four groups: a watched prefix spans
every group, and the router merges the groups' streams in revision order.
``etcdctl lock`` and ``elect`` run etcd's own recipes (sessions under a
lease, a create-revision compare, waiting on deletes by watch) unchanged.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from router.client import Client
from shardkv.revisions import GROUP_BITS
from tests.integration.conftest import Cluster, wait_until
from tests.integration.etcdctl import Etcdctl
from tests.integration.etcdctl import etcdctl as etcdctl  # the fixtures
from tests.integration.etcdctl import etcdctl_path as etcdctl_path
from tests.integration.routers import RouterProcess
from tests.integration.test_rebalance import wait_change_done

pytestmark = pytest.mark.integration

ENV = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}


class Background:
    """An etcdctl that runs on (a watch, a lock holder), its output lines collected."""

    def __init__(self, etcdctl: Etcdctl, *arguments: str) -> None:
        self.process = subprocess.Popen(
            [etcdctl.path, f"--endpoints={etcdctl.endpoint}", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, condition: Callable[[list[str]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition(list(self.lines)):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s; output: {self.lines[-20:]}")
            if self.process.poll() is not None:
                self._reader.join(2)
                if not condition(list(self.lines)):
                    raise AssertionError(f"exited {self.process.returncode}: {self.lines[-20:]}")
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        self._reader.join(5)


def opened(etcdctl: Etcdctl, watch: Background, prefix: str) -> None:
    """Until ``watch`` (of ``prefix``) is open: it sees a key written now."""
    sentinel = f"{prefix}~ready"

    def seen(lines: list[str]) -> bool:
        return any(key == sentinel for _, key, _, _ in watched(lines))

    deadline = time.monotonic() + 30
    while not seen(watch.lines):
        assert time.monotonic() < deadline, f"the watch of {prefix} never opened: {watch.lines}"
        etcdctl.run("put", sentinel, "")
        time.sleep(0.3)


def wait_keys(etcdctl: Etcdctl, prefix: str, count: int, timeout: float = 20) -> None:
    wait_until(
        f"{count} keys under {prefix}",
        lambda: len(etcdctl.run("get", "--prefix", "--keys-only", prefix).split()) >= count,
        timeout,
    )


def watched(lines: list[str]) -> list[tuple[str, str, str, int]]:
    """(type, key, value, mod revision) of every event in ``-w json`` watch output."""
    events = []
    for line in lines:
        if not line.startswith("{"):
            continue
        response: dict[str, Any] = json.loads(line)
        for event in response.get("Events") or []:
            kv = event["kv"]
            events.append(
                (
                    "DELETE" if event.get("type") == 1 else "PUT",
                    base64.b64decode(kv["key"]).decode(),
                    base64.b64decode(kv.get("value", "")).decode(),
                    int(kv.get("mod_revision", 0)),
                )
            )
    return events


def test_a_prefix_watch_sees_every_groups_changes_in_revision_order(etcdctl: Etcdctl) -> None:
    watch = Background(etcdctl, "watch", "-w", "json", "--prefix", "/w/")
    try:
        opened(etcdctl, watch, "/w/")
        etcdctl.run("put", "/outside", "not watched")
        for n in range(10):
            etcdctl.run("put", f"/w/{n}", f"v{n}")
        etcdctl.run("put", "/w/3", "again")
        etcdctl.run("del", "/w/5")
        etcdctl.run("del", "--prefix", "/w/8")
        etcdctl.run("put", "/w/~end", "")
        watch.wait_for(lambda lines: any(key == "/w/~end" for _, key, _, _ in watched(lines)))
        events = [event for event in watched(watch.lines) if "~" not in event[1]]
    finally:
        watch.stop()
    groups = {revision & ((1 << GROUP_BITS) - 1) for _, _, _, revision in events}
    assert len(groups) > 1, "the prefix spans groups"
    expected = [("PUT", f"/w/{n}", f"v{n}") for n in range(10)]
    expected += [("PUT", "/w/3", "again"), ("DELETE", "/w/5", ""), ("DELETE", "/w/8", "")]
    assert [event[:3] for event in events] == expected, "each once, in the order written"
    revisions = [event[3] for event in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)


def test_a_watch_from_a_past_revision_replays_then_follows(etcdctl: Etcdctl) -> None:
    etcdctl.run("put", "/h/before", "not replayed")
    first = etcdctl.json("put", "/h/0", "a")["header"]["revision"]
    for n in range(1, 6):
        etcdctl.run("put", f"/h/{n}", "b")
    watch = Background(etcdctl, "watch", "-w", "json", f"--rev={first}", "--prefix", "/h/")
    try:
        watch.wait_for(lambda lines: len(watched(lines)) >= 6)
        etcdctl.run("put", "/h/6", "c")
        watch.wait_for(lambda lines: len(watched(lines)) >= 7)
        events = watched(watch.lines)
    finally:
        watch.stop()
    assert [key for _, key, _, _ in events] == [f"/h/{n}" for n in range(7)], "none before"
    assert events[0][3] == first


def test_etcdctl_lock_excludes_and_a_dead_holders_lock_passes_on(etcdctl: Etcdctl) -> None:
    # Two holders in turn: each prints when it got the lock and when it let go.
    hold = "date +%s.%N; sleep 1.5; date +%s.%N"
    holders = [
        Background(etcdctl, "lock", "--ttl=5", "/locks/job", "--", "sh", "-c", hold)
        for _ in range(2)
    ]
    try:
        for holder in holders:
            holder.wait_for(lambda lines: sum(1 for line in lines if line[:1].isdigit()) >= 2, 40)
            holder.process.wait(timeout=20)
            assert holder.process.returncode == 0, holder.lines
    finally:
        for holder in holders:
            holder.stop()
    spans = sorted(
        tuple(float(line) for line in holder.lines if line[:1].isdigit()) for holder in holders
    )
    assert spans[0][1] <= spans[1][0], f"the lock was held twice at once: {spans}"
    # A holder killed without letting go: the next gets the lock once its session's lease ends.
    dead = Background(etcdctl, "lock", "--ttl=3", "/locks/job")
    waiter: Background | None = None
    try:
        dead.wait_for(lambda lines: any(line.startswith("/locks/job/") for line in lines))
        waiter = Background(etcdctl, "lock", "--ttl=3", "/locks/job")
        # Both keys are there: the waiter is waiting, not yet arrived.
        wait_keys(etcdctl, "/locks/job/", 2)
        time.sleep(0.5)
        assert not any(line.startswith("/locks/job/") for line in waiter.lines), "still held"
        dead.stop(signal.SIGKILL)
        killed = time.monotonic()
        waiter.wait_for(lambda lines: any(line.startswith("/locks/job/") for line in lines), 20)
        assert time.monotonic() - killed > 1.0, "not before the dead holder's lease ended"
    finally:
        if waiter is not None:
            waiter.stop(signal.SIGINT)
        dead.stop()


def test_etcdctl_elect_campaigns_observes_and_hands_over(
    etcdctl: Etcdctl, routed: tuple[Cluster, RouterProcess]
) -> None:
    running: list[Background] = []
    try:
        first = Background(etcdctl, "elect", "/election/db", "primary-1")
        running.append(first)
        first.wait_for(lambda lines: "primary-1" in lines)
        second = Background(etcdctl, "elect", "/election/db", "primary-2")
        running.append(second)
        observer = Background(etcdctl, "elect", "--listen", "/election/db")
        running.append(observer)
        observer.wait_for(lambda lines: "primary-1" in lines)
        wait_keys(etcdctl, "/election/db/", 2)  # the second candidate is campaigning
        time.sleep(0.5)
        assert "primary-2" not in second.lines, "one leader at a time"
        first.stop(signal.SIGINT)  # resigns: its session's lease is revoked
        second.wait_for(lambda lines: "primary-2" in lines)
        observer.wait_for(lambda lines: "primary-2" in lines)
    finally:
        for process in reversed(running):
            process.stop(signal.SIGINT)


def test_a_watch_survives_a_crash_a_router_restart_and_a_ring_change(
    etcdctl: Etcdctl, routed: tuple[Cluster, RouterProcess]
) -> None:
    """Writes go on while a node dies (group leaders move), the router restarts
    (etcdctl's watch resumes from the revision after the last it saw) and a
    group is added (keys move into it): every acknowledged write is seen,
    none twice, and revisions only rise."""
    cluster, router = routed
    watch = Background(etcdctl, "watch", "-w", "json", "--prefix", "/s/")
    opened(etcdctl, watch, "/s/")
    acknowledged: list[str] = []
    retried: set[str] = set()

    def write(count: int) -> None:
        for _ in range(count):
            key = f"/s/{len(acknowledged):03d}"
            for _ in range(60):
                output = etcdctl.run("put", key, key, check=False)
                if output.strip() == "OK":
                    acknowledged.append(key)
                    break
                retried.add(key)  # perhaps applied: may be seen twice
                time.sleep(0.25)
            else:
                raise AssertionError(f"{key} could not be written: {output}")

    try:
        write(15)
        cluster.kill(1)
        write(15)
        cluster.start(1)
        router.stop()
        router.start()
        write(15)
        with Client(router.address, timeout=20.0) as client:
            change = client.add_group()
            write(15)
            wait_change_done(cluster, change, timeout=60)
        write(15)
        watch.wait_for(
            lambda lines: {key for _, key, _, _ in watched(lines)} >= set(acknowledged), 60
        )
        # Events come in revision order, so a late duplicate comes before this one.
        etcdctl.run("put", "/s/~end", "")
        watch.wait_for(lambda lines: any(key == "/s/~end" for _, key, _, _ in watched(lines)))
        events = watched(watch.lines)
        assert watch.process.poll() is None, f"the watch ended: {watch.lines[-20:]}"
    finally:
        watch.stop()
    events = [event for event in events if "~" not in event[1]]
    seen = [key for _, key, _, _ in events]
    for key in acknowledged:
        assert seen.count(key) == 1 or (key in retried and seen.count(key) > 1), key
    revisions = [revision for _, _, _, revision in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions), (
        "in revision order, none twice"
    )
