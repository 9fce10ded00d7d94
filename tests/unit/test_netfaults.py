"""The test-only network faults a node reads from its file (shardkv.node.netfaults)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from shardkv.node import netfaults
from shardkv.node.netfaults import NetFaults, Rules


def write(path: Path, rules: dict[str, object]) -> None:
    path.write_text(json.dumps(rules))
    # A later write in the same mtime tick must still be seen: the size or mtime moves.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


@pytest.fixture(autouse=True)
def _no_reload_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netfaults, "RELOAD_INTERVAL", 0.0)


def test_no_file_means_no_faults(tmp_path: Path) -> None:
    faults = NetFaults(str(tmp_path / "absent.json"))
    assert faults.inbound(2) == 0.0


def test_a_cut_drops_everything_from_those_nodes_only(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write(path, {"cut": [2]})
    faults = NetFaults(str(path))
    assert all(faults.inbound(2) is None for _ in range(100))
    assert faults.inbound(3) == 0.0


def test_loss_drops_about_its_share_and_delay_stays_in_range(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write(path, {"loss": 0.25, "delay_ms": [10, 20]})
    faults = NetFaults(str(path), rng=random.Random(1))
    outcomes = [faults.inbound(2) for _ in range(4000)]
    dropped = sum(outcome is None for outcome in outcomes)
    assert 800 < dropped < 1200
    delays = [outcome for outcome in outcomes if outcome is not None]
    assert min(delays) >= 0.010 and max(delays) <= 0.020


def test_changes_are_reread_and_an_empty_file_heals(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write(path, {"cut": [2]})
    faults = NetFaults(str(path))
    assert faults.inbound(2) is None
    path.write_text("")
    assert faults.inbound(2) == 0.0


def test_an_unreadable_file_keeps_the_last_rules(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write(path, {"cut": [3]})
    faults = NetFaults(str(path))
    assert faults.inbound(3) is None
    path.write_text("{not json")
    assert faults.inbound(3) is None


def test_rules_parse() -> None:
    assert Rules.parse("") == Rules()
    rules = Rules.parse('{"cut": [1, 2], "loss": 0.5, "delay_ms": [1, 3]}')
    assert rules == Rules(frozenset({1, 2}), 0.5, (0.001, 0.003))


def test_without_the_variable_the_transport_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(netfaults.ENV, raising=False)
    assert NetFaults.from_environment() is None
