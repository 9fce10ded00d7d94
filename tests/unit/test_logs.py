"""Log output: the JSON formatter, ``configure``, the log_format setting, leader-change lines."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from shardkv import logs
from shardkv.node.config import ConfigError, load_config
from shardkv.node.transport_memory import MemoryNetwork
from shardkv.raft import Role
from tests.unit.test_node_runtime import NODES, LocalCluster


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("shardkv.test")
    return logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, message, args, None, extra=extra or None
    )


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = json.loads(logs.JsonFormatter().format(record("group %d elected", 3)))
    assert list(line) == ["time", "level", "logger", "message"]
    assert line["level"] == "INFO"
    assert line["logger"] == "shardkv.test"
    assert line["message"] == "group 3 elected"
    assert line["time"].endswith("Z")
    assert datetime.fromisoformat(line["time"].replace("Z", "+00:00")).utcoffset() is not None


def test_extra_fields_follow_and_the_process_fields_fill_in() -> None:
    formatter = logs.JsonFormatter({"node_id": 7, "zone": "a"})
    line = json.loads(formatter.format(record("leader", group_id=3, node_id=2, term=5)))
    assert line["group_id"] == 3 and line["term"] == 5
    # The call's own node_id wins over the process's.
    assert line["node_id"] == 2
    assert line["zone"] == "a"
    plain = json.loads(formatter.format(record("no extra")))
    assert plain["node_id"] == 7
    assert "group_id" not in plain


def test_values_json_cannot_hold_are_written_as_text() -> None:
    line = json.loads(logs.JsonFormatter().format(record("odd", path=Path("/x"), raw=b"\x01")))
    assert line["path"] == "/x"
    assert line["raw"] == "b'\\x01'"


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        failed = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    text = logs.JsonFormatter().format(failed)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "failed"
    assert "ValueError: bad value" in line["exception"]


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_json_sends_every_logger_at_the_level_to_the_stream() -> None:
    stream = io.StringIO()
    logs.configure("WARNING", "json", fields={"node_id": 1}, stream=stream)
    logging.getLogger("shardkv.node.peer").info("not shown")
    logging.getLogger("shardkv.node.peer").warning("shown", extra={"group_id": 4})
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [(line["message"], line["group_id"], line["node_id"]) for line in lines] == [
        ("shown", 4, 1)
    ]


@pytest.mark.usefixtures("restore_root_logger")
def test_configure_text_and_an_unknown_format() -> None:
    stream = io.StringIO()
    logs.configure("INFO", "text", fields={"node_id": 1}, stream=stream)
    logging.getLogger("router.server").info("hello %s", "there", extra={"group_id": 4})
    assert stream.getvalue().rstrip().endswith(" INFO router.server: hello there")
    with pytest.raises(ValueError, match="expected one of text, json"):
        logs.configure("INFO", "xml")


# -- the node's log_format setting ------------------------------------------------------


def test_log_format_defaults_to_text_and_comes_from_every_layer(tmp_path: Path) -> None:
    assert load_config(["--node-id", "1"], {}).log_format == "text"
    assert load_config(["--node-id", "1", "--log-format", "JSON"], {}).log_format == "json"
    environ = {"SHARDKV_LOG_FORMAT": "json"}
    assert load_config(["--node-id", "1"], environ).log_format == "json"
    path = tmp_path / "node.toml"
    path.write_text('node_id = 1\nlog_format = "json"\n')
    assert load_config(["--config", str(path)], {}).log_format == "json"


def test_a_bad_log_format_names_the_setting_and_where_it_came_from() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(["--node-id", "1"], {"SHARDKV_LOG_FORMAT": "yaml"})
    assert caught.value.setting == "log_format"
    assert str(caught.value) == (
        'log_format "yaml" (from environment variable SHARDKV_LOG_FORMAT): expected one of '
        "text, json; change or unset SHARDKV_LOG_FORMAT"
    )


def test_the_docs_list_the_log_format_setting() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs/node-config.md").read_text()
    assert "| `--log-format FORMAT` | `SHARDKV_LOG_FORMAT` | `log_format` | `text` |" in docs


# -- what the node logs ------------------------------------------------------------------


def leader_lines(caplog: pytest.LogCaptureFixture, group_id: int) -> list[tuple[str, int]]:
    """(what, node) of each leader-change line of ``group_id``: became, follows, stepped down."""
    lines = []
    for line in caplog.records:
        if line.name != "shardkv.node.peer" or getattr(line, "group_id", None) != group_id:
            continue
        message = line.getMessage()
        for what in ("became the leader", "follows", "stepped down"):
            if what in message:
                lines.append((what, getattr(line, "node_id", 0)))
    return lines


async def test_each_leader_change_is_logged_once_with_group_and_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = LocalCluster(MemoryNetwork())
    caplog.set_level(logging.INFO, logger="shardkv.node.peer")
    for node_id in NODES:
        cluster.start(node_id, bootstrap=True)
    leaders = await cluster.elect_all()
    # Until every follower has heard from its leader, then a while longer.
    await cluster.step(30)
    for group_id, leader in leaders.items():
        followers = sorted(set(NODES) - {leader.node_id})
        assert sorted(leader_lines(caplog, group_id)) == [
            ("became the leader", leader.node_id),
            *(("follows", node_id) for node_id in followers),
        ]
    record = next(line for line in caplog.records if getattr(line, "group_id", None) == 1)
    assert vars(record)["term"] == leaders[1].raw.raft.term
    assert vars(record)["leader_id"] == leaders[1].node_id

    # Cut off group 1's leader: it steps down (check-quorum) and the others
    # elect a new leader; each of these is logged once.
    old = leaders[1].node_id
    caplog.clear()
    cluster.network.isolate(old)
    for _ in range(200):
        new = cluster.leader(1)
        if (
            new is not None
            and new.node_id != old
            and cluster.nodes[old].runtime.peers[1].role != Role.LEADER
        ):
            break
        await cluster.step()
    else:
        raise AssertionError("group 1 did not change its leader")
    await cluster.step(30)
    (follower,) = set(NODES) - {old, new.node_id}
    assert sorted(leader_lines(caplog, 1)) == [
        ("became the leader", new.node_id),
        ("follows", follower),
        ("stepped down", old),
    ]
