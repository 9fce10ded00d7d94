"""Configuration of one ``shardkv-node`` process: where each setting comes from, what is valid.

Layers, lowest to highest, as in etcd and TiKV::

    defaults  <  TOML file (--config / SHARDKV_CONFIG)  <  SHARDKV_* environment  <  flags

``load_config(argv, environ)`` merges them and returns a validated, frozen
``NodeConfig``. It reads no global state: the caller passes the arguments and
the environment (it does read the TOML file it is pointed at). The config
remembers where each setting came from (``NodeConfig.origins``), so every
error, and the node's startup log, can name the flag, variable or file to
change. docs/node-config.md is the user's version of this page.

Decisions:

1. Unknown TOML keys and unknown flags are errors, with a did-you-mean: a typo
   must not pass silently. Unknown ``SHARDKV_*`` variables are ignored, since
   the router and the CLI share the prefix.
2. An empty environment variable counts as unset (compose files and shell
   scripts pass ``VAR=`` for an undefined value).
3. Defaults that depend on other settings, resolved in this order:
   ``listen`` is this node's address in ``initial_cluster``, or else
   ``127.0.0.1:<7100 + node_id>``; ``advertise`` is ``listen``;
   ``initial_cluster`` is this node alone; ``groups`` follows
   ``round_robin_groups`` with ``groups_count`` (default: one group per node)
   and ``replication`` (default: 3, or fewer if the cluster is smaller);
   ``data_dir`` is ``shardkv-data/node-<node_id>``.
4. A relative ``data_dir`` (or TLS file) in the TOML file is relative to the file's own
   directory, so one file works from any working directory; from a flag or the
   environment it is relative to the working directory.
5. ``groups`` and the shorthand ``groups_count``/``replication`` exclude each
   other, whatever their layers: silently preferring one of two spellings of
   the same thing is the kind of surprise this module exists to prevent.
6. ``advertise`` must be this node's address in ``initial_cluster`` (as etcd
   checks ``--initial-advertise-peer-urls`` against ``--initial-cluster``):
   otherwise peers would dial an address this node does not answer on.
7. Replica tuples are stored sorted, so two spellings of one layout compare equal.
8. Every problem is a ``ConfigError``, bad flags included (the parser raises it
   instead of exiting), so the caller prints one message and exits with
   status 2. ``--help`` still prints and raises ``SystemExit(0)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, NoReturn, TypeVar, cast

from shardkv.errors import ShardKVError
from shardkv.logs import LOG_FORMATS
from shardkv.metrics import DEFAULT_METRICS_ADDRESS
from shardkv.revisions import MAX_GROUP_ID
from shardkv.tls import TlsFiles

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CLUSTER_ID",
    "DEFAULT_LISTEN_BASE_PORT",
    "DEFAULT_REPLICATION",
    "LOG_LEVELS",
    "META_GROUP_ID",
    "ConfigError",
    "NodeConfig",
    "Origin",
    "build_parser",
    "format_groups",
    "format_initial_cluster",
    "is_wildcard_host",
    "load_config",
    "parse_address",
    "round_robin_groups",
]

META_GROUP_ID = 0
DEFAULT_CLUSTER_ID = "shardkv"
# Node n listens on 127.0.0.1:(7100 + n) unless told otherwise: a local
# cluster of nodes 1, 2, 3 needs no addresses at all.
DEFAULT_LISTEN_BASE_PORT = 7100
DEFAULT_REPLICATION = 3
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

CONFIG_ENV = "SHARDKV_CONFIG"
_ENV_PREFIX = "SHARDKV_"
_CLUSTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_EXAMPLE_ADDRESS = "127.0.0.1:7101"


class ConfigError(ShardKVError):
    """The node's configuration, data directory or listen address is unusable.

    The message names the setting, the bad value, where it came from and what
    to do; ``setting`` is the setting's name when one setting is at fault.
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a setting's value came from: the layer and, within it, the exact place."""

    kind: Literal["default", "file", "env", "flag", "argument"]
    # The flag (``--node-id``), the variable (``SHARDKV_NODE_ID``), the file
    # place (``node_id in /etc/shardkv/node.toml``), or how a default was derived.
    where: str = ""

    def __str__(self) -> str:
        if self.kind == "flag":
            return f"flag {self.where}"
        if self.kind == "env":
            return f"environment variable {self.where}"
        if self.kind == "file":
            return self.where
        if self.kind == "argument":
            return "NodeConfig argument"
        return f"default: {self.where}" if self.where else "default"


_ARGUMENT = Origin("argument")


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _env(setting: str) -> str:
    return _ENV_PREFIX + setting.upper()


def _how_to_set(setting: str) -> str:
    return f"{_flag(setting)}, {_env(setting)} or {setting} in the config file"


def _fix(setting: str, origin: Origin) -> str:
    """What the user changes to fix ``setting``, given where its value came from."""
    if origin.kind == "flag":
        return f"change {origin.where}"
    if origin.kind == "env":
        return f"change or unset {origin.where}"
    if origin.kind == "file":
        return f"change {origin.where}"
    if origin.kind == "argument":
        return f"pass a valid {setting}"
    return f"set it with {_how_to_set(setting)}"


def _show(value: object) -> str:
    """A value as the user wrote it, near enough to find it: layouts in their flag form."""
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, dict) and all(isinstance(key, int) for key in value):
        if all(isinstance(item, str) for item in value.values()):
            return f'"{format_initial_cluster(value)}"'
        if all(isinstance(item, tuple) for item in value.values()):
            return f'"{format_groups(value)}"'
    return repr(value)


def _error(
    setting: str, value: object, origin: Origin, problem: str, fix: str | None = None
) -> ConfigError:
    return ConfigError(
        f"{setting} {_show(value)} (from {origin}): {problem}; {fix or _fix(setting, origin)}",
        setting=setting,
    )


# -- addresses and layouts -------------------------------------------------------


def parse_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets: ``[::1]:7101``) into host and port.

    Raises ``ValueError`` saying what is wrong and how it should look. Host
    names are not resolved here.
    """
    host, separator, port_text = text.rpartition(":")
    if not separator or not host:
        raise ValueError(f"expected host:port, such as {_EXAMPLE_ADDRESS}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, such as [::1]:7101")
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"the port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"the port {port} is not between 1 and 65535")
    return host, port


def is_wildcard_host(host: str) -> bool:
    """True for the any-address hosts (``0.0.0.0``, ``::``) that one can bind but not dial."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _address_key(address: str) -> tuple[str, int]:
    host, port = parse_address(address)
    return host.lower(), port


def format_initial_cluster(initial_cluster: Mapping[int, str]) -> str:
    """The flag and environment form: ``1=127.0.0.1:7101,2=127.0.0.1:7102``."""
    return ",".join(f"{node_id}={initial_cluster[node_id]}" for node_id in sorted(initial_cluster))


def format_groups(groups: Mapping[int, Sequence[int]]) -> str:
    """The flag and environment form: ``0=1,2,3;1=1,2,3``."""
    return ";".join(
        f"{group_id}=" + ",".join(str(node_id) for node_id in groups[group_id])
        for group_id in sorted(groups)
    )


def round_robin_groups(
    node_ids: Iterable[int], groups_count: int, replication: int
) -> dict[int, tuple[int, ...]]:
    """The shorthand layout of ``--groups-count`` and ``--replication``.

    With the node ids sorted as n[0] .. n[k-1]: the meta group 0 goes to
    n[0] .. n[R-1]; data group g (1 .. groups_count) goes to the R nodes that
    follow n[(g - 1) mod k] cyclically, itself first. So successive groups
    start on successive nodes, and every node holds the same number of
    replicas, give or take one. Replica tuples are sorted. The caller checks
    ``1 <= replication <= k``.
    """
    nodes = sorted(node_ids)
    layout = {META_GROUP_ID: tuple(nodes[:replication])}
    for group_id in range(1, groups_count + 1):
        start = group_id - 1
        layout[group_id] = tuple(
            sorted(nodes[(start + offset) % len(nodes)] for offset in range(replication))
        )
    return layout


# -- converting one layer's raw values -------------------------------------------


class _Invalid(ValueError):
    """A raw value has the wrong form; the message says what the right one is."""


def _int_text(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _Invalid("expected a whole number") from None


def _int_toml(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid("expected a whole number (no quotes)")
    return value


def _str_toml(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string (in quotes)")
    return value


def _address_text(text: str) -> str:
    address = text.strip()
    try:
        parse_address(address)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return address


def _address_toml(value: object) -> str:
    return _address_text(_str_toml(value))


def _host_text(text: str) -> str:
    host = text.strip().removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise _Invalid("expected a host name or IP address, such as 127.0.0.1") from None
    return host


def _host_toml(value: object) -> str:
    return _host_text(_str_toml(value))


def _path_text(text: str) -> Path:
    if not text.strip():
        raise _Invalid("expected a directory path")
    return Path(text.strip())


def _path_toml(value: object) -> Path:
    return _path_text(_str_toml(value))


def _file_text(text: str) -> Path:
    if not text.strip():
        raise _Invalid("expected a file path")
    return Path(text.strip())


def _file_toml(value: object) -> Path:
    return _file_text(_str_toml(value))


def _cluster_id_text(text: str) -> str:
    return text.strip()


def _cluster_id_toml(value: object) -> str:
    return _str_toml(value).strip()


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool_text(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _Invalid("expected true or false")


def _bool_toml(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false (no quotes)")
    return value


def _log_level_text(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise _Invalid("expected one of " + ", ".join(LOG_LEVELS))
    return level


def _log_level_toml(value: object) -> str:
    return _log_level_text(_str_toml(value))


def _log_format_text(text: str) -> str:
    log_format = text.strip().lower()
    if log_format not in LOG_FORMATS:
        raise _Invalid("expected one of " + ", ".join(LOG_FORMATS))
    return log_format


def _log_format_toml(value: object) -> str:
    return _log_format_text(_str_toml(value))


def _node_id_key(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise _Invalid(f"{what} {text.strip()!r} is not a whole number") from None


def _initial_cluster_text(text: str) -> dict[int, str]:
    items: list[tuple[str, object]] = []
    for item in text.split(","):
        node_text, equals, address = item.partition("=")
        if not equals:
            raise _Invalid(
                f"{item.strip()!r} is not id=host:port; expected a list such as "
                "1=127.0.0.1:7101,2=127.0.0.1:7102"
            )
        items.append((node_text, address))
    return _initial_cluster_items(items)


def _initial_cluster_toml(value: object) -> dict[int, str]:
    if not isinstance(value, dict):
        raise _Invalid('expected a table such as [initial_cluster] with 1 = "127.0.0.1:7101"')
    return _initial_cluster_items(list(value.items()))


def _initial_cluster_items(items: Sequence[tuple[str, object]]) -> dict[int, str]:
    if not items:
        raise _Invalid("names no node")
    cluster: dict[int, str] = {}
    for node_text, address in items:
        node_id = _node_id_key(node_text, "node id")
        if node_id in cluster:
            raise _Invalid(f"node {node_id} is listed twice")
        if not isinstance(address, str):
            raise _Invalid(f"node {node_id}: expected an address string such as {_EXAMPLE_ADDRESS}")
        try:
            cluster[node_id] = _address_text(address)
        except _Invalid as exc:
            raise _Invalid(f"node {node_id}: {exc}") from None
    return cluster


def _groups_text(text: str) -> dict[int, tuple[int, ...]]:
    items: list[tuple[str, object]] = []
    for item in text.split(";"):
        group_text, equals, replicas = item.partition("=")
        if not equals:
            raise _Invalid(
                f"{item.strip()!r} is not group=replicas; expected a list such as 0=1,2,3;1=1,2,3"
            )
        items.append((group_text, [] if not replicas.strip() else replicas.split(",")))
    return _groups_items(items)


def _groups_toml(value: object) -> dict[int, tuple[int, ...]]:
    if not isinstance(value, dict):
        raise _Invalid("expected a table such as [groups] with 0 = [1, 2, 3]")
    return _groups_items(list(value.items()))


def _groups_items(items: Sequence[tuple[str, object]]) -> dict[int, tuple[int, ...]]:
    groups: dict[int, tuple[int, ...]] = {}
    for group_text, replicas in items:
        group_id = _node_id_key(group_text, "group id")
        if group_id in groups:
            raise _Invalid(f"group {group_id} is listed twice")
        if not isinstance(replicas, list):
            raise _Invalid(f"group {group_id}: expected a list of node ids such as [1, 2, 3]")
        node_ids: list[int] = []
        for replica in replicas:
            if isinstance(replica, str):
                node_ids.append(_node_id_key(replica, f"group {group_id}: node id"))
            elif isinstance(replica, int) and not isinstance(replica, bool):
                node_ids.append(replica)
            else:
                raise _Invalid(f"group {group_id}: {replica!r} is not a node id")
        groups[group_id] = tuple(node_ids)
    return groups


_T = TypeVar("_T")
_Raw = TypeVar("_Raw")


@dataclass(frozen=True, slots=True)
class _Setting(Generic[_T]):
    """One setting as the user spells it in each layer; ``name`` is the TOML key."""

    name: str
    metavar: str
    # "{default}" in it stands for NodeConfig's default (filled in by build_parser).
    help: str
    from_text: Callable[[str], _T]
    from_toml: Callable[[object], _T]

    @property
    def flag(self) -> str:
        return _flag(self.name)

    @property
    def env(self) -> str:
        return _env(self.name)


_NODE_ID = _Setting("node_id", "ID", "this node's id, > 0", _int_text, _int_toml)
_LISTEN = _Setting(
    "listen",
    "HOST:PORT",
    "address the gRPC server binds (default: this node's initial_cluster address, "
    f"else 127.0.0.1:<{DEFAULT_LISTEN_BASE_PORT} + node id>)",
    _address_text,
    _address_toml,
)
_ADVERTISE = _Setting(
    "advertise",
    "HOST:PORT",
    "address other nodes dial (default: listen); never 0.0.0.0 or [::]",
    _address_text,
    _address_toml,
)
_DATA_DIR = _Setting(
    "data_dir",
    "PATH",
    "directory of this node's RocksDB and identity (default: shardkv-data/node-<node id>)",
    _path_text,
    _path_toml,
)
_CLUSTER = _Setting(
    "cluster_id",
    "NAME",
    f"name of the cluster; a data dir serves one cluster only (default: {DEFAULT_CLUSTER_ID})",
    _cluster_id_text,
    _cluster_id_toml,
)
_INITIAL_CLUSTER = _Setting(
    "initial_cluster",
    "ID=HOST:PORT,...",
    "every node of the initial cluster and its address (default: this node alone)",
    _initial_cluster_text,
    _initial_cluster_toml,
)
_GROUPS = _Setting(
    "groups",
    "GROUP=ID,ID;...",
    "the replicas of each group; group 0 is the meta group",
    _groups_text,
    _groups_toml,
)
_GROUPS_COUNT = _Setting(
    "groups_count",
    "N",
    "instead of groups: data groups 1..N placed round-robin (default: one per node)",
    _int_text,
    _int_toml,
)
_REPLICATION = _Setting(
    "replication",
    "R",
    f"with groups_count: replicas per group (default: {DEFAULT_REPLICATION}, at most the nodes)",
    _int_text,
    _int_toml,
)
_TICK_INTERVAL_MS = _Setting(
    "tick_interval_ms", "MS", "length of one Raft tick (default: {default})", _int_text, _int_toml
)
_ELECTION_TICKS = _Setting(
    "election_ticks",
    "N",
    "ticks without a leader before an election (default: {default})",
    _int_text,
    _int_toml,
)
_HEARTBEAT_TICKS = _Setting(
    "heartbeat_ticks",
    "N",
    "ticks between leader heartbeats (default: {default})",
    _int_text,
    _int_toml,
)
_SNAPSHOT_INTERVAL_ENTRIES = _Setting(
    "snapshot_interval_entries",
    "N",
    "applied entries between snapshots of a group (default: {default})",
    _int_text,
    _int_toml,
)
_SNAPSHOT_INTERVAL_MB = _Setting(
    "snapshot_interval_mb",
    "MB",
    "MiB of applied entry data between snapshots of a group (whichever of this and "
    "the entry count comes first, once the log holds a quarter of the last snapshot) "
    "(default: {default})",
    _int_text,
    _int_toml,
)
_TXN_RESOLVE_INTERVAL_MS = _Setting(
    "txn_resolve_interval_ms",
    "MS",
    "how often the leader of each group looks for transactions whose coordinator went "
    "quiet past their deadline, and finishes them (default: {default})",
    _int_text,
    _int_toml,
)
_LEASE_READS = _Setting(
    "lease_reads",
    "",
    "serve reads under the leader's lease instead of ReadIndex (default: off)",
    _bool_text,
    _bool_toml,
)
_JOIN = _Setting(
    "join",
    "HOST:PORT",
    "at the first start, join the running cluster of the member at this address instead "
    "of bootstrapping one; the node then hosts no group until one is placed on it "
    "(default: bootstrap from initial_cluster)",
    _address_text,
    _address_toml,
)
_METRICS_PORT = _Setting(
    "metrics_port",
    "PORT",
    "port of the Prometheus metrics HTTP endpoint (/metrics); 0: no endpoint (default: {default})",
    _int_text,
    _int_toml,
)
_METRICS_ADDRESS = _Setting(
    "metrics_address",
    "HOST",
    "address the metrics endpoint binds (default: {default}); 0.0.0.0 for every interface",
    _host_text,
    _host_toml,
)
_LOG_LEVEL = _Setting(
    "log_level",
    "LEVEL",
    "one of " + ", ".join(LOG_LEVELS) + " (default: {default})",
    _log_level_text,
    _log_level_toml,
)
_LOG_FORMAT = _Setting(
    "log_format",
    "FORMAT",
    "text, or json for one JSON object a line with group_id and node_id fields "
    "(default: {default})",
    _log_format_text,
    _log_format_toml,
)
_TLS_CA_FILE = _Setting(
    "tls_ca_file",
    "PATH",
    "PEM certificate of the cluster CA: with tls_cert_file and tls_key_file, every "
    "connection from and to this node is mutual TLS (default: plaintext)",
    _file_text,
    _file_toml,
)
_TLS_CERT_FILE = _Setting(
    "tls_cert_file",
    "PATH",
    "PEM certificate of this node, signed by the cluster CA (default: plaintext)",
    _file_text,
    _file_toml,
)
_TLS_KEY_FILE = _Setting(
    "tls_key_file",
    "PATH",
    "PEM private key of this node's certificate (default: plaintext)",
    _file_text,
    _file_toml,
)
_TLS_SETTINGS = ("tls_ca_file", "tls_cert_file", "tls_key_file")

_SETTINGS: dict[str, _Setting[Any]] = {
    setting.name: setting
    for setting in (
        _NODE_ID,
        _LISTEN,
        _ADVERTISE,
        _DATA_DIR,
        _CLUSTER,
        _INITIAL_CLUSTER,
        _GROUPS,
        _GROUPS_COUNT,
        _REPLICATION,
        _TICK_INTERVAL_MS,
        _ELECTION_TICKS,
        _HEARTBEAT_TICKS,
        _SNAPSHOT_INTERVAL_ENTRIES,
        _SNAPSHOT_INTERVAL_MB,
        _TXN_RESOLVE_INTERVAL_MS,
        _LEASE_READS,
        _JOIN,
        _METRICS_PORT,
        _METRICS_ADDRESS,
        _LOG_LEVEL,
        _LOG_FORMAT,
        _TLS_CA_FILE,
        _TLS_CERT_FILE,
        _TLS_KEY_FILE,
    )
}

# Paths that a TOML file gives relative to its own directory (decision 4).
_FILE_RELATIVE = frozenset({"data_dir", *_TLS_SETTINGS})

# One layer's values: setting name -> (value as its ``_Setting`` made it, origin).
_Layer = dict[str, tuple[object, Origin]]


def _get(layer: _Layer, setting: _Setting[_T]) -> tuple[_T, Origin] | None:
    entry = layer.get(setting.name)
    if entry is None:
        return None
    # Only setting.from_text / from_toml put a value under setting.name.
    return cast(_T, entry[0]), entry[1]


def _suggest(word: str, choices: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {matches[0]}?)" if matches else ""


# -- the config ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """What one node process runs with. Constructing one validates it (``ConfigError``)."""

    node_id: int
    listen: str
    advertise: str
    data_dir: Path
    initial_cluster: dict[int, str]
    groups: dict[int, tuple[int, ...]]
    cluster_id: str = DEFAULT_CLUSTER_ID
    tick_interval_ms: int = 100
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_interval_entries: int = 10_000
    snapshot_interval_mb: int = 64
    txn_resolve_interval_ms: int = 500
    lease_reads: bool = False
    metrics_port: int = 0
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    log_level: str = "INFO"
    log_format: str = "text"
    join: str | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Where each setting came from; a setting missing here was a constructor
    # argument. Not part of equality: the same config is the same config.
    origins: Mapping[str, Origin] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check_scalars()
        self._check_addresses()
        self._check_initial_cluster()
        self._check_groups()
        self._check_tls()

    def origin(self, setting: str) -> Origin:
        return self.origins.get(setting, _ARGUMENT)

    @property
    def hosted_groups(self) -> tuple[int, ...]:
        """The groups with a replica on this node, ascending; none for a joining node."""
        if self.join is not None:
            return ()
        return tuple(
            sorted(
                group_id for group_id, replicas in self.groups.items() if self.node_id in replicas
            )
        )

    def _invalid(self, setting: str, problem: str, fix: str | None = None) -> ConfigError:
        return _error(setting, getattr(self, setting), self.origin(setting), problem, fix)

    def _check_scalars(self) -> None:
        positive = (
            "node_id",
            "tick_interval_ms",
            "heartbeat_ticks",
            "snapshot_interval_entries",
            "snapshot_interval_mb",
            "txn_resolve_interval_ms",
        )
        for setting in positive:
            if getattr(self, setting) <= 0:
                raise self._invalid(setting, "must be a positive whole number")
        if self.election_ticks <= self.heartbeat_ticks:
            raise self._invalid(
                "election_ticks",
                f"must be greater than heartbeat_ticks ({self.heartbeat_ticks}, from "
                f"{self.origin('heartbeat_ticks')}), or followers would start elections "
                "under a live leader; about 10 times heartbeat_ticks is usual",
            )
        if not _CLUSTER_ID.fullmatch(self.cluster_id):
            raise self._invalid(
                "cluster_id",
                "expected 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
            )
        if self.log_level not in LOG_LEVELS:
            raise self._invalid("log_level", "expected one of " + ", ".join(LOG_LEVELS))
        if self.log_format not in LOG_FORMATS:
            raise self._invalid("log_format", "expected one of " + ", ".join(LOG_FORMATS))

    def _check_addresses(self) -> None:
        if not 0 <= self.metrics_port <= 65535:
            raise self._invalid(
                "metrics_port", "must be a port from 1 to 65535, or 0 for no metrics endpoint"
            )
        try:
            _host_text(self.metrics_address)
        except _Invalid as exc:
            raise self._invalid("metrics_address", str(exc)) from None
        for setting in ("listen", "advertise"):
            try:
                parse_address(getattr(self, setting))
            except ValueError as exc:
                raise self._invalid(setting, str(exc)) from None
        advertise_host, _ = parse_address(self.advertise)
        if is_wildcard_host(advertise_host):
            raise self._invalid(
                "advertise",
                f"{advertise_host} is a wildcard address that other nodes cannot dial",
                f"set {_how_to_set('advertise')} to an address they can reach, "
                "such as this host's IP or DNS name",
            )

    def _check_initial_cluster(self) -> None:
        if not self.initial_cluster:
            raise self._invalid("initial_cluster", "names no node")
        seen: dict[tuple[str, int], int] = {}
        for node_id in sorted(self.initial_cluster):
            address = self.initial_cluster[node_id]
            if node_id <= 0:
                raise self._invalid("initial_cluster", f"node id {node_id} is not positive")
            try:
                key = _address_key(address)
            except ValueError as exc:
                raise self._invalid("initial_cluster", f"node {node_id}: {exc}") from None
            if is_wildcard_host(key[0]):
                raise self._invalid(
                    "initial_cluster",
                    f"node {node_id} has the wildcard address {address}, which peers cannot dial",
                )
            if key in seen:
                raise self._invalid(
                    "initial_cluster",
                    f"nodes {seen[key]} and {node_id} share the address {address}; "
                    "every node needs its own",
                )
            seen[key] = node_id
        if self.join is not None:
            return  # the cluster it joins has its own members
        if self.node_id not in self.initial_cluster:
            raise self._invalid(
                "initial_cluster",
                f"has no entry for this node (node_id {self.node_id}, from "
                f"{self.origin('node_id')})",
                f"add {self.node_id}=<host:port> to it, or fix the node id",
            )
        own_address = self.initial_cluster[self.node_id]
        if _address_key(own_address) != _address_key(self.advertise):
            raise self._invalid(
                "advertise",
                f"differs from this node's address in initial_cluster, {own_address} (from "
                f"{self.origin('initial_cluster')}): peers would dial an address this node "
                "does not answer on",
                f"make them equal, or set {_how_to_set('advertise')}",
            )

    def _check_tls(self) -> None:
        given = [setting for setting in _TLS_SETTINGS if getattr(self, setting) is not None]
        if given and len(given) < len(_TLS_SETTINGS):
            missing = next(setting for setting in _TLS_SETTINGS if setting not in given)
            raise ConfigError(
                f"{given[0]} is set (from {self.origin(given[0])}) but {missing} is not: "
                "TLS needs the CA, certificate and key files together; "
                f"set {_how_to_set(missing)}, or unset the others for plaintext",
                setting=missing,
            )

    @property
    def tls(self) -> TlsFiles | None:
        """The node's TLS files, or None for plaintext (the check makes it all or none)."""
        if self.tls_ca_file is None or self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return TlsFiles(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)

    def _check_groups(self) -> None:
        if META_GROUP_ID not in self.groups:
            raise self._invalid(
                "groups",
                f"has no meta group {META_GROUP_ID}",
                f"add {META_GROUP_ID}=<node ids>, such as 0=1,2,3",
            )
        for group_id in sorted(self.groups):
            replicas = self.groups[group_id]
            if group_id < 0:
                raise self._invalid("groups", f"group id {group_id} is negative")
            if group_id > MAX_GROUP_ID:
                raise self._invalid(
                    "groups",
                    f"group id {group_id} is over {MAX_GROUP_ID} (revisions carry the group's "
                    "id in their low bits)",
                    "number groups from 1",
                )
            if not replicas:
                raise self._invalid("groups", f"group {group_id} has no replica")
            duplicates = sorted({node_id for node_id in replicas if replicas.count(node_id) > 1})
            if duplicates:
                raise self._invalid(
                    "groups",
                    f"group {group_id} lists node {duplicates[0]} twice; "
                    "a node holds at most one replica of a group",
                )
            strangers = sorted(set(replicas) - set(self.initial_cluster))
            if strangers:
                raise self._invalid(
                    "groups",
                    f"group {group_id} has a replica on node {strangers[0]}, which is not in "
                    f"initial_cluster (from {self.origin('initial_cluster')})",
                    "add the node to initial_cluster or take it out of the group",
                )


# -- loading -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; run shardkv-node --help to list the flags")


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``shardkv-node``. Every flag defaults to None: "not given here"."""
    parser = _Parser(
        prog="shardkv-node",
        description="Run one shardkv node. Precedence: defaults < --config file < "
        "SHARDKV_* environment < flags. See docs/node-config.md.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        type=Path,
        help=f"TOML file of settings (environment: {CONFIG_ENV})",
    )
    # A help text says "{default}" where NodeConfig's default goes, so the two cannot drift.
    defaults = {
        config_field.name: config_field.default
        for config_field in dataclasses.fields(NodeConfig)
        if config_field.default is not dataclasses.MISSING
    }
    for setting in _SETTINGS.values():
        help_text = setting.help
        if "{default}" in help_text:
            help_text = help_text.replace("{default}", str(defaults[setting.name]))
        help_text = f"{help_text} [env {setting.env}]"
        if setting is _LEASE_READS:
            parser.add_argument(setting.flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(setting.flag, metavar=setting.metavar, help=help_text)
    return parser


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> NodeConfig:
    """Merge defaults, the TOML file, ``environ`` and ``argv`` (without the program name)."""
    parser = build_parser()
    arguments, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise _unknown_argument(unknown[0])
    flags = _flag_layer(vars(arguments))
    env = _env_layer(environ)
    file: _Layer = {}
    config_path = _config_path(arguments.config, environ)
    if config_path is not None:
        file = _file_layer(*config_path)
    merged: _Layer = {**file, **env, **flags}
    return _resolve(merged)


_FLAGS = ("--config", "--help", "--no-lease-reads", *(s.flag for s in _SETTINGS.values()))


def _unknown_argument(argument: str) -> ConfigError:
    if not argument.startswith("-"):
        return ConfigError(
            f"unexpected argument {argument!r}: shardkv-node takes flags only; "
            "run shardkv-node --help to list them"
        )
    name = argument.split("=", 1)[0]
    return ConfigError(
        f"unknown flag {name}{_suggest(name, _FLAGS)}; run shardkv-node --help to list the flags"
    )


def _config_path(flag_value: Path | None, environ: Mapping[str, str]) -> tuple[Path, Origin] | None:
    if flag_value is not None:
        return flag_value, Origin("flag", "--config")
    env_value = environ.get(CONFIG_ENV, "").strip()
    if env_value:
        return Path(env_value), Origin("env", CONFIG_ENV)
    return None


def _flag_layer(arguments: Mapping[str, object]) -> _Layer:
    layer: _Layer = {}
    for name, setting in _SETTINGS.items():
        raw = arguments.get(name)
        if raw is None:
            continue
        origin = Origin("flag", setting.flag)
        if isinstance(raw, bool):
            layer[name] = (raw, origin)
        else:
            layer[name] = (_convert(setting, str(raw), origin, setting.from_text), origin)
    return layer


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    layer: _Layer = {}
    for name, setting in _SETTINGS.items():
        raw = environ.get(setting.env, "")
        if not raw.strip():
            continue
        origin = Origin("env", setting.env)
        layer[name] = (_convert(setting, raw, origin, setting.from_text), origin)
    return layer


def _file_layer(path: Path, path_origin: Origin) -> _Layer:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} (from {path_origin}) does not exist; {_fix_config(path_origin)}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path} (from {path_origin}): {exc.strerror}; "
            f"{_fix_config(path_origin)}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}; fix the file") from exc
    layer: _Layer = {}
    for key, raw in document.items():
        setting = _SETTINGS.get(key)
        if setting is None:
            raise ConfigError(
                f"unknown key {key!r} in config file {path}{_suggest(key, _SETTINGS)}; "
                "docs/node-config.md lists the keys",
                setting=key,
            )
        origin = Origin("file", f"{key} in {path}")
        value = _convert(setting, raw, origin, setting.from_toml)
        if setting.name in _FILE_RELATIVE:
            # Relative to the file, so that one file works from any directory.
            value = path.parent / cast(Path, value)
        layer[key] = (value, origin)
    return layer


def _fix_config(origin: Origin) -> str:
    return f"change {origin.where}" if origin.kind == "flag" else f"change or unset {origin.where}"


def _convert(setting: _Setting[_T], raw: _Raw, origin: Origin, convert: Callable[[_Raw], _T]) -> _T:
    try:
        return convert(raw)
    except _Invalid as exc:
        raise _error(setting.name, raw, origin, str(exc)) from None


def _resolve(merged: _Layer) -> NodeConfig:
    """Fill the defaults that depend on other settings, then build the config."""
    origins = {name: origin for name, (_, origin) in merged.items()}
    node_entry = _get(merged, _NODE_ID)
    if node_entry is None:
        raise ConfigError(
            "node_id is not set: every node needs its own id; "
            f"set it with {_how_to_set('node_id')}",
            setting="node_id",
        )
    node_id = node_entry[0]
    initial_cluster_entry = _get(merged, _INITIAL_CLUSTER)

    listen_entry = _get(merged, _LISTEN)
    if listen_entry is not None:
        listen = listen_entry[0]
    elif initial_cluster_entry is not None and node_id in initial_cluster_entry[0]:
        listen = initial_cluster_entry[0][node_id]
        origins["listen"] = Origin("default", "this node's address in initial_cluster")
    else:
        port = DEFAULT_LISTEN_BASE_PORT + node_id
        if port > 65535:
            raise ConfigError(
                f"listen is not set and node_id {node_id} is too large for the default port "
                f"{DEFAULT_LISTEN_BASE_PORT} + node_id; set it with {_how_to_set('listen')}",
                setting="listen",
            )
        listen = f"127.0.0.1:{port}"
        origins["listen"] = Origin("default", f"127.0.0.1:<{DEFAULT_LISTEN_BASE_PORT} + node_id>")

    advertise_entry = _get(merged, _ADVERTISE)
    if advertise_entry is not None:
        advertise = advertise_entry[0]
    else:
        advertise = listen
        origins["advertise"] = Origin("default", f"same as listen, from {origins['listen']}")

    if initial_cluster_entry is not None:
        initial_cluster = initial_cluster_entry[0]
    else:
        initial_cluster = {node_id: advertise}
        origins["initial_cluster"] = Origin("default", "this node alone")

    groups = _resolve_groups(merged, initial_cluster, origins)

    data_dir_entry = _get(merged, _DATA_DIR)
    if data_dir_entry is not None:
        data_dir = data_dir_entry[0]
    else:
        data_dir = Path("shardkv-data") / f"node-{node_id}"
        origins["data_dir"] = Origin("default", "shardkv-data/node-<node_id>")

    for name in _SETTINGS:
        origins.setdefault(name, Origin("default"))
    tunables: dict[str, Any] = {
        name: value for name, (value, _) in merged.items() if name not in _RESOLVED_HERE
    }
    return NodeConfig(
        node_id=node_id,
        listen=listen,
        advertise=advertise,
        data_dir=data_dir,
        initial_cluster=initial_cluster,
        groups=groups,
        origins=origins,
        **tunables,
    )


_RESOLVED_HERE = frozenset(
    {
        "node_id",
        "listen",
        "advertise",
        "data_dir",
        "initial_cluster",
        "groups",
        "groups_count",
        "replication",
    }
)


def _resolve_groups(
    merged: _Layer, initial_cluster: Mapping[int, str], origins: dict[str, Origin]
) -> dict[int, tuple[int, ...]]:
    groups_entry = _get(merged, _GROUPS)
    count_entry = _get(merged, _GROUPS_COUNT)
    replication_entry = _get(merged, _REPLICATION)
    if groups_entry is not None:
        for name, shorthand in (("groups_count", count_entry), ("replication", replication_entry)):
            if shorthand is not None:
                raise ConfigError(
                    f"groups (from {groups_entry[1]}) and {name} (from {shorthand[1]}) both say "
                    "where the groups go; keep one: groups lists them, groups_count with "
                    "replication places them round-robin",
                    setting="groups",
                )
        return {group_id: tuple(sorted(replicas)) for group_id, replicas in groups_entry[0].items()}
    node_count = len(initial_cluster)
    groups_count, count_origin = count_entry or (node_count, Origin("default", "one per node"))
    replication, replication_origin = replication_entry or (
        min(DEFAULT_REPLICATION, node_count),
        Origin("default", f"{DEFAULT_REPLICATION}, or the number of nodes if fewer"),
    )
    if groups_count < 0:
        raise _error("groups_count", groups_count, count_origin, "must not be negative")
    if not 1 <= replication <= node_count:
        raise _error(
            "replication",
            replication,
            replication_origin,
            f"must be between 1 and the number of nodes in initial_cluster ({node_count}, from "
            f"{origins['initial_cluster']})",
        )
    origins["groups"] = Origin(
        "default",
        f"round-robin of groups_count {groups_count} ({count_origin}) and "
        f"replication {replication} ({replication_origin})",
    )
    return round_robin_groups(initial_cluster, groups_count, replication)
