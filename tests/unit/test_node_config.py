"""The node's configuration: layers and precedence, validation messages, the data dir, the port.

Every error a user can cause is checked on its message: it must name the
setting, the bad value, where the value came from and what to change.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from shardkv.errors import ShardKVError
from shardkv.node.config import (
    ConfigError,
    NodeConfig,
    Origin,
    build_parser,
    format_groups,
    format_initial_cluster,
    load_config,
    parse_address,
    round_robin_groups,
)
from shardkv.node.data_dir import (
    IDENTITY_FILE,
    check_port_free,
    mark_bootstrapped,
    prepare_data_dir,
)

REPO = Path(__file__).resolve().parents[2]
THREE_NODES = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"


def load(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> NodeConfig:
    return load_config(list(argv), environ or {})


def load_error(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(argv, environ)
    return str(caught.value)


def write_toml(directory: Path, text: str, name: str = "node.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def make_config(tmp_path: Path, node_id: int = 1, cluster_id: str = "shardkv") -> NodeConfig:
    return load(
        [
            f"--node-id={node_id}",
            f"--initial-cluster={THREE_NODES}",
            f"--data-dir={tmp_path / 'data'}",
            f"--cluster-id={cluster_id}",
        ]
    )


# -- precedence ------------------------------------------------------------------


def test_defaults_fill_every_setting_but_the_node_id() -> None:
    config = load(["--node-id", "1"])
    assert config.listen == "127.0.0.1:7101"
    assert config.advertise == "127.0.0.1:7101"
    assert config.initial_cluster == {1: "127.0.0.1:7101"}
    assert config.groups == {0: (1,), 1: (1,)}
    assert config.data_dir == Path("shardkv-data/node-1")
    assert config.cluster_id == "shardkv"
    assert (config.tick_interval_ms, config.election_ticks, config.heartbeat_ticks) == (100, 10, 1)
    assert config.snapshot_interval_entries == 10_000
    assert config.lease_reads is False
    assert config.log_level == "INFO"
    assert config.origin("cluster_id") == Origin("default")
    assert config.origin("node_id") == Origin("flag", "--node-id")


def test_a_joining_node_hosts_nothing_and_needs_no_place_in_the_initial_cluster() -> None:
    config = load(
        [
            "--node-id=9",
            "--listen=127.0.0.1:7109",
            f"--initial-cluster={THREE_NODES}",
            "--join=127.0.0.1:7101",
        ]
    )
    assert config.join == "127.0.0.1:7101"
    assert config.hosted_groups == ()
    assert config.origin("join") == Origin("flag", "--join")
    assert load(["--node-id", "1"]).join is None
    with pytest.raises(ConfigError, match="has no entry for this node"):
        load(["--node-id=9", "--listen=127.0.0.1:7109", f"--initial-cluster={THREE_NODES}"])


def test_each_layer_overrides_the_one_before(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "node_id = 1\ntick_interval_ms = 200\nelection_ticks = 20\n")
    file_only = load(["--config", str(path)])
    assert (file_only.node_id, file_only.tick_interval_ms) == (1, 200)
    assert file_only.origin("tick_interval_ms") == Origin("file", f"tick_interval_ms in {path}")

    environ = {"SHARDKV_TICK_INTERVAL_MS": "300", "SHARDKV_NODE_ID": "2"}
    with_env = load(["--config", str(path)], environ)
    assert (with_env.node_id, with_env.tick_interval_ms) == (2, 300)
    assert with_env.election_ticks == 20  # the file still holds what env does not say
    assert with_env.origin("tick_interval_ms") == Origin("env", "SHARDKV_TICK_INTERVAL_MS")

    with_flag = load(["--config", str(path), "--tick-interval-ms", "400"], environ)
    assert (with_flag.node_id, with_flag.tick_interval_ms) == (2, 400)
    assert with_flag.origin("tick_interval_ms") == Origin("flag", "--tick-interval-ms")


def test_boolean_flag_overrides_env_both_ways() -> None:
    assert load(["--node-id=1", "--lease-reads"], {"SHARDKV_LEASE_READS": "no"}).lease_reads
    assert not load(["--node-id=1", "--no-lease-reads"], {"SHARDKV_LEASE_READS": "on"}).lease_reads
    assert load(["--node-id=1"], {"SHARDKV_LEASE_READS": "TRUE"}).lease_reads


def test_config_path_from_env_and_flag_over_env(tmp_path: Path) -> None:
    from_env = write_toml(tmp_path, "node_id = 5\n", "env.toml")
    from_flag = write_toml(tmp_path, "node_id = 6\n", "flag.toml")
    assert load([], {"SHARDKV_CONFIG": str(from_env)}).node_id == 5
    assert load(["--config", str(from_flag)], {"SHARDKV_CONFIG": str(from_env)}).node_id == 6


def test_an_empty_environment_variable_counts_as_unset() -> None:
    config = load(["--node-id=1"], {"SHARDKV_LISTEN": "", "SHARDKV_CLUSTER_ID": "  "})
    assert config.listen == "127.0.0.1:7101"
    assert config.cluster_id == "shardkv"


def test_listen_defaults_to_this_nodes_initial_cluster_address() -> None:
    config = load(["--node-id=2", "--initial-cluster=1=10.0.0.1:9000,2=10.0.0.2:9000"])
    assert config.listen == config.advertise == "10.0.0.2:9000"
    assert config.origin("listen").kind == "default"


def test_wildcard_listen_with_explicit_advertise() -> None:
    config = load(
        [
            "--node-id=2",
            "--listen=0.0.0.0:9000",
            "--advertise=10.0.0.2:9000",
            "--initial-cluster=1=10.0.0.1:9000,2=10.0.0.2:9000",
        ]
    )
    assert (config.listen, config.advertise) == ("0.0.0.0:9000", "10.0.0.2:9000")


def test_relative_data_dir_is_relative_to_the_file_in_toml_and_to_cwd_elsewhere(
    tmp_path: Path,
) -> None:
    path = write_toml(tmp_path, 'node_id = 1\ndata_dir = "data/n1"\n')
    assert load(["--config", str(path)]).data_dir == tmp_path / "data/n1"
    assert load(["--config", str(path), "--data-dir", "x"]).data_dir == Path("x")
    absolute = write_toml(tmp_path, 'node_id = 1\ndata_dir = "/var/lib/shardkv"\n', "abs.toml")
    assert load(["--config", str(absolute)]).data_dir == Path("/var/lib/shardkv")


def test_parser_lists_every_setting_with_its_env_var() -> None:
    help_text = build_parser().format_help()
    for flag, env in [
        ("--node-id", "SHARDKV_NODE_ID"),
        ("--initial-cluster", "SHARDKV_INITIAL_CLUSTER"),
        ("--groups-count", "SHARDKV_GROUPS_COUNT"),
        ("--snapshot-interval-entries", "SHARDKV_SNAPSHOT_INTERVAL_ENTRIES"),
        ("--lease-reads", "SHARDKV_LEASE_READS"),
        ("--config", "SHARDKV_CONFIG"),
    ]:
        assert flag in help_text
        assert env in help_text


# -- the TOML file -----------------------------------------------------------------


def test_full_toml_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
node_id = 2
listen = "0.0.0.0:7102"
advertise = "127.0.0.1:7102"
data_dir = "/srv/shardkv/2"
cluster_id = "prod-east"
tick_interval_ms = 50
election_ticks = 20
heartbeat_ticks = 2
snapshot_interval_entries = 5000
lease_reads = true
log_level = "debug"

[initial_cluster]
1 = "127.0.0.1:7101"
2 = "127.0.0.1:7102"
3 = "127.0.0.1:7103"

[groups]
0 = [1, 2, 3]
1 = [3, 1, 2]
2 = [2]
""",
    )
    config = load(["--config", str(path)])
    assert config == NodeConfig(
        node_id=2,
        listen="0.0.0.0:7102",
        advertise="127.0.0.1:7102",
        data_dir=Path("/srv/shardkv/2"),
        cluster_id="prod-east",
        initial_cluster={1: "127.0.0.1:7101", 2: "127.0.0.1:7102", 3: "127.0.0.1:7103"},
        groups={0: (1, 2, 3), 1: (1, 2, 3), 2: (2,)},
        tick_interval_ms=50,
        election_ticks=20,
        heartbeat_ticks=2,
        snapshot_interval_entries=5000,
        lease_reads=True,
        log_level="DEBUG",
    )
    assert config.hosted_groups == (0, 1, 2)


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    docs = (REPO / "docs/node-config.md").read_text()
    example = re.search(r"```toml\n(.*?)```", docs, re.DOTALL)
    assert example is not None
    path = write_toml(tmp_path, example.group(1))
    for node_id in (1, 2, 3):
        config = load(["--config", str(path), f"--node-id={node_id}"])
        assert config.initial_cluster == {
            1: "127.0.0.1:7101",
            2: "127.0.0.1:7102",
            3: "127.0.0.1:7103",
        }
        assert config.listen == f"127.0.0.1:710{node_id}"


def test_unknown_toml_key_suggests_the_nearest(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "node_id = 1\ndata-dir = '/tmp/x'\n")
    message = load_error(["--config", str(path)])
    assert f"unknown key 'data-dir' in config file {path}" in message
    assert "did you mean data_dir?" in message
    assert "docs/node-config.md" in message


def test_unknown_toml_key_without_a_near_one(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "node_id = 1\n[raft]\nmax_inflight = 3\n")
    message = load_error(["--config", str(path)])
    assert "unknown key 'raft'" in message
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('node_id = "1"', 'node_id "1" (from node_id in {path}): expected a whole number'),
        ("node_id = true", "node_id True (from node_id in {path}): expected a whole number"),
        ("listen = 7101", "listen 7101 (from listen in {path}): expected a string"),
        ('lease_reads = "yes"', 'lease_reads "yes" (from lease_reads in {path}): expected true'),
        ('initial_cluster = "1=a:1"', "expected a table such as [initial_cluster]"),
        ("groups = [1, 2]", "expected a table such as [groups]"),
        ("initial_cluster = {}", "names no node"),
        ('initial_cluster = { x = "a:1" }', "node id 'x' is not a whole number"),
        ("initial_cluster = { 1 = 5 }", "node 1: expected an address string"),
        ("groups = { 0 = 1 }", "group 0: expected a list of node ids"),
        ("groups = { 0 = [1.5] }", "group 0: 1.5 is not a node id"),
    ],
)
def test_toml_values_of_the_wrong_type(tmp_path: Path, line: str, expected: str) -> None:
    path = write_toml(tmp_path, line + "\n")
    message = load_error(["--config", str(path), "--node-id=1"])
    assert expected.format(path=path) in message
    assert f"in {path}" in message


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "node_id = = 1\n")
    message = load_error(["--config", str(path)])
    assert f"config file {path} is not valid TOML" in message
    assert "line 1" in message


def test_missing_config_file_names_where_its_path_came_from(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert load_error(["--config", str(missing)]) == (
        f"config file {missing} (from flag --config) does not exist; change --config"
    )
    message = load_error([], {"SHARDKV_CONFIG": str(missing)})
    assert "(from environment variable SHARDKV_CONFIG)" in message
    assert "change or unset SHARDKV_CONFIG" in message


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    message = load_error(["--config", str(tmp_path)])
    assert f"cannot read config file {tmp_path}" in message


# -- environment formats ---------------------------------------------------------


def test_environment_formats() -> None:
    config = load(
        [],
        {
            "SHARDKV_NODE_ID": " 3 ",
            "SHARDKV_INITIAL_CLUSTER": " 1 = 127.0.0.1:7101 , 2=127.0.0.1:7102,3=127.0.0.1:7103",
            "SHARDKV_GROUPS": "0=1,2,3; 1 = 3,2 ;2=1",
            "SHARDKV_DATA_DIR": "/data/3",
            "SHARDKV_LOG_LEVEL": "warning",
            "SHARDKV_LEASE_READS": "1",
            "SHARDKV_CLUSTER_ID": "c1",
        },
    )
    assert config.node_id == 3
    assert config.initial_cluster == {
        1: "127.0.0.1:7101",
        2: "127.0.0.1:7102",
        3: "127.0.0.1:7103",
    }
    assert config.groups == {0: (1, 2, 3), 1: (2, 3), 2: (1,)}
    assert config.data_dir == Path("/data/3")
    assert config.log_level == "WARNING"
    assert config.lease_reads
    assert config.cluster_id == "c1"
    assert config.hosted_groups == (0, 1)


def test_formatted_layouts_parse_back() -> None:
    cluster = {2: "127.0.0.1:7102", 1: "127.0.0.1:7101", 3: "[::1]:7103"}
    groups = {1: (1, 3), 0: (1, 2, 3)}
    assert format_initial_cluster(cluster) == "1=127.0.0.1:7101,2=127.0.0.1:7102,3=[::1]:7103"
    assert format_groups(groups) == "0=1,2,3;1=1,3"
    config = load(
        [
            "--node-id=1",
            f"--initial-cluster={format_initial_cluster(cluster)}",
            f"--groups={format_groups(groups)}",
        ]
    )
    assert (config.initial_cluster, config.groups) == (cluster, groups)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"SHARDKV_NODE_ID": "one"},
            'node_id "one" (from environment variable SHARDKV_NODE_ID): expected a whole number; '
            "change or unset SHARDKV_NODE_ID",
        ),
        (
            {"SHARDKV_LEASE_READS": "maybe"},
            'lease_reads "maybe" (from environment variable SHARDKV_LEASE_READS): '
            "expected true or false",
        ),
        (
            {"SHARDKV_INITIAL_CLUSTER": "1=127.0.0.1:7101,2"},
            "'2' is not id=host:port; expected a list such as 1=127.0.0.1:7101,2=127.0.0.1:7102",
        ),
        (
            {"SHARDKV_INITIAL_CLUSTER": "1=127.0.0.1:7101,1=127.0.0.1:7102"},
            "node 1 is listed twice",
        ),
        ({"SHARDKV_INITIAL_CLUSTER": "1=127.0.0.1"}, "node 1: expected host:port"),
        ({"SHARDKV_GROUPS": "0=1;0=1"}, "group 0 is listed twice"),
        ({"SHARDKV_GROUPS": "0=1;1"}, "'1' is not group=replicas; expected a list such as"),
        ({"SHARDKV_GROUPS": "0=1,x"}, "group 0: node id 'x' is not a whole number"),
        ({"SHARDKV_GROUPS": "a=1"}, "group id 'a' is not a whole number"),
    ],
)
def test_environment_format_errors(environ: dict[str, str], expected: str) -> None:
    message = load_error(["--node-id=1"] if "SHARDKV_NODE_ID" not in environ else [], environ)
    assert expected in message
    (name,) = environ
    assert f"(from environment variable {name})" in message


# -- validation messages -----------------------------------------------------------


def test_missing_node_id() -> None:
    assert load_error() == (
        "node_id is not set: every node needs its own id; "
        "set it with --node-id, SHARDKV_NODE_ID or node_id in the config file"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--node-id=0"], "node_id 0 (from flag --node-id): must be a positive whole number"),
        (["--node-id=-3"], "node_id -3 (from flag --node-id): must be a positive whole number"),
        (["--node-id=x"], 'node_id "x" (from flag --node-id): expected a whole number'),
        (["--node-id=1", "--tick-interval-ms=0"], "tick_interval_ms 0 (from flag"),
        (["--node-id=1", "--heartbeat-ticks=0"], "heartbeat_ticks 0 (from flag"),
        (["--node-id=1", "--snapshot-interval-entries=0"], "snapshot_interval_entries 0"),
        (
            ["--node-id=1", "--election-ticks=3", "--heartbeat-ticks=3"],
            "election_ticks 3 (from flag --election-ticks): must be greater than heartbeat_ticks "
            "(3, from flag --heartbeat-ticks)",
        ),
        (
            ["--node-id=1", "--election-ticks=1"],
            "must be greater than heartbeat_ticks (1, from default)",
        ),
        (
            ["--node-id=1", "--cluster-id=-bad"],
            'cluster_id "-bad" (from flag --cluster-id): expected 1 to 64 letters',
        ),
        (["--node-id=1", "--cluster-id", "x" * 65], "expected 1 to 64 letters"),
        (["--node-id=1", "--cluster-id="], 'cluster_id "" (from flag --cluster-id)'),
        (
            ["--node-id=1", "--log-level=loud"],
            'log_level "loud" (from flag --log-level): expected one of DEBUG, INFO, WARNING, '
            "ERROR, CRITICAL",
        ),
        (
            ["--node-id=1", "--data-dir="],
            'data_dir "" (from flag --data-dir): expected a directory',
        ),
    ],
)
def test_scalar_errors_name_setting_value_origin_and_fix(argv: list[str], expected: str) -> None:
    message = load_error(argv)
    assert expected in message
    flag = expected.split("(from flag ")[1].split(")")[0] if "(from flag " in expected else None
    if flag:
        assert message.endswith(f"change {flag}")


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "expected host:port, such as 127.0.0.1:7101"),
        (":7101", "expected host:port, such as 127.0.0.1:7101"),
        ("127.0.0.1:http", "the port 'http' is not a number"),
        ("127.0.0.1:0", "the port 0 is not between 1 and 65535"),
        ("127.0.0.1:70000", "the port 70000 is not between 1 and 65535"),
        ("::1:7101", "write an IPv6 address in brackets, such as [::1]:7101"),
        ("[not-ipv6]:7101", "[not-ipv6] is not an IPv6 address"),
        ("bad host:7101", "'bad host' is not a host name or IP address"),
    ],
)
def test_bad_listen_address(address: str, problem: str) -> None:
    message = load_error(["--node-id=1", "--listen", address])
    assert message == f'listen "{address}" (from flag --listen): {problem}; change --listen'


def test_parse_address_accepts_names_ipv4_and_bracketed_ipv6() -> None:
    assert parse_address("node-1.example.com:7101") == ("node-1.example.com", 7101)
    assert parse_address("10.0.0.1:1") == ("10.0.0.1", 1)
    assert parse_address("[::1]:65535") == ("::1", 65535)


@pytest.mark.parametrize("wildcard", ["0.0.0.0:7101", "[::]:7101"])
def test_wildcard_advertise_is_refused(wildcard: str) -> None:
    message = load_error(["--node-id=1", "--advertise", wildcard])
    assert f'advertise "{wildcard}" (from flag --advertise)' in message
    assert "is a wildcard address that other nodes cannot dial" in message
    assert "set --advertise, SHARDKV_ADVERTISE or advertise in the config file" in message


def test_wildcard_listen_without_advertise_says_advertise_came_from_listen() -> None:
    message = load_error(["--node-id=1", "--listen=0.0.0.0:7101"])
    assert 'advertise "0.0.0.0:7101" (from default: same as listen, from flag --listen)' in message
    assert "wildcard" in message


def test_advertise_must_match_the_initial_cluster() -> None:
    message = load_error(
        ["--node-id=2", "--listen=127.0.0.1:7200", f"--initial-cluster={THREE_NODES}"]
    )
    assert (
        'advertise "127.0.0.1:7200" (from default: same as listen, from flag --listen)' in message
    )
    assert "differs from this node's address in initial_cluster, 127.0.0.1:7102" in message
    assert "(from flag --initial-cluster)" in message
    assert "make them equal, or set --advertise" in message


def test_initial_cluster_must_contain_this_node() -> None:
    message = load_error(
        ["--node-id=4"], {"SHARDKV_INITIAL_CLUSTER": "1=127.0.0.1:7101,2=127.0.0.1:7102"}
    )
    assert message == (
        'initial_cluster "1=127.0.0.1:7101,2=127.0.0.1:7102" (from environment variable '
        "SHARDKV_INITIAL_CLUSTER): has no entry for this node (node_id 4, from flag --node-id); "
        "add 4=<host:port> to it, or fix the node id"
    )


def test_initial_cluster_addresses_must_be_unique() -> None:
    message = load_error(["--node-id=1", "--initial-cluster=1=Node:7101,2=node:7101"])
    assert "nodes 1 and 2 share the address node:7101; every node needs its own" in message
    assert message.endswith("change --initial-cluster")


def test_initial_cluster_wildcard_address_is_refused() -> None:
    message = load_error(["--node-id=1", "--initial-cluster=1=127.0.0.1:7101,2=0.0.0.0:7102"])
    assert "node 2 has the wildcard address 0.0.0.0:7102, which peers cannot dial" in message


def test_initial_cluster_node_ids_must_be_positive() -> None:
    message = load_error(["--node-id=1", "--initial-cluster=0=127.0.0.1:7100,1=127.0.0.1:7101"])
    assert "node id 0 is not positive" in message


@pytest.mark.parametrize(
    ("groups", "expected", "fix"),
    [
        ("1=1", "has no meta group 0", "add 0=<node ids>, such as 0=1,2,3"),
        ("0=1;1=", "group 1 has no replica", "change --groups"),
        (
            "0=1;1=2,2",
            "group 1 lists node 2 twice; a node holds at most one replica",
            "change --groups",
        ),
        (
            "0=1;1=1,4",
            "group 1 has a replica on node 4, which is not in initial_cluster "
            "(from flag --initial-cluster)",
            "add the node to initial_cluster or take it out of the group",
        ),
        ("0=1;-1=1", "group id -1 is negative", "change --groups"),
        ("0=1;2048=1", "group id 2048 is over 2047", "number groups from 1"),
    ],
)
def test_group_errors(groups: str, expected: str, fix: str) -> None:
    message = load_error(["--node-id=1", f"--initial-cluster={THREE_NODES}", f"--groups={groups}"])
    assert message.startswith('groups "')
    assert "(from flag --groups)" in message
    assert expected in message
    assert message.endswith(fix)


def test_groups_and_the_shorthand_exclude_each_other(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "node_id = 1\ngroups_count = 4\n")
    message = load_error(["--config", str(path), "--groups=0=1"])
    assert message == (
        f"groups (from flag --groups) and groups_count (from groups_count in {path}) both say "
        "where the groups go; keep one: groups lists them, groups_count with replication "
        "places them round-robin"
    )
    message = load_error(["--node-id=1", "--groups=0=1"], {"SHARDKV_REPLICATION": "1"})
    assert "replication (from environment variable SHARDKV_REPLICATION)" in message


def test_replication_larger_than_the_cluster() -> None:
    message = load_error(["--node-id=1", f"--initial-cluster={THREE_NODES}", "--replication=5"])
    assert message == (
        "replication 5 (from flag --replication): must be between 1 and the number of nodes in "
        "initial_cluster (3, from flag --initial-cluster); change --replication"
    )


def test_negative_groups_count() -> None:
    message = load_error(["--node-id=1"], {"SHARDKV_GROUPS_COUNT": "-1"})
    assert (
        "groups_count -1 (from environment variable SHARDKV_GROUPS_COUNT): must not be" in message
    )


def test_direct_construction_is_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        NodeConfig(
            node_id=1,
            listen="127.0.0.1:7101",
            advertise="127.0.0.1:7101",
            data_dir=tmp_path,
            initial_cluster={1: "127.0.0.1:7101"},
            groups={1: (1,)},
        )
    assert str(caught.value) == (
        'groups "1=1" (from NodeConfig argument): has no meta group 0; '
        "add 0=<node ids>, such as 0=1,2,3"
    )
    assert caught.value.setting == "groups"
    assert isinstance(caught.value, ShardKVError)


# -- flags -------------------------------------------------------------------------


def test_unknown_flag_suggests_the_nearest() -> None:
    assert load_error(["--nod-id=1"]) == (
        "unknown flag --nod-id (did you mean --node-id?); run shardkv-node --help to list the flags"
    )


def test_flag_prefixes_are_not_guessed() -> None:
    assert "unknown flag --node" in load_error(["--node", "1"])


def test_flag_without_its_value() -> None:
    assert load_error(["--node-id"]) == (
        "argument --node-id: expected one argument; run shardkv-node --help to list the flags"
    )


def test_positional_argument() -> None:
    assert "unexpected argument 'start': shardkv-node takes flags only" in load_error(
        ["--node-id=1", "start"]
    )


# -- the round-robin shorthand -------------------------------------------------------


def test_round_robin_layout_of_five_nodes() -> None:
    assert round_robin_groups([5, 3, 1, 4, 2], groups_count=5, replication=3) == {
        0: (1, 2, 3),
        1: (1, 2, 3),
        2: (2, 3, 4),
        3: (3, 4, 5),
        4: (1, 4, 5),
        5: (1, 2, 5),
    }


def test_round_robin_is_deterministic_and_balanced() -> None:
    nodes = [7, 3, 11, 5]
    layout = round_robin_groups(nodes, groups_count=8, replication=3)
    assert layout == round_robin_groups(reversed(nodes), groups_count=8, replication=3)
    data_replicas = [node for group_id, replicas in layout.items() if group_id for node in replicas]
    counts = {node: data_replicas.count(node) for node in nodes}
    assert counts == {3: 6, 5: 6, 7: 6, 11: 6}


def test_round_robin_wraps_more_groups_than_nodes_with_one_replica() -> None:
    assert round_robin_groups([1, 2], groups_count=3, replication=1) == {
        0: (1,),
        1: (1,),
        2: (2,),
        3: (1,),
    }


def test_shorthand_through_flags_and_its_defaults() -> None:
    config = load(
        ["--node-id=3", f"--initial-cluster={THREE_NODES}", "--groups-count=4", "--replication=2"]
    )
    assert config.groups == {0: (1, 2), 1: (1, 2), 2: (2, 3), 3: (1, 3), 4: (1, 2)}
    assert config.hosted_groups == (2, 3)
    five = ",".join(f"{node}=127.0.0.1:710{node}" for node in range(1, 6))
    defaulted = load(["--node-id=1", f"--initial-cluster={five}"])
    assert defaulted.groups == round_robin_groups(range(1, 6), groups_count=5, replication=3)


def test_groups_count_zero_leaves_only_the_meta_group() -> None:
    config = load(["--node-id=1", f"--initial-cluster={THREE_NODES}", "--groups-count=0"])
    assert config.groups == {0: (1, 2, 3)}


# -- the data directory -----------------------------------------------------------


def test_fresh_data_dir_is_created_and_claimed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    state = prepare_data_dir(config)
    assert state.fresh
    assert state.path == tmp_path / "data"
    identity = json.loads((tmp_path / "data" / IDENTITY_FILE).read_text())
    assert identity == {
        "format_version": 1,
        "cluster_id": "shardkv",
        "node_id": 1,
        "bootstrapped": False,
    }


def test_existing_data_dir_of_this_node_restarts_once_bootstrapped(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = prepare_data_dir(config)
    # Crashed before the initial state was durable: bootstrap again.
    assert prepare_data_dir(config).fresh
    bootstrapped = mark_bootstrapped(first)
    assert not bootstrapped.fresh
    assert mark_bootstrapped(bootstrapped) == bootstrapped
    again = prepare_data_dir(config)
    assert not again.fresh
    assert again.identity == bootstrapped.identity


def test_data_dir_of_another_cluster_is_refused(tmp_path: Path) -> None:
    prepare_data_dir(make_config(tmp_path, cluster_id="blue"))
    with pytest.raises(ConfigError) as caught:
        prepare_data_dir(make_config(tmp_path, cluster_id="green"))
    assert str(caught.value) == (
        f"data dir {tmp_path / 'data'} belongs to cluster blue node 1, not to cluster green "
        "node 1; use another --data-dir or remove it"
    )


def test_data_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    prepare_data_dir(make_config(tmp_path, node_id=1))
    with pytest.raises(ConfigError) as caught:
        prepare_data_dir(make_config(tmp_path, node_id=2))
    assert f"data dir {tmp_path / 'data'} belongs to cluster shardkv node 1" in str(caught.value)
    assert "use another --data-dir or remove it" in str(caught.value)


def test_non_empty_directory_without_identity_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "photos").mkdir()
    with pytest.raises(ConfigError) as caught:
        prepare_data_dir(make_config(tmp_path))
    message = str(caught.value)
    assert f"data dir {tmp_path / 'data'} (from flag --data-dir) is not empty (photos)" in message
    assert "has no IDENTITY file, so it is not a shardkv data dir" in message
    assert "use a new or empty --data-dir" in message


def test_leftover_temporary_identity_does_not_block_a_fresh_start(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / (IDENTITY_FILE + ".tmp")).write_text("{")
    assert prepare_data_dir(make_config(tmp_path)).fresh
    assert not (tmp_path / "data" / (IDENTITY_FILE + ".tmp")).exists()


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(ConfigError) as caught:
        prepare_data_dir(make_config(tmp_path))
    assert f"data dir {tmp_path / 'data'} (from flag --data-dir) is a file" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json", "it is not JSON"),
        ("[1]", "it is not a JSON object"),
        ('{"format_version": 1, "node_id": 1, "bootstrapped": true}', "cluster_id is missing"),
        ('{"format_version": 0}', "format_version is 0"),
    ],
)
def test_damaged_identity_is_refused(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / IDENTITY_FILE).write_text(content)
    with pytest.raises(ConfigError) as caught:
        prepare_data_dir(make_config(tmp_path))
    message = str(caught.value)
    assert f"cannot use {tmp_path / 'data' / IDENTITY_FILE}: {expected}" in message
    assert "remove the data dir" in message


def test_identity_of_a_newer_format_asks_for_a_newer_binary(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / IDENTITY_FILE).write_text('{"format_version": 9}')
    with pytest.raises(ConfigError) as caught:
        prepare_data_dir(make_config(tmp_path))
    assert "has format version 9, newer than this shardkv knows (1)" in str(caught.value)


# -- the listen port ----------------------------------------------------------------


def test_port_in_use_is_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            check_port_free(f"127.0.0.1:{port}")
    assert str(caught.value) == (
        f"address 127.0.0.1:{port} is in use by another process; pick another --listen"
    )
    assert caught.value.setting == "listen"


def test_free_port_passes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free(f"127.0.0.1:{port}")


def test_port_check_of_a_foreign_address() -> None:
    # 192.0.2.0/24 is reserved for documentation: never an address of this host.
    with pytest.raises(ConfigError) as caught:
        check_port_free("192.0.2.1:7101")
    assert "address 192.0.2.1:7101 is not an address of this host" in str(caught.value)


def test_port_check_of_a_malformed_address() -> None:
    with pytest.raises(ConfigError) as caught:
        check_port_free("localhost")
    assert "listen address 'localhost': expected host:port" in str(caught.value)


def test_help_still_prints_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load(["--help"])
    assert caught.value.code == 0
    assert "--initial-cluster" in capsys.readouterr().out
