"""The ``shardkv`` CLI against the fake router, and ``shardkv up``'s launcher pieces.

The launcher's supervision is tested with stand-in children (tiny Python
processes that sleep, exit or ignore SIGTERM), so these tests show crash
reporting and shutdown without a real cluster; a real ``shardkv up`` is the
integration tests' job.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from router import cli, launcher
from router.cli import (
    DEFAULT_ROUTER,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PLANNING_RATE,
    escape,
    format_placement,
    format_plan,
    format_status,
    format_txn,
    format_txn_list,
    main,
    plan_rows,
    resolve_router,
    summarize_status,
)
from router.launcher import (
    ChildSpec,
    LaunchError,
    Layout,
    check_ports_free,
    child_specs,
    resolve_layout,
    run_up,
    supervise,
    wait_ready,
    write_layout,
)
from shardkv.ring import build_ring, moving_shares, ring_of
from shardkv.txn_protocol import now_ms
from shardkv.v1 import cluster_pb2, kv_pb2, node_pb2, node_pb2_grpc, router_pb2
from tests.ports import free_port_run, free_ports
from tests.unit.test_client import FakeRouter, RouterThread, four_groups


@pytest.fixture
def fake() -> FakeRouter:
    return FakeRouter()


@pytest.fixture
def router(fake: FakeRouter, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The fake router's address, also in $SHARDKV_ROUTER (as a user would set it)."""
    server = RouterThread(fake)
    monkeypatch.setenv("SHARDKV_ROUTER", server.address)
    yield server.address
    server.stop()


class _Stdout(io.TextIOWrapper):
    """A stdout with a byte buffer that can claim to be a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8")
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def written(self) -> bytes:
        self.flush()
        raw = self.buffer
        assert isinstance(raw, io.BytesIO)
        return raw.getvalue()


class _Stdin:
    def __init__(self, data: bytes, tty: bool = False) -> None:
        self.buffer = io.BytesIO(data)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def run(monkeypatch: pytest.MonkeyPatch, *argv: str, tty: bool = False) -> tuple[int, bytes]:
    stdout = _Stdout(tty)
    monkeypatch.setattr(sys, "stdout", stdout)
    status = main(list(argv))
    return status, stdout.written()


# -- arguments --------------------------------------------------------------------------


def test_router_address_from_flag_then_environment_then_default() -> None:
    assert resolve_router("10.0.0.1:1", {"SHARDKV_ROUTER": "10.0.0.2:2"}) == "10.0.0.1:1"
    assert resolve_router(None, {"SHARDKV_ROUTER": "10.0.0.2:2"}) == "10.0.0.2:2"
    assert resolve_router(None, {"SHARDKV_ROUTER": ""}) == DEFAULT_ROUTER == "127.0.0.1:7000"


def test_router_flag_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["--router", "a:1", "get", "k"]).router == "a:1"
    assert parser.parse_args(["get", "k", "--router", "b:2"]).router == "b:2"
    assert parser.parse_args(["--router", "a:1", "get", "--router", "b:2", "k"]).router == "b:2"
    assert not hasattr(parser.parse_args(["get", "k"]), "router")


def test_up_flags_left_out_are_none_so_a_stored_layout_wins() -> None:
    args = cli.build_parser().parse_args(["up"])
    assert (args.nodes, args.groups, args.port, args.data_dir) == (
        None,
        None,
        None,
        Path("shardkv-data"),
    )
    args = cli.build_parser().parse_args(["up", "--nodes", "5", "--groups", "8", "--port", "9000"])
    assert (args.nodes, args.groups, args.port) == (5, 8, 9000)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["get"],
        ["put"],
        ["scan", "--limit", "0"],
        ["up", "--nodes", "x"],
        ["txn"],
        ["txn", "show"],
        ["txn", "resolve", "1:1"],
        ["txn", "resolve", "1:1", "--commit", "--abort"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    assert "exit status" in capsys.readouterr().out


def test_a_bad_router_address_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--router", "nohost", "get", "k"]) == EXIT_USAGE
    assert "host:port" in capsys.readouterr().err


# -- commands against the fake router ---------------------------------------------------


def test_put_then_get_prints_the_raw_value(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(monkeypatch, "put", "greeting", "hello world") == (EXIT_OK, b"")
    assert fake.data == {b"greeting": b"hello world"}
    assert run(monkeypatch, "get", "greeting") == (EXIT_OK, b"hello world")
    assert run(monkeypatch, "get", "greeting", tty=True) == (EXIT_OK, b"hello world\n")


def test_get_passes_bytes_through_untouched(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.data[b"bin"] = b"\x00\xff\n"
    assert run(monkeypatch, "get", "bin") == (EXIT_OK, b"\x00\xff\n")
    # An argument that is not UTF-8 reaches the cluster as the bytes the shell gave.
    assert run(monkeypatch, "put", os.fsdecode(b"k\xff"), "v")[0] == EXIT_OK
    assert fake.data[b"k\xff"] == b"v"


def test_put_reads_the_value_from_stdin(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", _Stdin(b"from\x00stdin"))
    assert run(monkeypatch, "put", "k")[0] == EXIT_OK
    assert fake.data[b"k"] == b"from\x00stdin"
    monkeypatch.setattr(sys, "stdin", _Stdin(b"", tty=True))
    assert run(monkeypatch, "put", "k")[0] == EXIT_USAGE


def test_get_and_delete_of_a_missing_key_exit_1_with_a_note(
    router: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "get", "nope") == (EXIT_NOT_FOUND, b"")
    assert "not found" in capsys.readouterr().err
    assert run(monkeypatch, "delete", "nope") == (EXIT_NOT_FOUND, b"")
    assert "not found" in capsys.readouterr().err


def test_delete_of_an_existing_key(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.data[b"k"] = b"v"
    assert run(monkeypatch, "delete", "k") == (EXIT_OK, b"")
    assert fake.data == {}


def test_scan_prints_escaped_tab_separated_lines(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.data.update({b"a/1": b"one", b"a/2": b"tab\there\n", b"b": "ключ".encode(), b"c": b"\xff"})
    status, out = run(monkeypatch, "scan")
    assert status == EXIT_OK
    assert out.decode().splitlines() == ["a/1\tone", "a/2\ttab\\there\\n", "b\tключ", "c\t\\xff"]
    assert run(monkeypatch, "scan", "--prefix", "a/", "--limit", "1") == (EXIT_OK, b"a/1\tone\n")
    assert run(monkeypatch, "scan", "--start", "a/2", "--end", "c")[1] == (
        "a/2\ttab\\there\\n\nb\tключ\n".encode()
    )
    assert run(monkeypatch, "scan", "--prefix", "a", "--start", "b")[0] == EXIT_USAGE


def test_escape_is_unambiguous() -> None:
    assert escape(b"plain text") == "plain text"
    assert escape("ключ".encode()) == "ключ"
    assert escape(b"back\\slash") == "back\\\\slash"
    assert escape(b"\x00\x1b\t\r\n") == "\\x00\\x1b\\t\\r\\n"
    assert escape(b"\xff\xc3") == "\\xff\\xc3"
    # U+0085 is not printable: written as the character, not as the byte 0x85.
    assert escape("\u0085".encode()) == "\\u0085"
    assert escape(b"\x85") == "\\x85"


def _status_response() -> router_pb2.ClusterStatusResponse:
    response = router_pb2.ClusterStatusResponse()
    response.map.cluster_id = "demo"
    response.map.ring.epoch = 7
    for node_id in (1, 2, 3):
        response.map.nodes.add(node_id=node_id, address=f"127.0.0.1:700{node_id}", state="up")
    for group_id in (0, 1, 2):
        response.map.groups.add(
            group_id=group_id, replicas=[1, 2, 3], weight=0 if group_id == 0 else 1
        )
    response.shares.add(group_id=1, share=0.25)
    response.shares.add(group_id=2, share=0.75)

    def group(
        group_id: int, role: str, leader_id: int, term: int, applied: int
    ) -> node_pb2.GroupStatus:
        return node_pb2.GroupStatus(
            group_id=group_id,
            role=role,
            leader_id=leader_id,
            term=term,
            applied=applied,
            key_count=applied * 10,
            epoch=7 if group_id else 0,
        )

    response.nodes.add(
        node_id=1,
        address="127.0.0.1:7001",
        status=node_pb2.StatusResponse(
            node_id=1,
            groups=[
                group(0, "leader", 1, 2, 30),
                # A deposed leader at an older term: the newer one wins.
                group(1, "leader", 1, 3, 40),
                group(2, "follower", 0, 5, 50),
            ],
        ),
    )
    response.nodes.add(
        node_id=2,
        address="127.0.0.1:7002",
        status=node_pb2.StatusResponse(
            node_id=2,
            groups=[
                group(0, "follower", 1, 2, 30),
                group(1, "leader", 2, 4, 41),
                group(2, "candidate", 0, 6, 52),
            ],
        ),
    )
    response.nodes.add(node_id=3, address="127.0.0.1:7003", error="UNAVAILABLE: connection refused")
    return response


def test_summarize_status_picks_the_current_leader_and_marks_leaderless_groups() -> None:
    summary = summarize_status(_status_response())
    assert (summary.cluster_id, summary.epoch) == ("demo", 7)
    assert [(node.node_id, node.reachable) for node in summary.nodes] == [
        (1, True),
        (2, True),
        (3, False),
    ]
    assert summary.nodes[2].error == "UNAVAILABLE: connection refused"
    groups = {group.group_id: group for group in summary.groups}
    assert (groups[0].leader, groups[0].share) == (1, None)
    assert (groups[1].leader, groups[1].term, groups[1].applied_index, groups[1].key_count) == (
        2,
        4,
        41,
        410,
    )
    assert (groups[2].leader, groups[2].term, groups[2].applied_index) == (None, 6, 52)
    assert groups[2].share == 0.75


def test_status_prints_a_table(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.status = _status_response()
    status, out = run(monkeypatch, "status")
    assert status == EXIT_OK
    lines = out.decode().splitlines()
    assert lines[0] == "cluster demo, ring epoch 7"
    assert lines[2].split() == ["NODE", "ADDRESS", "STATE", "REACHABLE"]
    assert lines[3].split() == ["1", "127.0.0.1:7001", "up", "yes"]
    assert lines[5].split()[:4] == ["3", "127.0.0.1:7003", "up", "no:"]
    assert lines[7].split() == [
        "GROUP", "REPLICAS", "LEARNERS", "LEADER", "PREFERRED", "TERM", "APPLIED", "KEYS",
        "EPOCH", "SHARE",
    ]  # fmt: skip
    assert lines[8].split() == ["0", "1,2,3", "-", "1", "-", "2", "30", "300", "0", "-"]
    assert lines[9].split() == ["1", "1,2,3", "-", "2", "-", "4", "41", "410", "7", "25.0%"]
    assert lines[10].split() == ["2", "1,2,3", "-", "-", "-", "6", "52", "520", "7", "75.0%"]


def test_status_json_is_the_same_summary(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.status = _status_response()
    status, out = run(monkeypatch, "status", "--json")
    assert status == EXIT_OK
    document = json.loads(out)
    assert document["cluster_id"] == "demo"
    assert document["nodes"][2] == {
        "node_id": 3,
        "address": "127.0.0.1:7003",
        "reachable": False,
        "error": "UNAVAILABLE: connection refused",
        "state": "up",
    }
    assert document["groups"][1] == {
        "group_id": 1,
        "replicas": [1, 2, 3],
        "leader": 2,
        "term": 4,
        "applied_index": 41,
        "key_count": 410,
        "epoch": 7,
        "share": 0.25,
        "learners": [],
        "preferred_leader": None,
        "retired": False,
    }
    assert document["groups"][2]["leader"] is None
    assert document["replica_moves"] == []


# -- transactions -----------------------------------------------------------------------

_NOW = 1_700_000_000_000
_REF = kv_pb2.TxnRef(client_id=0x3F2A, seq=17)


def _summaries() -> list[router_pb2.TxnSummary]:
    return [
        router_pb2.TxnSummary(
            txn=_REF,
            state=kv_pb2.TXN_PREPARED,
            primary_key=b"a",
            primary_group=2,
            prepared_groups=[4, 2],
            deadline_ms=_NOW + 4_500,
            locked_keys=[b"a", b"b\tc", b"d", b"e", b"f"],
        ),
        router_pb2.TxnSummary(
            txn=kv_pb2.TxnRef(client_id=0xBEEF, seq=3),
            state=kv_pb2.TXN_COMMITTED,
            primary_group=1,
            deadline_ms=_NOW - 12_000,
        ),
    ]


def _shown() -> router_pb2.ShowTxnResponse:
    prepare = kv_pb2.TxnPrepare(
        primary_key=b"a",
        deadline_ms=_NOW + 4_500,
        compares=[kv_pb2.Compare(key=b"a", target=kv_pb2.Compare.VERSION)],
        then_ops=[kv_pb2.Operation(put=kv_pb2.Put(key=b"a", value=b"1"))],
        participant_keys=[b"a", b"z"],
    )
    other = kv_pb2.TxnPrepare(
        primary_key=b"a",
        deadline_ms=_NOW + 4_500,
        then_ops=[kv_pb2.Operation(delete=kv_pb2.Delete(key=b"z"))],
        else_ops=[kv_pb2.Operation(get=kv_pb2.Get(key=b"y"))],
    )
    return router_pb2.ShowTxnResponse(
        txn=router_pb2.TxnSummary(
            txn=_REF,
            state=kv_pb2.TXN_PREPARED,
            primary_key=b"a",
            primary_group=2,
            prepared_groups=[2, 4],
            deadline_ms=_NOW + 4_500,
        ),
        prepared=[
            kv_pb2.PreparedTxn(
                txn=_REF, prepare=prepare, outcome=kv_pb2.TxnOutcome(succeeded=False)
            ),
            kv_pb2.PreparedTxn(txn=_REF, prepare=other, outcome=kv_pb2.TxnOutcome(succeeded=True)),
        ],
    )


def test_txn_list_table() -> None:
    assert format_txn_list(_summaries(), _NOW).splitlines() == [
        "ID       STATE      DEADLINE           PRIMARY  PREPARED IN  LOCKED KEYS",
        "3f2a:17  prepared   in 4.5s            2        2,4          a, b\\tc, d (+2 more)",
        "beef:3   committed  expired 12.0s ago  1        -            -",
    ]
    assert format_txn_list([], _NOW) == "no unfinished transactions\n"


def test_txn_show_text() -> None:
    assert format_txn(_shown(), _NOW).splitlines() == [
        "transaction 3f2a:17",
        "state        prepared",
        "deadline     in 4.5s",
        "primary      group 2, key a",
        "prepared in  2,4",
        "record       none (not decided)",
        "group 2: 1 compares (failed), 1 then / 0 else operations; locks a",
        "group 4: no compares, 1 then / 1 else operations; locks z, y",
    ]
    decided = _shown()
    decided.record.CopyFrom(
        kv_pb2.TxnRecord(
            txn=_REF, state=kv_pb2.TXN_COMMITTED, then_branch=False, participant_keys=[b"a", b"z"]
        )
    )
    lines = format_txn(decided, _NOW).splitlines()
    assert lines[5:7] == [
        "record       committed, else branch, participants not finished",
        "participants a, z (a key of each)",
    ]


def test_txn_list_and_show_against_the_router(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.txns = _summaries()
    fake.txns[0].deadline_ms = now_ms() + 3_600_000
    status, out = run(monkeypatch, "txn", "list")
    assert status == EXIT_OK
    lines = out.decode().splitlines()
    assert lines[1].split()[:3] == ["3f2a:17", "prepared", "in"]
    assert 3590 < float(lines[1].split()[3].rstrip("s")) <= 3600
    assert lines[2].split()[:3] == ["beef:3", "committed", "expired"]
    fake.shown[(_REF.client_id, _REF.seq)] = _shown()
    status, out = run(monkeypatch, "txn", "show", "3f2a:17")
    assert status == EXIT_OK
    assert out.decode().splitlines()[0] == "transaction 3f2a:17"
    assert fake.requests["ShowTxn"][0].txn == _REF


def test_txn_show_of_an_unknown_transaction_exits_1(
    router: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "txn", "show", "3f2a:18") == (EXIT_NOT_FOUND, b"")
    assert "no group knows the transaction" in capsys.readouterr().err


def test_txn_resolve_commits_or_aborts(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(monkeypatch, "txn", "resolve", "3f2a:17", "--commit") == (
        EXIT_OK,
        b"transaction 3f2a:17 committed\n",
    )
    assert run(monkeypatch, "txn", "resolve", "--abort", "3f2a:17") == (
        EXIT_OK,
        b"transaction 3f2a:17 aborted\n",
    )
    assert [request.commit for request in fake.requests["ResolveTxn"]] == [True, False]
    assert {request.txn.SerializeToString() for request in fake.requests["ResolveTxn"]} == {
        _REF.SerializeToString()
    }


def test_txn_resolve_refused_by_the_router_prints_why_and_exits_4(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reason = "transaction 3f2a:17 is committed by its record; it cannot be resolved otherwise"
    fake.fail("ResolveTxn", grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert run(monkeypatch, "txn", "resolve", "3f2a:17", "--abort") == (EXIT_FAILED, b"")
    assert capsys.readouterr().err == f"shardkv: cannot resolve transaction 3f2a:17: {reason}\n"


def test_txn_bad_id_exits_2_before_asking_the_router(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(monkeypatch, "txn", "resolve", "3f2a-17", "--commit") == (EXIT_USAGE, b"")
    assert "not a transaction id" in capsys.readouterr().err
    assert not fake.requests


def test_txn_router_flag_anywhere() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["txn", "list", "--router", "b:2"]).router == "b:2"
    assert parser.parse_args(["txn", "--router", "a:1", "list"]).router == "a:1"
    args = parser.parse_args(["--router", "a:1", "txn", "resolve", "1:1", "--abort"])
    assert (args.router, args.id, args.commit) == ("a:1", "1:1", False)


def test_txn_help_names_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["txn", "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert all(command in out for command in ("list", "show", "resolve"))


# -- errors and exit statuses -----------------------------------------------------------


def test_no_router_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    assert run(monkeypatch, "--router", dead, "--timeout", "0.2", "get", "k") == (
        EXIT_UNAVAILABLE,
        b"",
    )
    assert "cluster unavailable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("code", "exit_status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, EXIT_USAGE),
        (grpc.StatusCode.NOT_FOUND, EXIT_NOT_FOUND),
        (grpc.StatusCode.INTERNAL, EXIT_FAILED),
        (grpc.StatusCode.ABORTED, EXIT_FAILED),
    ],
)
def test_cluster_errors_map_to_exit_statuses(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: grpc.StatusCode,
    exit_status: int,
) -> None:
    fake.fail("Put", code, "the router says no")
    assert run(monkeypatch, "put", "k", "v") == (exit_status, b"")
    assert "the router says no" in capsys.readouterr().err


def test_a_router_unavailable_until_the_timeout_exits_3(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.fail("Get", grpc.StatusCode.UNAVAILABLE, "group 2 has no leader", times=1000)
    assert run(monkeypatch, "--timeout", "0.2", "get", "k") == (EXIT_UNAVAILABLE, b"")
    assert "group 2 has no leader" in capsys.readouterr().err


# -- shardkv up: layout, ports, children ------------------------------------------------


def test_layout_defaults_are_stored_and_reused(tmp_path: Path) -> None:
    layout, new = resolve_layout(tmp_path, None, None, None)
    assert (layout, new) == (Layout(nodes=3, groups=4, port=7000), True)
    write_layout(tmp_path, Layout(nodes=5, groups=2, port=9000))
    assert resolve_layout(tmp_path, None, None, None) == (
        Layout(nodes=5, groups=2, port=9000),
        False,
    )
    assert resolve_layout(tmp_path, 5, 2, 9000) == (Layout(nodes=5, groups=2, port=9000), False)


def test_layout_flags_that_disagree_with_the_stored_one_are_refused(tmp_path: Path) -> None:
    write_layout(tmp_path, Layout(nodes=3, groups=4, port=7000))
    with pytest.raises(LaunchError, match=r"--nodes 5 \(stored: 3\), --port 7100 \(stored: 7000\)"):
        resolve_layout(tmp_path, 5, 4, 7100)


def test_layout_checks(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="--port"):
        resolve_layout(tmp_path, 3, 4, 65534)
    with pytest.raises(LaunchError, match="--nodes"):
        resolve_layout(tmp_path, 100, 4, 7000)
    (tmp_path / "cluster.json").write_text("{not json")
    with pytest.raises(LaunchError, match="unreadable"):
        resolve_layout(tmp_path, None, None, None)


def test_busy_ports_are_named() -> None:
    ports = free_ports(3)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[1]))
        holder.listen()
        with pytest.raises(LaunchError, match=f"port {ports[1]} on 127.0.0.1 is in use"):
            check_ports_free(ports)
    check_ports_free(ports)


def test_up_refuses_a_busy_port_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port_run(3)  # the router's and both nodes' ports, all free
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + 2))
        holder.listen()
        status = main(
            ["up", "--data-dir", str(tmp_path / "data"), "--port", str(port), "--nodes", "2"]
        )
    assert status == EXIT_USAGE
    assert "in use" in capsys.readouterr().err
    assert not (tmp_path / "data" / "cluster.json").exists()


def test_up_refuses_flags_that_disagree_with_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_layout(tmp_path, Layout(nodes=3, groups=4, port=7000))
    assert run_up(tmp_path, None, 8, None) == EXIT_USAGE
    assert "--groups 8 (stored: 4)" in capsys.readouterr().err


def test_children_are_the_nodes_then_the_router(tmp_path: Path) -> None:
    specs = child_specs(Layout(nodes=2, groups=4, port=9000), tmp_path)
    assert [spec.name for spec in specs] == ["node-1", "node-2", "router"]
    node_2 = specs[1].argv
    assert node_2[:3] == (sys.executable, "-m", "shardkv.node.main")
    flags = dict(zip(node_2[3::2], node_2[4::2], strict=True))
    assert flags == {
        "--node-id": "2",
        "--listen": "127.0.0.1:9002",
        "--data-dir": str(tmp_path / "node-2"),
        "--initial-cluster": "1=127.0.0.1:9001,2=127.0.0.1:9002",
        "--groups-count": "4",
        "--replication": "2",
    }
    assert specs[2].argv[1:] == (
        "-m",
        "router.server",
        "--listen",
        "127.0.0.1:9000",
        "--nodes",
        "127.0.0.1:9001,127.0.0.1:9002",
    )
    assert specs[2].log_path == tmp_path / "logs" / "router.log"
    # The modules the children run exist and have an entry point.
    for module in ("shardkv.node.main", "router.server"):
        assert callable(importlib.import_module(module).main)


# What stand-in children print once they are set up. Spelled so that the log's
# header line (which repeats the child's command) does not contain it.
_SET_UP = "print('-'.join('ok'), flush=True)"


def _python(name: str, code: str, tmp_path: Path) -> ChildSpec:
    return ChildSpec(name, (sys.executable, "-c", code), tmp_path / "logs" / f"{name}.log")


def _wait_for_text(path: Path, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.01)


@pytest.mark.skipif(launcher._SETPRIV is None, reason="needs Linux and util-linux's setpriv")
def test_a_child_gets_sigterm_when_its_launcher_is_killed(tmp_path: Path) -> None:
    """``_dying_with_parent``: no Python runs in the child between fork and exec (unsafe
    beside gRPC's threads), and the launcher's SIGKILL still ends its children."""
    child_pid = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from router.launcher import _dying_with_parent\n"
            "child = subprocess.Popen(_dying_with_parent("
            "[sys.executable, '-c', 'import time; time.sleep(60)']))\n"
            f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n",
        ]
    )
    try:
        deadline = time.monotonic() + 10.0
        while not (child_pid.exists() and child_pid.read_text()):
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.01)
        pid = int(child_pid.read_text())
        # setpriv sets the signal before it runs the command: wait for the
        # command, or a kill in between would find no signal set yet.
        while b"setpriv" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
            assert time.monotonic() < deadline, "setpriv never ran the child"
            time.sleep(0.01)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10.0
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break  # gone (reaped by init)
            with open(f"/proc/{pid}/stat") as stat:  # a zombie waits for init: gone too
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            assert time.monotonic() < deadline, "the child outlived its killed launcher"
            time.sleep(0.02)
    finally:
        parent.kill()
        parent.wait()


async def test_supervise_reports_a_crash_keeps_the_others_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    sleeper = _python("sleeper", f"import time; {_SET_UP}; time.sleep(60)", tmp_path)
    stubborn = _python(
        "stubborn",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"{_SET_UP}; time.sleep(60)",
        tmp_path,
    )
    crasher = _python("crasher", "import sys; sys.exit(3)", tmp_path)
    out, err = io.StringIO(), io.StringIO()
    pids: list[int] = []

    async def when_started(supervisor: object) -> None:
        for spec in (sleeper, stubborn):
            await asyncio.to_thread(_wait_for_text, spec.log_path, "o-k")
        while "crasher" not in err.getvalue():
            await asyncio.sleep(0.01)
        pids.extend(int(line.split()[2].rstrip(",")) for line in out.getvalue().splitlines())
        os.kill(os.getpid(), signal.SIGTERM)

    status = await supervise(
        # The grace is long enough for the sleeper's exit to be seen on a
        # loaded machine (0.3 s was not, under the full suite on 2 cores).
        [sleeper, stubborn, crasher],
        out=out,
        err=err,
        when_started=when_started,
        grace=2.0,
    )
    assert status == 0
    assert "crasher (pid" in err.getvalue()
    assert (
        "exited with status 3; not restarting it, 2 other processes keep running" in err.getvalue()
    )
    assert "stubborn did not stop within 2 s: killing it" in err.getvalue()
    assert "sleeper did not stop" not in err.getvalue()
    assert len(pids) == 3
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "sys.exit(3)" in crasher.log_path.read_text()  # the header line of each start


async def test_supervise_exits_1_when_every_child_has_exited(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    specs = [_python(f"quitter-{index}", "pass", tmp_path) for index in range(2)]
    assert await supervise(specs, out=out, err=err) == 1
    assert "every process has exited" in err.getvalue()


async def test_wait_ready_prints_hints_once_every_group_has_a_leader(fake: FakeRouter) -> None:
    server = RouterThread(fake)
    try:
        out, err = io.StringIO(), io.StringIO()
        fake.status = _status_response()  # group 2 has no leader
        assert not await wait_ready(server.address, lambda: True, out=out, err=err, timeout=0.5)
        assert "not ready after 0.5 s (groups without a leader: 2)" in err.getvalue()
        fake.status.nodes[0].status.groups[2].role = "leader"
        assert await wait_ready(server.address, lambda: True, out=out, err=err, timeout=5)
        assert f"ready: shardkv --router {server.address} put hello world" in out.getvalue()
        assert not await wait_ready(server.address, lambda: False, out=out, err=err)
        assert "the router is not running" in err.getvalue()
    finally:
        server.stop()


# -- ring changes (admin) ---------------------------------------------------------------


def _four_groups_status() -> router_pb2.ClusterStatusResponse:
    """Four data groups of weight 1 in ring epoch 3, each led by node 1 with 100,000 keys."""
    status = router_pb2.ClusterStatusResponse()
    four_groups(status.map)
    status.map.nodes.add(node_id=1, address="127.0.0.1:7001", state="up")
    report = status.nodes.add(node_id=1, address="127.0.0.1:7001")
    for group_id, share in sorted(build_ring(status.map.ring).shares().items()):
        status.shares.add(group_id=group_id, share=share)
        report.status.groups.add(group_id=group_id, role="leader", key_count=100_000, epoch=3)
    return status


def test_admin_arguments() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["admin", "add-group", "--weight", "2", "--nodes", "1, 2,3", "--id", "5", "--plan"]
    )
    assert (args.admin_command, args.weight, args.nodes, args.id, args.plan) == (
        "add-group",
        2,
        [1, 2, 3],
        5,
        True,
    )
    args = parser.parse_args(["admin", "add-group"])
    assert (args.weight, args.nodes, args.id, args.plan, args.max_rate) == (1, None, 0, False, 0)
    args = parser.parse_args(["admin", "set-weight", "2", "0", "--router", "b:2"])
    assert (args.group, args.weight, args.plan, args.router) == (2, 0, False, "b:2")
    assert parser.parse_args(["admin", "remove-group", "4", "--plan"]).group == 4
    args = parser.parse_args(["admin", "remove-group", "4", "--max-rate", "500"])
    assert args.max_rate == 500
    assert parser.parse_args(["admin", "move-rate", "0"]).keys_per_second == 0
    args = parser.parse_args(["admin", "rebalance", "--apply"])
    assert (args.plan, args.apply) == (False, True)


@pytest.mark.parametrize(
    "argv",
    [
        ["admin"],
        ["admin", "add-group", "--weight", "0"],
        ["admin", "add-group", "--nodes", "1,x"],
        ["admin", "remove-group"],
        ["admin", "remove-group", "0"],
        ["admin", "set-weight", "1"],
        ["admin", "set-weight", "1", "-1"],
        ["admin", "rebalance"],
        ["admin", "rebalance", "--plan", "--apply"],
        ["admin", "move-rate"],
        ["admin", "move-rate", "-1"],
        ["admin", "move-rate", "4294967296"],
        ["admin", "add-group", "--max-rate", "x"],
        ["admin", "move-replica", "1", "2", "3", "--max-rate", "9"],
    ],
)
def test_admin_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_a_plan_estimates_keys_and_time_from_the_sources_key_counts() -> None:
    status = _four_groups_status()
    planned = cluster_pb2.ClusterMap()
    planned.CopyFrom(status.map)
    planned.migration.target.CopyFrom(ring_of(4, dict.fromkeys((1, 2, 3, 4, 5), 1)))
    planned.migration.reason = "add-group 5"
    ring = build_ring(status.map.ring)
    moving = moving_shares(ring, build_ring(planned.migration.target))
    rows = plan_rows(planned, {1: 100_000, 2: 100_000, 3: 100_000})
    assert [(row.source, row.target) for row in rows] == [(1, 5), (2, 5), (3, 5), (4, 5)]
    for row in rows[:3]:
        assert row.share == moving[(row.source, 5)]
        assert row.keys == round(100_000 * row.share / ring.shares()[row.source])
        assert row.seconds == row.keys / PLANNING_RATE
    assert (rows[3].keys, rows[3].seconds) == (None, None), "no key count for group 4"
    lines = format_plan(planned, rows).splitlines()
    assert lines[0] == "add-group 5: ring epoch 3 -> 4"
    assert lines[1].split() == ["FROM", "TO", "SHARE", "KEYS", "(EST.)", "TIME", "(EST.)"]
    assert lines[2].split()[:3] == ["1", "5", f"{rows[0].share * 100:.1f}%"]
    assert lines[2].split()[3] == f"~{rows[0].keys:,}"
    assert lines[5].split()[3:] == ["?", "?"]
    assert lines[6].startswith(f"total: {sum(moving.values()) * 100:.1f}% of the ring")
    assert "keys unknown for some groups" in lines[6]
    assert "bytes are known only as they are copied" in lines[6]
    assert plan_rows(status.map, {}) == ()
    assert format_plan(status.map, ()) == "nothing to move (ring epoch 3)\n"
    # A limit below PLANNING_RATE: copies and collects each at the limit.
    planned.migration.max_keys_per_second = 2_000
    limited = plan_rows(planned, {1: 100_000, 2: 100_000, 3: 100_000})
    assert [row.seconds for row in limited[:3]] == [row.keys / 1_000 for row in rows[:3]]
    assert " at 1,000 keys/s; " in format_plan(planned, limited).splitlines()[6]


def test_admin_add_group_plan_prints_what_would_move_and_changes_nothing(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.status = _four_groups_status()
    status, out = run(monkeypatch, "admin", "add-group", "--weight", "2", "--plan")
    assert status == EXIT_OK
    lines = out.decode().splitlines()
    assert lines[0] == "plan only, nothing changed: add-group 5: ring epoch 3 -> 4"
    assert [line.split()[:2] for line in lines[2:6]] == [
        ["1", "5"],
        ["2", "5"],
        ["3", "5"],
        ["4", "5"],
    ]
    assert lines[6].startswith("total: ")
    # About a third of 400,000 keys moves to a group of weight 2 of 6.
    assert 100_000 < int(lines[6].split("~")[1].split()[0].replace(",", "")) < 170_000
    assert not fake.status.map.HasField("migration")
    assert [request.dry_run for request in fake.requests["ChangeRing"]] == [True]
    assert fake.requests["ChangeRing"][0].add_group.weight == 2


def test_admin_set_weight_starts_a_change_and_a_second_one_is_refused_with_exit_4(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.status = _four_groups_status()
    status, out = run(monkeypatch, "admin", "set-weight", "2", "3")
    assert status == EXIT_OK
    lines = out.decode().splitlines()
    assert lines[0] == "started: set-weight 2 3: ring epoch 3 -> 4"
    assert lines[-1] == "follow it with `shardkv status`"
    assert {line.split()[1] for line in lines[2:-2]} == {"2"}, "keys move only to group 2"
    assert fake.status.map.migration.reason == "set-weight 2 3"
    assert run(monkeypatch, "admin", "remove-group", "1") == (EXIT_FAILED, b"")
    assert capsys.readouterr().err == (
        "shardkv: cannot change the ring: a ring change is under way (set-weight 2 3, to epoch"
        " 4): wait until it is done (shardkv status shows it)\n"
    )


def test_admin_remove_group_of_an_unknown_group_exits_4(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.status = _four_groups_status()
    # The meta leader refuses it as FAILED_PRECONDITION (shardkv.node.ring_change).
    assert run(monkeypatch, "admin", "remove-group", "9") == (EXIT_FAILED, b"")
    assert "there is no group 9" in capsys.readouterr().err


def test_admin_max_rate_limits_the_change_and_move_rate_changes_it_while_it_runs(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.status = _four_groups_status()
    # No change under way: nothing to limit (the meta leader refuses it).
    assert run(monkeypatch, "admin", "move-rate", "5000") == (EXIT_FAILED, b"")
    assert "no ring change is under way" in capsys.readouterr().err
    status, _ = run(monkeypatch, "admin", "add-group", "--max-rate", "20000")
    assert status == EXIT_OK
    assert fake.requests["ChangeRing"][-1].max_keys_per_second == 20_000
    assert fake.status.map.migration.max_keys_per_second == 20_000
    text = format_status(summarize_status(fake.status), _NOW)
    assert "ring change to epoch 4 (add-group 5)" in text
    assert ", at most 20,000 keys/s" in text
    status, out = run(monkeypatch, "admin", "move-rate", "5000")
    assert (status, out) == (
        EXIT_OK,
        b"ring change to epoch 4 (add-group 5): at most 5,000 keys/s from its next chunk on\n",
    )
    assert fake.status.map.migration.max_keys_per_second == 5_000
    status, out = run(monkeypatch, "admin", "move-rate", "0")
    assert out.endswith(b": no limit from its next chunk on\n")
    assert fake.status.map.migration.max_keys_per_second == 0
    assert "at most" not in format_status(summarize_status(fake.status), _NOW)


def _ring_part(out: bytes) -> list[str]:
    """The ring part of ``rebalance``'s output (the placement part follows a blank line)."""
    return out.decode().split("\n\n")[0].splitlines()


def test_admin_rebalance_shows_the_balance_or_the_change_under_way(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.status = _four_groups_status()
    for mode in ("--plan", "--apply"):
        status, out = run(monkeypatch, "admin", "rebalance", mode)
        assert status == EXIT_OK
        lines = _ring_part(out)
        assert lines[0].split() == ["GROUP", "WEIGHT", "WEIGHT", "SHARE", "RING", "SHARE"]
        assert lines[1].split()[:3] == ["1", "1", "25.0%"]
        assert lines[-1].startswith("balanced: nothing to move")
    assert "ChangeRing" not in fake.requests
    assert run(monkeypatch, "admin", "remove-group", "4")[0] == EXIT_OK
    status, out = run(monkeypatch, "admin", "rebalance", "--plan")
    assert status == EXIT_OK
    lines = _ring_part(out)
    assert lines[0] == "under way: remove-group 4: ring epoch 3 -> 4"
    assert {line.split()[0] for line in lines[2:-2]} == {"4"}
    assert lines[-1] == "it runs by itself; follow it with `shardkv status`"


def _migrating_status() -> router_pb2.ClusterStatusResponse:
    status = _four_groups_status()
    migration = status.map.migration
    migration.target.CopyFrom(ring_of(4, dict.fromkeys((1, 2, 3, 4, 5), 1)))
    migration.reason = "add-group 5"
    migration.started_ms = _NOW - 90_000
    migration.moves.add(
        source=1,
        target=5,
        phase=cluster_pb2.MOVE_DONE,
        keys_copied=20_000,
        keys_estimate=20_000,
        bytes_copied=2_000_000,
        started_ms=_NOW - 90_000,
        finished_ms=_NOW - 80_000,
        frozen_ms=120,
    )
    migration.moves.add(
        source=2,
        target=5,
        phase=cluster_pb2.MOVE_COPYING,
        keys_copied=5_000,
        keys_estimate=20_000,
        bytes_copied=500_000,
        started_ms=_NOW - 10_000,
    )
    migration.moves.add(
        source=3,
        target=5,
        phase=cluster_pb2.MOVE_FROZEN,
        keys_copied=100,
        keys_estimate=1_000,
        started_ms=_NOW - 1_000,
        stuck="freeze: group 3: no leader (UNAVAILABLE)",
    )
    migration.moves.add(source=4, target=5, keys_estimate=20_000)
    return status


def test_status_shows_each_move_of_a_migration() -> None:
    summary = summarize_status(_migrating_status())
    assert summary.migration is not None
    assert (summary.migration.epoch, summary.migration.reason) == (4, "add-group 5")
    assert [(m.source, m.target, m.phase) for m in summary.migration.moves] == [
        (1, 5, "done"),
        (2, 5, "copying"),
        (3, 5, "frozen"),
        (4, 5, "pending"),
    ]
    text = format_status(summary, _NOW)
    tail = text.split("\n\n")[-1].splitlines()
    assert tail[0] == "ring change to epoch 4 (add-group 5), started 1m30s ago"
    assert tail[1].split() == [
        "MOVE", "PHASE", "PROGRESS", "KEYS", "BYTES", "RATE", "ETA", "FROZEN"
    ]  # fmt: skip
    done, copying, frozen, pending = tail[2:6]
    assert done.split() == [
        "1->5", "done", "[####################]", "100%", "20,000/20,000", "2,000,000",
        "2,000/s", "done", "120", "ms",
    ]  # fmt: skip
    # 5,000 keys in 10 s: 500 keys/s, 15,000 keys left: 30 s.
    assert copying.split() == [
        "2->5", "copying", "[#####...............]", "25%", "5,000/20,000", "500,000",
        "500/s", "30s", "-",
    ]  # fmt: skip
    assert frozen.split()[:2] == ["3->5", "frozen"]
    assert pending.split() == [
        "4->5", "pending", "[....................]", "0%", "0/20,000", "0", "-", "-", "-",
    ]  # fmt: skip
    assert tail[6] == "3->5 stuck: freeze: group 3: no leader (UNAVAILABLE)"
    assert "ring change" not in format_status(summarize_status(_four_groups_status()), _NOW)


def test_status_json_has_the_migration(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.status = _migrating_status()
    status, out = run(monkeypatch, "status", "--json")
    assert status == EXIT_OK
    migration = json.loads(out)["migration"]
    assert (migration["epoch"], migration["reason"], migration["retiring"]) == (
        4,
        "add-group 5",
        [],
    )
    assert migration["moves"][2]["stuck"] == "freeze: group 3: no leader (UNAVAILABLE)"
    assert migration["moves"][0]["frozen_ms"] == 120
    status, out = run(monkeypatch, "status")
    assert status == EXIT_OK
    assert "2->5  copying" in out.decode()


# -- placement changes (admin) ----------------------------------------------------------


def _uneven_status() -> router_pb2.ClusterStatusResponse:
    """Nodes 1 to 3 (node 1 with three replicas, node 3 with one) and a fourth node leaving."""
    status = _four_groups_status()
    del status.map.nodes[:]
    for node_id in (1, 2, 3):
        status.map.nodes.add(node_id=node_id, address=f"127.0.0.1:710{node_id}", state="up")
    del status.map.groups[:]
    for group_id, replicas in ((0, [1, 2]), (1, [1, 3]), (2, [1, 2])):
        status.map.groups.add(group_id=group_id, replicas=replicas, weight=1 if group_id else 0)
    status.map.ring.CopyFrom(ring_of(3, {1: 1, 2: 1}))
    return status


def test_admin_placement_arguments() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["admin", "move-replica", "0", "1", "4", "--plan"])
    assert (args.admin_command, args.group, args.from_node, args.to_node, args.plan) == (
        "move-replica",
        0,
        1,
        4,
        True,
    )
    args = parser.parse_args(["admin", "remove-node", "3"])
    assert (args.node, args.plan) == (3, False)
    args = parser.parse_args(["admin", "transfer-leader", "2", "3"])
    assert (args.group, args.to_node) == (2, 3)
    assert parser.parse_args(["admin", "add-node", "10.0.0.5:7105"]).address == "10.0.0.5:7105"


@pytest.mark.parametrize(
    "argv",
    [
        ["admin", "move-replica", "1", "2"],
        ["admin", "move-replica", "1", "0", "2"],
        ["admin", "remove-node", "0"],
        ["admin", "transfer-leader", "1"],
        ["admin", "transfer-leader", "1", "2", "--plan"],
        ["admin", "add-node"],
    ],
)
def test_admin_placement_usage_errors_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_format_placement_shows_what_changes() -> None:
    current = _uneven_status().map
    planned = cluster_pb2.ClusterMap()
    planned.CopyFrom(current)
    planned.groups[1].learners.append(2)
    planned.groups[1].preferred_leader = 3
    planned.replica_moves.add(group_id=1, from_node=1, to_node=2)
    planned.nodes[0].state = "leaving"
    lines = format_placement(current, planned).splitlines()
    assert lines[0] == "placement:"
    assert lines[1].split() == ["GROUP", "REPLICAS", "LEARNERS", "PREFERRED", "LEADER", "MOVE"]
    assert lines[2].split() == ["1", "1,3", "-", "->", "2", "-", "->", "3", "1->2"]
    assert lines[3] == "node 1: up -> leaving"
    assert lines[4] == "replicas per node, once the moves are done: 1: 3 -> 2, 2: 2 -> 3, 3: 1"
    assert len(lines) == 5, "groups that do not change are left out"
    assert format_placement(current, current) == (
        "placement: nothing to move (replicas and leaders are spread evenly)\n"
    )


def test_admin_move_replica_plans_then_starts_and_a_repeat_is_refused_with_exit_4(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.status = _uneven_status()
    status, out = run(monkeypatch, "admin", "move-replica", "1", "1", "2", "--plan")
    assert status == EXIT_OK
    lines = out.decode().splitlines()
    assert lines[0] == "plan only, nothing changed: placement:"
    assert lines[2].split()[-1] == "1->2"
    assert not fake.status.map.replica_moves
    status, out = run(monkeypatch, "admin", "move-replica", "1", "1", "2")
    assert status == EXIT_OK
    lines = out.decode().splitlines()
    assert lines[0] == "started: placement:"
    assert lines[-1] == "follow it with `shardkv status`"
    assert [(m.group_id, m.from_node, m.to_node) for m in fake.status.map.replica_moves] == [
        (1, 1, 2)
    ]
    for plan in ((), ("--plan",)):
        assert run(monkeypatch, "admin", "move-replica", "1", "3", "2", *plan) == (
            EXIT_FAILED,
            b"",
        )
        assert capsys.readouterr().err == (
            "shardkv: cannot change the placement: node 2 holds a replica of group 1 already\n"
        )
    assert [request.dry_run for request in fake.requests["ChangePlacement"]] == [
        True,
        False,
        False,
        True,
    ]


def test_admin_remove_node_plan_shows_the_node_leaving_and_where_its_replicas_go(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.status = _uneven_status()
    status, out = run(monkeypatch, "admin", "remove-node", "2", "--plan")
    assert status == EXIT_OK
    text = out.decode()
    assert "node 2: up -> leaving" in text
    moves = [line.split()[-1] for line in text.splitlines()[2:4]]
    assert moves == ["2->3", "2->3"]
    assert fake.requests["ChangePlacement"] == [
        node_pb2.ChangePlacementRequest(remove_node=2, dry_run=True)
    ]


def test_admin_transfer_leader_sets_the_preferred_leader(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.status = _uneven_status()
    status, out = run(monkeypatch, "admin", "transfer-leader", "1", "3")
    assert status == EXIT_OK
    assert out.decode().startswith("group 1: preferred leader - -> 3; the lead moves there")
    assert fake.status.map.groups[1].preferred_leader == 3
    assert run(monkeypatch, "admin", "transfer-leader", "1", "2") == (EXIT_FAILED, b"")
    assert "node 2 is not a voter of group 1" in capsys.readouterr().err


def test_admin_rebalance_plans_and_applies_the_placement_part(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.status = _uneven_status()
    status, out = run(monkeypatch, "admin", "rebalance", "--plan")
    assert status == EXIT_OK
    ring, placement = out.decode().split("\n\n")
    assert ring.splitlines()[-1].startswith("balanced: nothing to move")
    lines = placement.splitlines()
    assert lines[0] == "plan only, nothing changed: placement:"
    # Node 1 has three replicas, node 3 one: one of node 1's moves to node 3.
    assert [line.split()[-1] for line in lines[2:] if "->" in line.split()[-1]] == ["1->3"]
    assert lines[-1] == "replicas per node, once the moves are done: 1: 3 -> 2, 2: 2, 3: 1 -> 2"
    assert not fake.status.map.replica_moves
    status, out = run(monkeypatch, "admin", "rebalance", "--apply")
    assert status == EXIT_OK
    assert "started: placement:" in out.decode()
    assert len(fake.status.map.replica_moves) == 1
    # While replica moves are under way: the plan says so, applying is refused.
    status, out = run(monkeypatch, "admin", "rebalance", "--plan")
    assert status == EXIT_OK
    assert out.decode().endswith(
        "\n\nplacement: nothing planned: replica moves are under way: wait until they are done\n"
    )
    status, out = run(monkeypatch, "admin", "rebalance", "--apply")
    assert status == EXIT_FAILED
    assert "cannot change the placement: replica moves are under way" in capsys.readouterr().err
    assert [request.rebalance for request in fake.requests["ChangePlacement"]] == [True] * 4


def _moving_status() -> router_pb2.ClusterStatusResponse:
    status = _uneven_status()
    status.map.nodes[1].state = "leaving"
    status.map.nodes.add(node_id=4, address="127.0.0.1:7104", state="removed")
    status.map.groups[1].learners.append(3)
    status.map.groups[1].preferred_leader = 3
    status.map.groups.add(group_id=3, replicas=[1, 2], retired=True)
    status.map.replica_moves.add(
        group_id=0,
        from_node=2,
        to_node=3,
        phase=cluster_pb2.REPLICA_LEARNING,
        started_ms=_NOW - 90_000,
        phase_started_ms=_NOW - 12_000,
        stuck="promote: node 3 is 500 entries behind",
    )
    status.map.replica_moves.add(
        group_id=1,
        from_node=1,
        to_node=3,
        phase=cluster_pb2.REPLICA_VOTING,
        started_ms=_NOW - 5_000,
        phase_started_ms=_NOW - 1_000,
    )
    return status


def test_status_shows_node_states_learners_retired_groups_and_replica_moves() -> None:
    summary = summarize_status(_moving_status())
    assert [node.state for node in summary.nodes] == ["up", "leaving", "up", "removed"]
    text = format_status(summary, _NOW)
    nodes, groups, moves = text.split("\n\n")[1:]
    assert nodes.splitlines()[2].split()[:3] == ["2", "127.0.0.1:7102", "leaving"]
    assert nodes.splitlines()[4].split()[:3] == ["4", "127.0.0.1:7104", "removed"]
    rows = [line.split() for line in groups.splitlines()]
    assert rows[2][:5] == ["1", "1,3", "3", "1", "3"], "node 1 leads it, node 3 is preferred"
    assert rows[4] == ["3", "-", "-", "retired", "-", "-", "-", "-", "-", "-"]
    lines = moves.splitlines()
    assert lines[0] == "replica moves under way: 2"
    assert lines[1].split() == ["GROUP", "MOVE", "PHASE", "IN", "PHASE", "STARTED"]
    assert lines[2].split() == ["0", "2->3", "learning", "12s", "1m30s"]
    assert lines[3].split() == ["1", "1->3", "voting", "1.0s", "5.0s"]
    assert lines[4] == "group 0 2->3 stuck: promote: node 3 is 500 entries behind"
    assert "replica moves" not in format_status(summarize_status(_uneven_status()), _NOW)


def test_status_json_has_the_placement(
    router: str, fake: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.status = _moving_status()
    status, out = run(monkeypatch, "status", "--json")
    assert status == EXIT_OK
    document = json.loads(out)
    assert [node["state"] for node in document["nodes"]] == ["up", "leaving", "up", "removed"]
    group = document["groups"][1]
    assert (group["learners"], group["preferred_leader"], group["retired"]) == ([3], 3, False)
    assert document["groups"][3]["retired"] is True
    assert document["replica_moves"][0] == {
        "group_id": 0,
        "from_node": 2,
        "to_node": 3,
        "phase": "learning",
        "started_ms": _NOW - 90_000,
        "phase_started_ms": _NOW - 12_000,
        "stuck": "promote: node 3 is 500 entries behind",
    }


class _FakeNode(node_pb2_grpc.NodeServicer):
    """A node that answers ``GetClusterMap`` only: its id, and a map when it has one."""

    def __init__(self, node_id: int, cluster_id: str) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id

    def GetClusterMap(self, request: Any, context: Any) -> node_pb2.GetClusterMapResponse:
        response = node_pb2.GetClusterMapResponse(node_id=self.node_id)
        if self.cluster_id:
            response.map.cluster_id = self.cluster_id
        return response


@pytest.fixture
def node_server() -> Iterator[tuple[_FakeNode, str]]:
    node = _FakeNode(3, "demo")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    node_pb2_grpc.add_NodeServicer_to_server(node, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield node, f"127.0.0.1:{port}"
    server.stop(None)


def test_admin_add_node_says_whether_the_node_is_a_member(
    router: str,
    fake: FakeRouter,
    node_server: tuple[_FakeNode, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node, address = node_server
    fake.status = _uneven_status()
    fake.status.map.cluster_id = "demo"
    fake.status.map.nodes[2].address = address
    status, out = run(monkeypatch, "admin", "add-node", address)
    assert status == EXIT_OK
    assert out.decode() == f"node 3 at {address} is a member, up; it holds 1 replicas\n"
    node.node_id = 9
    assert run(monkeypatch, "admin", "add-node", address) == (EXIT_FAILED, b"")
    assert capsys.readouterr().err == (
        f"shardkv: node 9 at {address} is not a member: start it with "
        "`shardkv-node --join 127.0.0.1:7101`\n"
    )
    node.cluster_id = "other"
    assert run(monkeypatch, "admin", "add-node", address) == (EXIT_FAILED, b"")
    assert "it belongs to cluster other, not demo" in capsys.readouterr().err
    node.node_id, node.cluster_id = 3, ""
    fake.status.map.nodes[2].state = "removed"
    assert run(monkeypatch, "admin", "add-node", address) == (EXIT_FAILED, b"")
    assert "was removed from the cluster" in capsys.readouterr().err
    assert "ChangePlacement" not in fake.requests


def test_admin_add_node_with_no_node_there_exits_3(
    router: str,
    fake: FakeRouter,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.status = _uneven_status()
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    assert run(monkeypatch, "--timeout", "0.5", "admin", "add-node", dead) == (
        EXIT_UNAVAILABLE,
        b"",
    )
    assert f"no node answers at {dead}" in capsys.readouterr().err
