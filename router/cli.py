"""``shardkv``: the command-line client, and ``shardkv up`` (a local cluster).

::

    shardkv up [--nodes 3] [--groups 4] [--data-dir ./shardkv-data] [--port 7000] [--tls]
    shardkv certs --out DIR [--nodes 3] [--host HOST ...]
    shardkv [--router ADDR] [--timeout SECONDS] put KEY [VALUE]
    shardkv [--router ADDR] [--timeout SECONDS] get KEY
    shardkv [--router ADDR] [--timeout SECONDS] delete KEY
    shardkv [--router ADDR] [--timeout SECONDS] scan [--prefix P | --start S --end E] [--limit N]
    shardkv [--router ADDR] [--timeout SECONDS] status [--json]
    shardkv [--router ADDR] [--timeout SECONDS] txn list
    shardkv [--router ADDR] [--timeout SECONDS] txn show ID
    shardkv [--router ADDR] [--timeout SECONDS] txn resolve ID (--commit | --abort)

Every command but ``up`` goes through ``router.Client``. The router address
comes from ``--router`` (before or after the command), else ``SHARDKV_ROUTER``,
else 127.0.0.1:7000; several comma-separated addresses are tried in turn.
``--token`` (else ``SHARDKV_TOKEN``) is the bearer token sent on every call,
for a router that requires one (``router.auth``).
With ``--tls-ca-file``, ``--tls-cert-file`` and ``--tls-key-file`` (else
``SHARDKV_TLS_CA_FILE``, ``SHARDKV_TLS_CERT_FILE``, ``SHARDKV_TLS_KEY_FILE``;
all three or none) the client speaks mutual TLS to the router (``shardkv.tls``).
``certs`` writes a dev CA and certificates (``router.certs``); ``up --tls``
makes them once under its data directory and runs every process with them.

Keys and values on the command line are taken as the bytes the shell passed
(``os.fsencode``); ``put KEY`` without VALUE reads the value from stdin.

Output: ``get`` writes the value's raw bytes (a newline follows only on a
terminal); ``scan`` writes ``key<TAB>value`` lines, with backslash escapes
for what is not printable (``\\t``, ``\\n``, ``\\\\``, ``\\xNN`` for a byte that is
not UTF-8, ``\\uNNNN`` for a character that is not printable); ``put`` and
``delete`` write nothing; ``status`` a table, or with ``--json`` the same
summary as JSON (``summarize_status``).

``txn`` is for operators: ``list`` prints the transactions not finished (a
table: id ``hexclient:seq``, state, time to the deadline after which anyone
may abort it, primary group, groups holding its locks, a few locked keys),
``show`` one of them with its record and each group's prepare, ``resolve``
finishes a stuck one as committed or aborted and prints the outcome. The
router refuses a resolution its record contradicts (FAILED_PRECONDITION):
its reason goes to stderr and the exit status is 4.

Exit statuses: 0 done; 1 the key or transaction does not exist (``get``,
``delete``, ``txn show``, ``txn resolve``: stdout stays empty, a note goes to
stderr); 2 bad usage or input (also an INVALID_ARGUMENT from the cluster, and
a transaction id that is not ``hexclient:seq``); 3 the cluster is unavailable
(no router answered, or a group had no leader, within ``--timeout``, default
5 s); 4 the cluster failed or refused the request in another way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from router.client import Client, parse_addresses
from router.errors import ClientError, DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from shardkv.tls import TlsError, TlsFiles
from shardkv.txn_protocol import now_ms, step_keys, txn_name
from shardkv.v1 import kv_pb2, node_pb2, router_pb2

__all__ = [
    "DEFAULT_ROUTER",
    "DEFAULT_TIMEOUT",
    "ENV_ROUTER",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "GroupRow",
    "NodeRow",
    "StatusSummary",
    "build_parser",
    "escape",
    "format_status",
    "format_txn",
    "format_txn_list",
    "main",
    "resolve_router",
    "resolve_tls",
    "summarize_status",
]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_FAILED = 4

ENV_ROUTER = "SHARDKV_ROUTER"
ENV_TOKEN = "SHARDKV_TOKEN"
DEFAULT_ROUTER = "127.0.0.1:7000"
# Shorter than the library's 10 s: at a prompt, a cluster that is down should say so soon.
DEFAULT_TIMEOUT = 5.0

_PROGRAM = "shardkv"


# -- output -----------------------------------------------------------------------------

_NAMED_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(data: bytes) -> str:
    """``data`` as one printable line: UTF-8 text as is, the rest as backslash escapes.

    A byte that is not part of valid UTF-8 becomes ``\\xNN``; a character
    that is not printable ``\\xNN`` below 0x80, ``\\uNNNN`` or ``\\UNNNNNNNN``
    above, so no escape means two things.
    """
    text = data.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    parts: list[str] = []
    for char in text:
        code = ord(char)
        if char in _NAMED_ESCAPES:
            parts.append(_NAMED_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte surrogateescape could not decode
            parts.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            parts.append(char)
        elif code < 0x80:
            parts.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    return "".join(parts)


def _write_text(text: str) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))


# -- status -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRow:
    node_id: int
    address: str
    reachable: bool
    # Why the router could not reach it ("" when reachable).
    error: str


@dataclass(frozen=True)
class GroupRow:
    group_id: int
    replicas: tuple[int, ...]
    # None when no reachable replica says it leads the group.
    leader: int | None
    term: int
    applied_index: int
    key_count: int
    epoch: int
    # Fraction of the ring, 0..1; None for groups off the ring (the meta group).
    share: float | None


@dataclass(frozen=True)
class StatusSummary:
    cluster_id: str
    epoch: int
    nodes: tuple[NodeRow, ...]
    groups: tuple[GroupRow, ...]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def summarize_status(status: router_pb2.ClusterStatusResponse) -> StatusSummary:
    """One row per node and per group, from the router's map and the nodes' own reports.

    A group's leader is the reachable replica that reports itself leader at
    the highest term; its term, applied index, key count and epoch are the
    leader's. With no leader, they are the highest any replica reports.
    """
    addresses = {node.node_id: node.address for node in status.map.nodes}
    reports = {report.node_id: report for report in status.nodes}
    nodes = tuple(
        NodeRow(
            node_id=node_id,
            address=reports[node_id].address if node_id in reports else addresses[node_id],
            reachable=node_id in reports and not reports[node_id].error,
            error=reports[node_id].error if node_id in reports else "not reported by the router",
        )
        for node_id in sorted(addresses.keys() | reports.keys())
    )
    replica_states: dict[int, list[tuple[int, node_pb2.GroupStatus]]] = {}
    for report in status.nodes:
        if not report.error:
            for group in report.status.groups:
                replica_states.setdefault(group.group_id, []).append((report.node_id, group))
    shares = {share.group_id: share.share for share in status.shares}
    groups = []
    for info in sorted(status.map.groups, key=lambda info: info.group_id):
        states = replica_states.get(info.group_id, [])
        leaders = [
            (state.term, node_id, state) for node_id, state in states if state.role == "leader"
        ]
        if leaders:
            _, leader, state = max(leaders, key=lambda entry: (entry[0], entry[1]))
            term, applied, keys, epoch = state.term, state.applied, state.key_count, state.epoch
        else:
            leader = None
            term = max((state.term for _, state in states), default=0)
            applied = max((state.applied for _, state in states), default=0)
            keys = max((state.key_count for _, state in states), default=0)
            epoch = max((state.epoch for _, state in states), default=0)
        groups.append(
            GroupRow(
                group_id=info.group_id,
                replicas=tuple(info.replicas),
                leader=leader,
                term=term,
                applied_index=applied,
                key_count=keys,
                epoch=epoch,
                share=shares.get(info.group_id),
            )
        )
    return StatusSummary(
        cluster_id=status.map.cluster_id,
        epoch=status.map.ring.epoch,
        nodes=nodes,
        groups=tuple(groups),
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    )


def format_status(summary: StatusSummary) -> str:
    node_rows = [
        (str(node.node_id), node.address, "yes" if node.reachable else f"no: {node.error}")
        for node in summary.nodes
    ]
    group_rows = [
        (
            str(group.group_id),
            ",".join(map(str, group.replicas)),
            "-" if group.leader is None else str(group.leader),
            str(group.term),
            str(group.applied_index),
            str(group.key_count),
            str(group.epoch),
            "-" if group.share is None else f"{group.share * 100:.1f}%",
        )
        for group in summary.groups
    ]
    return (
        f"cluster {summary.cluster_id or '(unknown)'}, ring epoch {summary.epoch}\n\n"
        + _table(("NODE", "ADDRESS", "REACHABLE"), node_rows)
        + "\n\n"
        + _table(
            ("GROUP", "REPLICAS", "LEADER", "TERM", "APPLIED", "KEYS", "EPOCH", "SHARE"),
            group_rows,
        )
        + "\n"
    )


# -- transactions -----------------------------------------------------------------------

# How many locked keys a row of `txn list` shows; `txn show` shows them all.
_KEYS_IN_LIST = 3


def _state_name(state: kv_pb2.TxnState) -> str:
    return kv_pb2.TxnState.Name(state).removeprefix("TXN_").lower()


def _deadline_text(deadline_ms: int, now: int) -> str:
    """Time left before anyone may abort the transaction, or how long ago that became so."""
    if not deadline_ms:
        return "-"
    left = (deadline_ms - now) / 1000
    return f"in {left:.1f}s" if left >= 0 else f"expired {-left:.1f}s ago"


def _groups_text(groups: Iterable[int]) -> str:
    return ",".join(map(str, sorted(set(groups)))) or "-"


def _keys_text(keys: Sequence[bytes], most: int | None = None) -> str:
    shown = keys if most is None else keys[:most]
    text = ", ".join(escape(key) for key in shown) or "-"
    if len(keys) > len(shown):
        text += f" (+{len(keys) - len(shown)} more)"
    return text


def format_txn_list(summaries: Sequence[router_pb2.TxnSummary], now: int) -> str:
    """``txn list``'s table; ``now`` in unix ms (the deadlines are the coordinators' clocks)."""
    if not summaries:
        return "no unfinished transactions\n"
    rows = [
        (
            txn_name(summary.txn),
            _state_name(summary.state),
            _deadline_text(summary.deadline_ms, now),
            str(summary.primary_group) if summary.primary_group else "-",
            _groups_text(summary.prepared_groups),
            _keys_text(list(summary.locked_keys), _KEYS_IN_LIST),
        )
        for summary in summaries
    ]
    return _table(("ID", "STATE", "DEADLINE", "PRIMARY", "PREPARED IN", "LOCKED KEYS"), rows) + "\n"


def format_txn(shown: router_pb2.ShowTxnResponse, now: int) -> str:
    """``txn show``: the summary, the record at the primary, then each group's prepare."""
    summary = shown.txn
    primary = f"group {summary.primary_group}" if summary.primary_group else "-"
    if summary.primary_key:
        primary += f", key {escape(summary.primary_key)}"
    deadline_ms = summary.deadline_ms or shown.record.deadline_ms
    lines = [
        f"transaction {txn_name(summary.txn)}",
        f"state        {_state_name(summary.state)}",
        f"deadline     {_deadline_text(deadline_ms, now)}",
        f"primary      {primary}",
        f"prepared in  {_groups_text(summary.prepared_groups)}",
    ]
    if shown.HasField("record"):
        record = shown.record
        outcome = _state_name(record.state)
        if record.state == kv_pb2.TXN_COMMITTED:
            outcome += ", then branch" if record.then_branch else ", else branch"
        finished = "every participant finished" if record.finished else "participants not finished"
        lines.append(f"record       {outcome}, {finished}")
        lines.append(f"participants {_keys_text(list(record.participant_keys))} (a key of each)")
    else:
        lines.append("record       none (not decided)")
    # The router lists one group per prepare, in the same order.
    groups: list[int | None] = list(summary.prepared_groups)
    if len(groups) != len(shown.prepared):
        groups = [None] * len(shown.prepared)
    for group_id, prepared in zip(groups, shown.prepared, strict=True):
        prepare = prepared.prepare
        where = "a group" if group_id is None else f"group {group_id}"
        compares = "no compares"
        if prepare.compares:
            held = "held" if prepared.outcome.succeeded else "failed"
            compares = f"{len(prepare.compares)} compares ({held})"
        lines.append(
            f"{where}: {compares}, {len(prepare.then_ops)} then / "
            f"{len(prepare.else_ops)} else operations; locks {_keys_text(step_keys(prepare))}"
        )
    return "\n".join(lines) + "\n"


def _txn_list(client: Client, args: argparse.Namespace) -> int:
    _write_text(format_txn_list(client.list_transactions(), now_ms()))
    return EXIT_OK


def _txn_show(client: Client, args: argparse.Namespace) -> int:
    _write_text(format_txn(client.show_transaction(args.id), now_ms()))
    return EXIT_OK


def _txn_resolve(client: Client, args: argparse.Namespace) -> int:
    try:
        record = client.resolve_transaction(args.id, args.commit)
    except ClientError as exc:
        if exc.code is not grpc.StatusCode.FAILED_PRECONDITION:
            raise
        return _fail(f"cannot resolve transaction {args.id}: {exc.details}", EXIT_FAILED)
    _write_text(f"transaction {txn_name(record.txn)} {_state_name(record.state)}\n")
    return EXIT_OK


_TXN_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "list": _txn_list,
    "show": _txn_show,
    "resolve": _txn_resolve,
}


def _txn(client: Client, args: argparse.Namespace) -> int:
    return _TXN_COMMANDS[args.txn_command](client, args)


# -- commands ---------------------------------------------------------------------------


def _bytes_argument(text: str) -> bytes:
    # The bytes the shell passed, even when they are not valid UTF-8.
    return os.fsencode(text)


def _put(client: Client, args: argparse.Namespace) -> int:
    if args.value is not None:
        value = _bytes_argument(args.value)
    elif sys.stdin.isatty():
        raise _UsageError("put: give VALUE, or pipe the value on stdin")
    else:
        value = sys.stdin.buffer.read()
    client.put(_bytes_argument(args.key), value)
    return EXIT_OK


def _get(client: Client, args: argparse.Namespace) -> int:
    key = _bytes_argument(args.key)
    value = client.get(key)
    if value is None:
        print(f"{_PROGRAM}: key {escape(key)!r} not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    sys.stdout.flush()
    sys.stdout.buffer.write(value + b"\n" if sys.stdout.isatty() else value)
    return EXIT_OK


def _delete(client: Client, args: argparse.Namespace) -> int:
    key = _bytes_argument(args.key)
    if not client.delete(key):
        print(f"{_PROGRAM}: key {escape(key)!r} not found: nothing deleted", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_OK


def _scan(client: Client, args: argparse.Namespace) -> int:
    prefix, start, end = (
        None if text is None else _bytes_argument(text)
        for text in (args.prefix, args.start, args.end)
    )
    if prefix is not None and (start is not None or end is not None):
        raise _UsageError("scan: give --prefix, or --start/--end, not both")
    scan = client.scan(prefix=prefix, start=start, end=end, limit=args.limit)
    try:
        for key, value in scan:
            _write_text(f"{escape(key)}\t{escape(value)}\n")
    finally:
        scan.close()
    return EXIT_OK


def _status(client: Client, args: argparse.Namespace) -> int:
    summary = summarize_status(client.status())
    _write_text(summary.to_json() + "\n" if args.json else format_status(summary))
    return EXIT_OK


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "put": _put,
    "get": _get,
    "delete": _delete,
    "scan": _scan,
    "status": _status,
    "txn": _txn,
}


class _UsageError(Exception):
    pass


# -- arguments --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not more than 0 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    # --router and --timeout are taken before or after the command; SUPPRESS
    # keeps the command's parser from overwriting a value given before it.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--router",
        metavar="ADDR",
        default=argparse.SUPPRESS,
        help=f"router host:port, or several comma-separated (default: ${ENV_ROUTER}, "
        f"else {DEFAULT_ROUTER})",
    )
    connection.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=argparse.SUPPRESS,
        help=f"give up after this long, retries included (default: {DEFAULT_TIMEOUT:g})",
    )
    connection.add_argument(
        "--token",
        metavar="TOKEN",
        default=argparse.SUPPRESS,
        help=f"bearer token for a router that requires one (default: ${ENV_TOKEN}, else none)",
    )
    for name, what in _TLS_FLAGS:
        connection.add_argument(
            f"--tls-{name}-file",
            metavar="PATH",
            default=argparse.SUPPRESS,
            help=f"PEM {what}, for mutual TLS with the other two --tls-* flags "
            f"(default: ${_tls_env(name)}, else plaintext)",
        )
    parser = argparse.ArgumentParser(
        prog=_PROGRAM,
        description="The shardkv command-line client, and a local cluster launcher (up).",
        epilog="exit status: 0 done, 1 key or transaction not found, 2 bad usage or input, "
        "3 cluster unavailable, 4 other cluster error",
        parents=[connection],
        # The top-level parser sees every argument: with abbreviations, `up --tls`
        # would be taken as an ambiguous prefix of the --tls-*-file flags.
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="run a local cluster (nodes and a router) in the foreground; Ctrl-C stops it",
        description="Start the node processes and one router as children and supervise them; "
        "Ctrl-C or SIGTERM stops them all. A data directory remembers its layout "
        "(cluster.json): later runs reuse it, and refuse flags that disagree.",
    )
    up.add_argument("--nodes", type=_positive_int, help="node processes (default: 3)")
    up.add_argument("--groups", type=_positive_int, help="data groups (default: 4)")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path("shardkv-data"),
        help="where nodes keep their data, logs and the layout (default: ./shardkv-data)",
    )
    up.add_argument(
        "--port",
        type=_positive_int,
        help="the router's port; node i listens on port+i (default: 7000)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS everywhere, with certificates made once in DATA_DIR/tls",
    )

    certs = commands.add_parser(
        "certs",
        help="create a local CA and certificates for a dev cluster (mutual TLS)",
        description="Write ca.pem and ca-key.pem (a new CA), and a certificate and key signed "
        "by it for each node (node-I.pem, node-I-key.pem), the router (router.pem) and a "
        "client (client.pem). Each names localhost, 127.0.0.1 and ::1, and every --host. "
        "Existing files are never overwritten.",
    )
    certs.add_argument("--out", type=Path, required=True, help="the directory to write into")
    certs.add_argument(
        "--nodes", type=_positive_int, default=3, help="node certificates (default: 3)"
    )
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="another DNS name or IP address the certificates name (repeatable)",
    )

    put = commands.add_parser("put", parents=[connection], help="write a key")
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE", nargs="?", help="the value (default: read stdin)")

    get = commands.add_parser("get", parents=[connection], help="print a key's value")
    get.add_argument("key", metavar="KEY")

    delete = commands.add_parser("delete", parents=[connection], help="delete a key")
    delete.add_argument("key", metavar="KEY")

    scan = commands.add_parser(
        "scan", parents=[connection], help="print keys and values in key order"
    )
    scan.add_argument("--prefix", metavar="P", help="only keys that start with P")
    scan.add_argument("--start", metavar="S", help="only keys >= S")
    scan.add_argument("--end", metavar="E", help="only keys < E")
    scan.add_argument("--limit", metavar="N", type=_positive_int, help="at most N keys")

    status = commands.add_parser(
        "status", parents=[connection], help="nodes, groups, leaders and ring shares"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    txn = commands.add_parser(
        "txn",
        parents=[connection],
        help="list, show and resolve unfinished transactions (for operators)",
        description="Transactions that are not finished hold locks on their keys. A "
        "transaction whose coordinator went away is finished by whoever meets its locks "
        "once its deadline has passed; these commands show them, and finish one by hand. "
        "A transaction is named CLIENT:SEQ (the client id in hex), as `txn list` shows.",
    )
    txn_commands = txn.add_subparsers(dest="txn_command", required=True, metavar="TXN_COMMAND")
    txn_commands.add_parser(
        "list",
        parents=[connection],
        help="the transactions not finished: state, deadline, groups, locked keys",
    )
    txn_show = txn_commands.add_parser(
        "show", parents=[connection], help="one transaction: its record and each group's prepare"
    )
    txn_show.add_argument("id", metavar="ID", help="the transaction, CLIENT:SEQ")
    txn_resolve = txn_commands.add_parser(
        "resolve",
        parents=[connection],
        help="finish a stuck transaction as committed or aborted",
        description="Finish the transaction everywhere as committed or aborted. The router "
        "refuses what the transaction's record already contradicts, and a commit while a "
        "participant is not prepared (exit status 4).",
    )
    txn_resolve.add_argument("id", metavar="ID", help="the transaction, CLIENT:SEQ")
    outcome = txn_resolve.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--commit", dest="commit", action="store_true", default=None, help="commit it"
    )
    outcome.add_argument("--abort", dest="commit", action="store_false", help="abort it")
    return parser


_TLS_FLAGS = (
    ("ca", "certificate of the cluster CA"),
    ("cert", "certificate of this client"),
    ("key", "private key of this client's certificate"),
)


def _tls_env(name: str) -> str:
    return f"SHARDKV_TLS_{name.upper()}_FILE"


def resolve_tls(args: argparse.Namespace, environ: Mapping[str, str]) -> TlsFiles | None:
    """The client's TLS files: each from its flag, else its variable; ``TlsError`` if partial."""
    ca, cert, key = (
        getattr(args, f"tls_{name}_file", None) or environ.get(_tls_env(name)) or None
        for name, _ in _TLS_FLAGS
    )
    return TlsFiles.from_options(ca, cert, key)


def _certs(args: argparse.Namespace) -> int:
    # Imported here: only this command needs the cryptography package.
    from router.certs import write_dev_certs

    try:
        certs = write_dev_certs(args.out, args.nodes, args.host)
    except (FileExistsError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(f"cannot write certificates in {args.out}: {exc}", EXIT_USAGE)
    client = certs.client
    print(
        f"wrote a CA and certificates for {', '.join(certs.names())} in {certs.directory}\n"
        f"client: shardkv --tls-ca-file {client.ca} --tls-cert-file {client.cert} "
        f"--tls-key-file {client.key} ..."
    )
    return EXIT_OK


def resolve_router(flag: str | None, environ: Mapping[str, str]) -> str:
    """The router address(es): ``--router``, else ``$SHARDKV_ROUTER``, else the default."""
    return flag or environ.get(ENV_ROUTER) or DEFAULT_ROUTER


def _fail(message: str, status: int) -> int:
    print(f"{_PROGRAM}: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``shardkv`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "up":
        # Imported here: the launcher's imports are not needed by the other commands.
        from router.launcher import run_up

        return run_up(args.data_dir, args.nodes, args.groups, args.port, tls=args.tls)
    if args.command == "certs":
        return _certs(args)

    try:
        addresses = parse_addresses(resolve_router(getattr(args, "router", None), os.environ))
    except ValueError as exc:
        return _fail(f"{exc} (from --router or ${ENV_ROUTER})", EXIT_USAGE)
    try:
        tls = resolve_tls(args, os.environ)
        client = Client(
            addresses,
            timeout=getattr(args, "timeout", DEFAULT_TIMEOUT),
            tls=tls,
            token=getattr(args, "token", None) or os.environ.get(ENV_TOKEN) or None,
        )
    except TlsError as exc:
        return _fail(f"{exc} (from the --tls-* flags or $SHARDKV_TLS_*)", EXIT_USAGE)
    try:
        with client:
            return _COMMANDS[args.command](client, args)
    except _UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except InvalidArgument as exc:
        return _fail(str(exc), EXIT_USAGE)
    except NotFound as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)
    except (Unavailable, DeadlineExceeded) as exc:
        return _fail(
            f"cluster unavailable at {','.join(addresses)}: {exc} (is it running? `shardkv up`)",
            EXIT_UNAVAILABLE,
        )
    except ClientError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except BrokenPipeError:
        # The reader went away (`shardkv scan | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
