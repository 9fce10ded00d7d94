"""Transactions through real node and router processes: conflicts, crashes, a bank, a model.

Every test talks to routers over raw gRPC (``RouterStub``, ``TxnRequest``
with an explicit ``Session``), as a client library would. What each checks:

1. Two writers race the same read-modify-write (compare mod_revision, put)
   round after round: exactly one wins each round, across groups (two-phase
   commit, each writer naming a different primary) and within one (one
   phase).
2. A router SIGKILLs itself at each coordinator failpoint
   (``shardkv.failpoints``): the transaction ends all or nothing, decided as
   its record says, with nothing left in doubt soon after its locks expire
   (the nodes' resolvers finish it: nothing here reads its keys before);
   the client's retry with the same session finds the outcome and applies
   nothing twice. A coordinator paused past its deadline finds its
   transaction aborted by a resolver, and says so.
3. A bank (``tests.integration.bank``) conserves its total through router and
   node crashes.
4. Random transactions against a model (hypothesis), sequentially.
5. The admin RPCs on a transaction left in doubt on purpose, before its
   locks expire.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.txn import TXN_TTL
from shardkv.failpoints import ENV as FAILPOINTS
from shardkv.txn_protocol import operation_key
from shardkv.v1 import kv_pb2, router_pb2, router_pb2_grpc
from tests.integration.bank import (
    IN_DOUBT,
    Bank,
    BankReport,
    SessionCounter,
    get_op,
    put_op,
)
from tests.integration.conftest import Cluster, MakeCluster, Settings, wait_until
from tests.integration.routers import RouterProcess

pytestmark = pytest.mark.integration

DEADLINE = 10.0
# Locks expire after TXN_TTL; then a resolver (a node's, or any reader's) settles them.
SETTLED_WITHIN = TXN_TTL + 3.0
SETTINGS = Settings(nodes=3, groups=4)
Compare = kv_pb2.Compare


def started(cluster: Cluster, *routers: RouterProcess) -> None:
    cluster.start_all()
    for router in routers:
        router.start()


def rpc_code(error: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = error.code()
    return code


def rpc_details(error: grpc.RpcError) -> str:
    details: str = error.details() or ""
    return details


def get_many(
    stub: router_pb2_grpc.RouterStub, keys: Sequence[bytes]
) -> dict[bytes, kv_pb2.KeyValue]:
    response = stub.GetMany(router_pb2.GetManyRequest(keys=list(keys)), timeout=DEADLINE)
    return {kv.key: kv for kv in response.kvs}


def in_doubt(stub: router_pb2_grpc.RouterStub) -> list[router_pb2.TxnSummary]:
    response = stub.ListTransactions(router_pb2.ListTransactionsRequest(), timeout=DEADLINE)
    return list(response.txns)


def wait_none_in_doubt(stub: router_pb2_grpc.RouterStub, until: float) -> None:
    """Until ``ListTransactions`` is empty, failing at ``until`` (a ``time.monotonic()``)."""
    last: list[router_pb2.TxnSummary] = []
    for _ in range(1000):
        last = in_doubt(stub)
        if not last or time.monotonic() > until:
            break
        time.sleep(0.2)
    assert not last, f"transactions still in doubt {SETTLED_WITHIN} s after they began: {last}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, RouterProcess]]:
    """One cluster and router for the tests that break nothing."""
    cluster = Cluster(tmp_path_factory.mktemp("txn-shared"), SETTINGS)
    router = RouterProcess(cluster, "router-1")
    try:
        started(cluster, router)
        yield cluster, router
    finally:
        router.close()
        cluster.close()


# -- 1. conflicts ----------------------------------------------------------------------------

ROUNDS = 20


@pytest.mark.parametrize("groups", [(1, 3), (2, 2)], ids=["two-groups", "one-group"])
def test_two_writers_of_the_same_keys_exactly_one_wins_each_round(
    shared: tuple[Cluster, RouterProcess], groups: tuple[int, int]
) -> None:
    cluster, router = shared
    keys = [
        cluster.key(group_id, f"race-{groups[0]}{groups[1]}-{n}")
        for n, group_id in enumerate(groups)
    ]
    stub = router.stub()
    barrier = threading.Barrier(2, timeout=DEADLINE)
    outcomes: list[dict[int, str]] = [{} for _ in range(ROUNDS)]
    seen: list[dict[int, dict[bytes, kv_pb2.KeyValue]]] = [{} for _ in range(ROUNDS)]
    failed_reads: list[dict[int, list[bytes]]] = [{} for _ in range(ROUNDS)]
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        sessions = SessionCounter()
        # Across groups each names its own primary (a transaction's first key).
        mine = keys if number == 0 else keys[::-1]
        try:
            for round_number in range(ROUNDS):
                barrier.wait()
                before = get_many(stub, keys)
                seen[round_number][number] = before
                barrier.wait()  # both read before either writes
                request = router_pb2.TxnRequest(
                    compares=[
                        Compare(
                            key=key,
                            target=Compare.MOD_REVISION,
                            number=before[key].mod_revision if key in before else 0,
                        )
                        for key in mine
                    ],
                    success=[put_op(key, b"w%d-r%d" % (number, round_number)) for key in mine],
                    failure=[get_op(key) for key in mine],
                    session=sessions.begin(),
                )
                try:
                    response = stub.Txn(request, timeout=DEADLINE)
                except grpc.RpcError as error:
                    if rpc_code(error) != grpc.StatusCode.ABORTED:
                        raise
                    outcomes[round_number][number] = "aborted"
                else:
                    outcomes[round_number][number] = "won" if response.succeeded else "lost"
                    if not response.succeeded:
                        failed_reads[round_number][number] = [
                            result.previous.value for result in response.results
                        ]
                finally:
                    sessions.finish(request.session)
                barrier.wait()  # the round is over for both
        except BaseException as error:
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(number,)) for number in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ROUNDS * DEADLINE)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    after = get_many(stub, keys)
    for round_number, outcome in enumerate(outcomes):
        assert seen[round_number][0] == seen[round_number][1], f"round {round_number}"
        winners = [number for number, result in outcome.items() if result == "won"]
        assert len(winners) == 1, f"round {round_number}: {outcome}"
        (loser,) = {0, 1} - set(winners)
        if outcome[loser] == "lost":
            # Its failure branch read the winner's write.
            assert failed_reads[round_number][loser] == [
                b"w%d-r%d" % (winners[0], round_number)
            ] * len(keys), f"round {round_number}"
    last_winner = next(n for n, result in outcomes[-1].items() if result == "won")
    assert {kv.value for kv in after.values()} == {b"w%d-r%d" % (last_winner, ROUNDS - 1)}
    assert all(kv.version == ROUNDS for kv in after.values())
    results = [result for outcome in outcomes for result in outcome.values()]
    print(
        f"{groups}: won {results.count('won')}, lost {results.count('lost')}, "
        f"aborted {results.count('aborted')}"
    )


# -- 2. a router crash at each failpoint ---------------------------------------------------


def transfer_request(
    keys: Sequence[bytes], before: bytes, after: Sequence[bytes], session: router_pb2.Session
) -> router_pb2.TxnRequest:
    return router_pb2.TxnRequest(
        compares=[Compare(key=key, target=Compare.VALUE, value=before) for key in keys],
        success=[put_op(key, value) for key, value in zip(keys, after, strict=True)],
        failure=[get_op(key) for key in keys],
        session=session,
    )


@pytest.mark.parametrize(
    ("point", "commits"),
    [("txn.after_prepare", False), ("txn.after_record", True), ("txn.between_commits", True)],
)
def test_a_router_crash_at_a_failpoint_leaves_the_transaction_all_or_nothing(
    make_cluster: MakeCluster, point: str, commits: bool
) -> None:
    cluster = make_cluster(SETTINGS)
    crashing = RouterProcess(cluster, "router-crashing", env={FAILPOINTS: f"{point}=exit"})
    fresh = RouterProcess(cluster, "router-fresh")
    try:
        started(cluster, crashing)
        # Three groups, so that between_commits leaves one participant unfinished.
        keys = [cluster.key(group_id, "account") for group_id in (1, 2, 3)]
        crashing.stub().PutMany(
            router_pb2.PutManyRequest(items=[kv_pb2.KeyValue(key=k, value=b"100") for k in keys]),
            timeout=DEADLINE,
        )
        new_values = [b"40", b"130", b"130"]
        request = transfer_request(
            keys, b"100", new_values, router_pb2.Session(client_id=0xC0FFEE, seq=1)
        )
        began = time.monotonic()
        try:
            answer = crashing.stub().Txn(request, timeout=DEADLINE)
        except grpc.RpcError as crashed:
            assert rpc_code(crashed) in IN_DOUBT, crashed
        else:
            # The answer leaves at the commit point; finishing the other
            # groups goes on after it, and that is where this router dies.
            assert point == "txn.between_commits", f"{point}: answered {answer}"
            assert answer.succeeded
        assert crashing.wait_exit() == -signal.SIGKILL

        fresh.start()
        stub = fresh.stub()
        wait_none_in_doubt(stub, began + SETTLED_WITHIN)
        found = get_many(stub, keys)
        values = [found[key].value for key in keys]
        assert values in ([b"100"] * 3, new_values), f"not all or nothing: {values}"
        assert (values == new_values) == commits, values
        versions = [found[key].version for key in keys]
        assert versions == [2 if commits else 1] * 3

        # The client retries the same request, same session: the same outcome, applied once.
        if commits:
            again = stub.Txn(request, timeout=DEADLINE)
            assert again.succeeded
            assert [result.previous.version for result in again.results] == [1, 1, 1]
        else:
            with pytest.raises(grpc.RpcError) as aborted:
                stub.Txn(request, timeout=DEADLINE)
            assert rpc_code(aborted.value) == grpc.StatusCode.ABORTED, aborted.value
        found = get_many(stub, keys)
        assert [(found[key].value, found[key].version) for key in keys] == list(
            zip(values, versions, strict=True)
        )
        assert not in_doubt(stub)
    finally:
        crashing.close()
        fresh.close()


def test_a_coordinator_paused_past_its_deadline_loses_to_the_resolver(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    # The pause blocks the router's whole event loop: its locks expire meanwhile.
    pause = TXN_TTL + 3.5
    paused = RouterProcess(
        cluster, "router-paused", env={FAILPOINTS: f"txn.after_prepare=sleep({pause})"}
    )
    router = RouterProcess(cluster, "router-1")
    try:
        started(cluster, paused, router)
        keys = [cluster.key(group_id, "account") for group_id in (1, 2, 3)]
        stub = router.stub()
        stub.PutMany(
            router_pb2.PutManyRequest(items=[kv_pb2.KeyValue(key=k, value=b"100") for k in keys]),
            timeout=DEADLINE,
        )
        request = transfer_request(
            keys, b"100", [b"40", b"130", b"130"], router_pb2.Session(client_id=0x51EE7, seq=1)
        )
        began = time.monotonic()
        answer = paused.stub().Txn.future(request, timeout=pause + DEADLINE)
        wait_until(
            "the paused transaction's locks to expire and be resolved",
            lambda: not in_doubt(stub),
            timeout=SETTLED_WITHIN,
        )
        # Resolved while its coordinator still sleeps: aborted, as nothing had decided it.
        assert time.monotonic() - began < pause
        found = get_many(stub, keys)
        assert [(found[key].value, found[key].version) for key in keys] == [(b"100", 1)] * 3
        with pytest.raises(grpc.RpcError) as aborted:
            answer.result()
        assert rpc_code(aborted.value) == grpc.StatusCode.ABORTED, aborted.value
        found = get_many(stub, keys)
        assert [(found[key].value, found[key].version) for key in keys] == [(b"100", 1)] * 3
        assert not in_doubt(stub)
    finally:
        paused.close()
        router.close()


# -- 3. the bank ------------------------------------------------------------------------------

ACCOUNTS = 20
INITIAL_BALANCE = 100
BANK_SECONDS = 20.0


def test_a_bank_conserves_its_total_through_router_and_node_crashes(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    routers = [RouterProcess(cluster, "router-1"), RouterProcess(cluster, "router-2")]
    try:
        started(cluster, *routers)
        keys = [
            cluster.key(cluster.group_ids[n % len(cluster.group_ids)], f"account-{n}")
            for n in range(ACCOUNTS)
        ]
        assert {cluster.ring.group_for(key) for key in keys} == set(cluster.group_ids)
        bank = Bank(keys, INITIAL_BALANCE)
        bank.setup(routers[1].stub())

        async def nemesis() -> None:
            await asyncio.sleep(BANK_SECONDS * 0.2)
            await asyncio.to_thread(routers[0].kill)
            await asyncio.sleep(BANK_SECONDS * 0.1)
            await asyncio.to_thread(routers[0].start)
            await asyncio.sleep(BANK_SECONDS * 0.15)
            victim = (await asyncio.to_thread(cluster.wait_leaders))[cluster.group_ids[0]]
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.sleep(BANK_SECONDS * 0.15)
            await asyncio.to_thread(cluster.start, victim)

        async def scenario() -> BankReport:
            report, _ = await asyncio.gather(
                bank.run(
                    [router.address for router in routers],
                    transferers=4,
                    readers=2,
                    seconds=BANK_SECONDS,
                    seed=1,
                ),
                nemesis(),
            )
            return report

        report = asyncio.run(scenario())
        ended = time.monotonic()
        print(report.summary())
        stub = routers[0].stub()
        wait_none_in_doubt(stub, ended + SETTLED_WITHIN)
        final = bank.final_balances(stub)
        problems = bank.problems(report, final)
        assert problems == [], "\n".join(problems)
        assert len(report.committed) >= 20, report.summary()
        assert report.reads_checked >= 5, report.summary()
        assert report.rejected + report.aborted > 0, report.summary()
    finally:
        for router in routers:
            router.close()


# -- 4. random transactions against a model -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Modelled:
    value: bytes
    version: int


VALUES = [b"a", b"b", b"c", b"zz"]


def metadata(kv: kv_pb2.KeyValue | None, target: kv_pb2.Compare.Target) -> int:
    """A number compares read: an absent key has version and revisions 0."""
    if kv is None:
        return 0
    if target == Compare.VERSION:
        return kv.version
    if target == Compare.CREATE_REVISION:
        return kv.create_revision
    return kv.mod_revision


def compare_holds(compare: kv_pb2.Compare, kv: kv_pb2.KeyValue | None) -> bool:
    """The model's reading of ``kv.proto``'s Compare: an absent key has 0s and no value."""
    actual: bytes | int
    expected: bytes | int
    if compare.target == Compare.VALUE:
        if kv is None:
            return False
        actual, expected = kv.value, compare.value
    else:
        actual, expected = metadata(kv, compare.target), compare.number
    if compare.operator == Compare.EQUAL:
        return actual == expected
    if compare.operator == Compare.NOT_EQUAL:
        return actual != expected
    if compare.operator == Compare.GREATER:
        return actual > expected  # type: ignore[operator]
    return actual < expected  # type: ignore[operator]


TARGETS = [Compare.VALUE, Compare.VERSION, Compare.CREATE_REVISION, Compare.MOD_REVISION]
OPERATORS = [Compare.EQUAL, Compare.NOT_EQUAL, Compare.GREATER, Compare.LESS]


def draw_compare(data: st.DataObject, key: bytes, kv: kv_pb2.KeyValue | None) -> kv_pb2.Compare:
    """A compare on ``key``, as likely to hold as not: operands near what the key holds."""
    target = data.draw(st.sampled_from(TARGETS))
    compare = Compare(key=key, target=target, operator=data.draw(st.sampled_from(OPERATORS)))
    if target == Compare.VALUE:
        near = [kv.value] if kv is not None else []
        compare.value = data.draw(st.sampled_from([*near, *VALUES]))
    else:
        actual = metadata(kv, target)
        compare.number = data.draw(
            st.sampled_from([actual, actual, actual + 1, max(0, actual - 1)])
        )
    return compare


def draw_branch(data: st.DataObject, keys: Sequence[bytes]) -> list[kv_pb2.Operation]:
    operations = []
    written: set[bytes] = set()
    for _ in range(data.draw(st.integers(0, 4))):
        key = data.draw(st.sampled_from(keys))
        kind = data.draw(st.sampled_from(["put", "put", "delete", "get"]))
        if kind != "get" and key in written:
            kind = "get"  # a branch writes a key at most once
        if kind == "put":
            operations.append(put_op(key, data.draw(st.sampled_from(VALUES))))
        elif kind == "delete":
            operations.append(kv_pb2.Operation(delete=kv_pb2.Delete(key=key)))
        else:
            operations.append(get_op(key))
        if kind != "get":
            written.add(key)
    return operations


def expected_results(
    branch: Sequence[kv_pb2.Operation], before: dict[bytes, kv_pb2.KeyValue]
) -> list[kv_pb2.OperationResult]:
    """Each operation's result, as kv.proto says, against the state before the transaction."""
    results = []
    for operation in branch:
        kind = operation.WhichOneof("kind")
        key = getattr(operation, kind).key
        kv = before.get(key)
        result = kv_pb2.OperationResult(succeeded=kv is not None or kind == "put")
        if kv is not None:
            result.previous.CopyFrom(kv)
            if kind == "put":
                result.previous.value = b""  # a put answers the metadata only
        results.append(result)
    return results


def apply_branch(model: dict[bytes, Modelled], branch: Sequence[kv_pb2.Operation]) -> None:
    for operation in branch:
        if operation.HasField("put"):
            old = model.get(operation.put.key)
            model[operation.put.key] = Modelled(operation.put.value, old.version + 1 if old else 1)
        elif operation.HasField("delete"):
            model.pop(operation.delete.key, None)


_examples = itertools.count()
_model_sessions = SessionCounter()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_transactions_match_a_model(
    shared: tuple[Cluster, RouterProcess], data: st.DataObject
) -> None:
    cluster, router = shared
    stub = router.stub()
    example = next(_examples)
    # Fresh keys for each example: 3 in each group.
    keys = [
        cluster.key(group_id, f"model-{example}-{n}")
        for group_id in cluster.group_ids
        for n in range(3)
    ]
    model: dict[bytes, Modelled] = {}
    last: dict[bytes, kv_pb2.KeyValue] = {}
    written: set[bytes] = set()
    transactions = data.draw(st.integers(1, 6), label="transactions")
    for step in range(transactions + 1):
        before = get_many(stub, keys)
        check_state(before, model, last, written)
        if step == transactions:
            return
        compared = data.draw(st.lists(st.sampled_from(keys), max_size=3), label="compared")
        compares = [draw_compare(data, key, before.get(key)) for key in compared]
        success = draw_branch(data, keys)
        failure = draw_branch(data, keys)
        request = router_pb2.TxnRequest(
            compares=compares, success=success, failure=failure, session=_model_sessions.begin()
        )
        try:
            response = stub.Txn(request, timeout=DEADLINE)
        finally:
            _model_sessions.finish(request.session)
        succeeded = all(compare_holds(compare, before.get(compare.key)) for compare in compares)
        branch = success if succeeded else failure
        assert response.succeeded == succeeded, (request, before)
        assert list(response.results) == expected_results(branch, before), (request, before)
        apply_branch(model, branch)
        last = before
        written = {
            operation_key(operation) for operation in branch if not operation.HasField("get")
        }


def check_state(
    now: dict[bytes, kv_pb2.KeyValue],
    model: dict[bytes, Modelled],
    last: dict[bytes, kv_pb2.KeyValue],
    written: set[bytes],
) -> None:
    """The keys hold what the model says; revisions moved only where the last branch wrote."""
    assert {key: Modelled(kv.value, kv.version) for key, kv in now.items()} == model
    for key in set(now) | set(last):
        if key not in written:
            assert now.get(key) == last.get(key), key
        elif key in now and key in last:
            assert now[key].mod_revision > last[key].mod_revision, key
            assert now[key].create_revision == last[key].create_revision, key


# -- 5. admin: a transaction in doubt, resolved by hand ----------------------------------------


def show(stub: router_pb2_grpc.RouterStub, txn: kv_pb2.TxnRef) -> router_pb2.ShowTxnResponse:
    response: router_pb2.ShowTxnResponse = stub.ShowTxn(
        router_pb2.ShowTxnRequest(txn=txn), timeout=DEADLINE
    )
    return response


def resolve(
    stub: router_pb2_grpc.RouterStub, txn: kv_pb2.TxnRef, commit: bool
) -> router_pb2.ResolveTxnResponse:
    response: router_pb2.ResolveTxnResponse = stub.ResolveTxn(
        router_pb2.ResolveTxnRequest(txn=txn, commit=commit), timeout=DEADLINE
    )
    return response


def refused(stub: router_pb2_grpc.RouterStub, txn: kv_pb2.TxnRef, commit: bool) -> str:
    with pytest.raises(grpc.RpcError) as error:
        resolve(stub, txn, commit)
    assert rpc_code(error.value) == grpc.StatusCode.FAILED_PRECONDITION, error.value
    return rpc_details(error.value)


def test_an_operator_resolves_a_transaction_in_doubt_as_its_prepares_allow(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(SETTINGS)
    crash_once = {FAILPOINTS: "txn.after_prepare=exit"}
    router = RouterProcess(cluster, "router-1")
    crashing = [RouterProcess(cluster, f"router-crashing-{n}", env=crash_once) for n in (1, 2)]
    try:
        started(cluster, router, *crashing)
        stub = router.stub()
        x, y, z, w = (cluster.key(group_id, "held") for group_id in (1, 2, 3, 4))
        stub.PutMany(
            router_pb2.PutManyRequest(
                items=[kv_pb2.KeyValue(key=k, value=b"0") for k in (x, y, z, w)]
            ),
            timeout=DEADLINE,
        )
        with pytest.raises(grpc.RpcError) as missing:
            show(stub, kv_pb2.TxnRef(client_id=1, seq=1))
        assert rpc_code(missing.value) == grpc.StatusCode.NOT_FOUND

        # First, a transaction on z and w, both prepared when its router dies.
        first = kv_pb2.TxnRef(client_id=0xF1, seq=1)
        first_began = time.monotonic()
        with pytest.raises(grpc.RpcError):
            crashing[0].stub().Txn(
                router_pb2.TxnRequest(
                    success=[put_op(z, b"first"), put_op(w, b"first")],
                    session=router_pb2.Session(client_id=first.client_id, seq=first.seq),
                ),
                timeout=DEADLINE,
            )
        wait_until(
            "both groups of the first transaction to be prepared",
            lambda: set(show(stub, first).txn.prepared_groups) == {3, 4},
            timeout=2.0,
        )

        # Then one on x, y and z: z is the first one's, so group 3 never prepares it.
        second = kv_pb2.TxnRef(client_id=0xF2, seq=1)
        second_began = time.monotonic()
        with pytest.raises(grpc.RpcError):
            crashing[1].stub().Txn(
                router_pb2.TxnRequest(
                    success=[put_op(x, b"second"), put_op(y, b"second"), put_op(z, b"second")],
                    session=router_pb2.Session(client_id=second.client_id, seq=second.seq),
                ),
                timeout=DEADLINE,
            )

        def second_prepared() -> router_pb2.ShowTxnResponse | None:
            shown = show(stub, second)
            return shown if {1, 2} <= set(shown.txn.prepared_groups) else None

        shown = wait_until("groups 1 and 2 to prepare the second one", second_prepared, 2.0)
        assert shown.txn.state == kv_pb2.TXN_PREPARED
        assert set(shown.txn.prepared_groups) == {1, 2}
        assert shown.txn.primary_group == 1 and shown.txn.primary_key == x
        assert not shown.HasField("record")
        listed = {(t.txn.client_id, t.txn.seq): t for t in in_doubt(stub)}
        assert set(listed) == {(0xF1, 1), (0xF2, 1)}
        assert all(t.state == kv_pb2.TXN_PREPARED for t in listed.values())

        details = refused(stub, second, commit=True)
        assert "not prepared in groups [3]" in details, details
        aborted = resolve(stub, second, commit=False)
        assert aborted.record.state == kv_pb2.TXN_ABORTED
        assert "aborted" in refused(stub, second, commit=True)

        assert set(show(stub, first).txn.prepared_groups) == {3, 4}
        committed = resolve(stub, first, commit=True)
        assert committed.record.state == kv_pb2.TXN_COMMITTED
        assert "committed" in refused(stub, first, commit=False)
        # Decided by hand before either transaction's locks expired (so no resolver did it).
        assert time.monotonic() - first_began < TXN_TTL
        assert time.monotonic() - second_began < TXN_TTL

        assert not in_doubt(stub)
        found = get_many(stub, [x, y, z, w])
        assert [found[key].value for key in (x, y, z, w)] == [b"0", b"0", b"first", b"first"]
        assert show(stub, first).record.state == kv_pb2.TXN_COMMITTED
        for process in crashing:
            assert process.wait_exit() == -signal.SIGKILL
    finally:
        router.close()
        for process in crashing:
            process.close()
