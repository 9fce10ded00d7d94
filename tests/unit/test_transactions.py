"""Transactions on the client side: the builders, results, and interactive transactions.

Interactive transactions run against the fake router of ``test_client``,
which keeps etcd's versions and revisions and runs ``Txn`` on its dict; a
"concurrent writer" is the same client writing between a transaction's read
and its commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from router import (
    AsyncClient,
    AsyncTransaction,
    Client,
    ClusterError,
    DeleteResult,
    GetResult,
    InvalidArgument,
    KeyValue,
    PutResult,
    Transaction,
    TransactionConflict,
    TxnResult,
)
from router.transactions import (
    absent,
    create_revision,
    delete,
    exists,
    get,
    mod_revision,
    parse_txn_id,
    put,
    value,
    version,
)
from shardkv.v1 import kv_pb2, router_pb2
from tests.unit.test_client import FAST_RETRY, FakeRouter, RouterThread

Compare = kv_pb2.Compare


class LateAnswers(FakeRouter):
    """A fake router whose next Get reads the key at once but answers ``late`` seconds later."""

    def __init__(self) -> None:
        super().__init__()
        self.late = 0.0

    async def Get(self, request: Any, context: Any) -> router_pb2.GetResponse:
        self.requests["Get"].append(request)
        response = router_pb2.GetResponse(kv=self.kv(request.key))
        late, self.late = self.late, 0.0
        await asyncio.sleep(late)
        return response


@pytest.fixture
def fake() -> LateAnswers:
    return LateAnswers()


@pytest.fixture
def address(fake: FakeRouter) -> Iterator[str]:
    server = RouterThread(fake)
    yield server.address
    server.stop()


@pytest.fixture
async def client(address: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(address, retry=FAST_RETRY) as async_client:
        yield async_client


@pytest.fixture
def sync_client(address: str) -> Iterator[Client]:
    with Client(address, retry=FAST_RETRY) as blocking_client:
        yield blocking_client


# -- builders -----------------------------------------------------------------------------


def test_compares_are_built_in_etcds_style() -> None:
    assert (value("k") == b"x") == Compare(
        key=b"k", target=Compare.VALUE, operator=Compare.EQUAL, value=b"x"
    )
    assert (value(b"k") != "x") == Compare(
        key=b"k", target=Compare.VALUE, operator=Compare.NOT_EQUAL, value=b"x"
    )
    assert (version("k") == 0) == Compare(
        key=b"k", target=Compare.VERSION, operator=Compare.EQUAL, number=0
    )
    assert (mod_revision("k") < 5) == Compare(
        key=b"k", target=Compare.MOD_REVISION, operator=Compare.LESS, number=5
    )
    assert (create_revision("k") != 3) == Compare(
        key=b"k", target=Compare.CREATE_REVISION, operator=Compare.NOT_EQUAL, number=3
    )
    assert (version("k") > 2) == Compare(
        key=b"k", target=Compare.VERSION, operator=Compare.GREATER, number=2
    )
    # The number on the left: Python turns it around, the meaning stays.
    assert (5 > mod_revision("k")) == (mod_revision("k") < 5)  # noqa: SIM300
    assert exists("k") == (version("k") > 0)
    assert absent("k") == (version("k") == 0)


def test_keys_and_values_are_normalised_as_the_client_does() -> None:
    assert (value("ключ") == "значение").key == "ключ".encode()
    assert (value("ключ") == "значение").value == "значение".encode()
    assert put("k", "v") == kv_pb2.Operation(put=kv_pb2.Put(key=b"k", value=b"v"))
    assert delete(b"k") == kv_pb2.Operation(delete=kv_pb2.Delete(key=b"k"))
    assert get("k") == kv_pb2.Operation(get=kv_pb2.Get(key=b"k"))
    assert put("k", b"") == kv_pb2.Operation(put=kv_pb2.Put(key=b"k", value=b""))


def test_builders_refuse_what_cannot_be_sent() -> None:
    with pytest.raises(InvalidArgument, match="empty"):
        version("")
    with pytest.raises(InvalidArgument, match="empty"):
        put(b"", b"v")
    with pytest.raises(TypeError, match="a key"):
        get(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a value"):
        put("k", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value to compare"):
        _ = value("k") == 5
    with pytest.raises(TypeError, match="int"):
        _ = version("k") == b"1"
    with pytest.raises(TypeError, match="int"):
        _ = mod_revision("k") == True  # noqa: E712
    with pytest.raises(ValueError, match=">= 0"):
        _ = version("k") > -1
    with pytest.raises(TypeError):
        _ = version("k") <= 3  # type: ignore[operator]
    with pytest.raises(TypeError):
        {version("k")}


def test_results_follow_the_branch_that_ran() -> None:
    before = kv_pb2.KeyValue(key=b"a", value=b"1", version=2, create_revision=3, mod_revision=4)
    request = router_pb2.TxnRequest(
        success=[put("a", "2"), delete("a"), get("a")], failure=[delete("b")]
    )
    response = router_pb2.TxnResponse(
        succeeded=True,
        results=[
            kv_pb2.OperationResult(succeeded=True, previous=before),
            kv_pb2.OperationResult(succeeded=True, previous=before),
            kv_pb2.OperationResult(succeeded=True, previous=before),
        ],
    )
    kv = KeyValue(b"a", b"1", 2, 3, 4)
    assert TxnResult.from_response(request, response) == TxnResult(
        True, [PutResult(b"a", kv), DeleteResult(b"a", True, kv), GetResult(b"a", kv)]
    )
    failed = router_pb2.TxnResponse(succeeded=False, results=[kv_pb2.OperationResult()])
    assert TxnResult.from_response(request, failed) == TxnResult(
        False, [DeleteResult(b"b", False, None)]
    )
    with pytest.raises(ClusterError, match="1 results for 3 operations"):
        TxnResult.from_response(request, router_pb2.TxnResponse(succeeded=True, results=[{}]))


def test_transaction_ids_are_hex_client_and_seq() -> None:
    assert parse_txn_id("3f2a:17") == kv_pb2.TxnRef(client_id=0x3F2A, seq=17)
    assert parse_txn_id(" 3F2A:17\n") == kv_pb2.TxnRef(client_id=0x3F2A, seq=17)
    assert parse_txn_id("ffffffffffffffff:1").client_id == (1 << 64) - 1
    with pytest.raises(InvalidArgument, match="not a transaction id"):
        parse_txn_id("1:18446744073709551616")  # the seq is a uint64
    with pytest.raises(InvalidArgument, match="not a transaction id"):
        parse_txn_id("1_0:1")
    with pytest.raises(TypeError):
        parse_txn_id(17)  # type: ignore[arg-type]


# -- interactive transactions -------------------------------------------------------------


async def test_commit_compares_every_read_and_sends_the_staged_writes(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put("a", "1")  # revision 1
    await client.put("b", "2")  # revision 2
    await client.put("a", "3")  # revision 3
    async with client.transaction() as t:
        assert await t.get("a") == b"3"
        assert await t.get("b") == b"2"
        assert await t.get("missing") is None
        t.put("b", "20")
        t.delete("a")
        t.put("c", "30")
        t.put("b", "21")  # the last write of a key is the one sent
    (request,) = fake.requests["Txn"]
    assert list(request.compares) == [
        mod_revision("a") == 3,
        mod_revision("b") == 2,
        mod_revision("missing") == 0,
    ]
    assert list(request.success) == [put("b", "21"), delete("a"), put("c", "30")]
    assert not request.failure
    assert fake.data == {b"b": b"21", b"c": b"30"}


async def test_reads_see_the_transactions_own_writes_and_repeat(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put("a", "1")
    await client.put("b", "2")
    async with client.transaction() as t:
        t.put("a", "10")
        assert await t.get("a") == b"10"
        t.delete("a")
        assert await t.get("a") is None
        assert await t.get("b") == b"2"
        assert await t.get("b") == b"2"
    # Only b was read from the cluster, once; a was written blind: no compare on it.
    assert [request.key for request in fake.requests["Get"]] == [b"b"]
    assert list(fake.requests["Txn"][0].compares) == [mod_revision("b") == 2]
    assert fake.data == {b"b": b"2"}


async def test_concurrent_reads_of_a_key_answer_the_version_the_commit_checks(
    client: AsyncClient, fake: LateAnswers
) -> None:
    await client.put("a", "1")  # revision 1
    fake.late = 0.1
    t = AsyncTransaction(client)
    first = asyncio.create_task(t.get("a"))  # reads revision 1, answers late
    while not fake.requests["Get"]:
        await asyncio.sleep(0.001)
    await client.put("a", "2")  # revision 2
    assert await t.get("a") == b"2"  # answered first: remembered
    assert await first == b"2", "a late, older answer gives way to the one remembered"
    await t.commit()
    assert list(fake.requests["Txn"][0].compares) == [mod_revision("a") == 2]


async def test_a_read_that_ends_after_the_commit_began_is_an_error(
    client: AsyncClient, fake: LateAnswers
) -> None:
    fake.late = 0.2
    t = AsyncTransaction(client)
    late = asyncio.create_task(t.get("a"))
    while not fake.requests["Get"]:
        await asyncio.sleep(0.001)
    await t.commit()
    with pytest.raises(RuntimeError, match="committed"):
        await late


async def test_a_key_written_since_it_was_read_is_a_conflict_and_nothing_applies(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put("a", "1")
    with pytest.raises(TransactionConflict, match="b'a'") as excinfo:
        async with client.transaction() as t:
            assert await t.get("a") == b"1"
            await client.put("a", "2")  # another writer
            t.put("b", "copy of a")
    assert excinfo.value.code is grpc.StatusCode.ABORTED
    assert fake.data == {b"a": b"2"}
    # A key that was absent when read and created since conflicts too.
    with pytest.raises(TransactionConflict):
        async with client.transaction() as t:
            assert await t.get("new") is None
            await client.put("new", "x")
            t.put("b", "y")
    assert b"b" not in fake.data


async def test_a_read_only_transaction_commits_to_check_its_reads(
    client: AsyncClient, fake: FakeRouter
) -> None:
    await client.put("a", "1")
    async with client.transaction() as t:
        await t.get("a")
        await t.get("b")
    (request,) = fake.requests["Txn"]
    assert list(request.compares) == [mod_revision("a") == 1, mod_revision("b") == 0]
    assert not request.success
    with pytest.raises(TransactionConflict):
        async with client.transaction() as t:
            await t.get("a")
            await client.delete("a")


async def test_a_block_that_raises_discards_the_transaction(
    client: AsyncClient, fake: FakeRouter
) -> None:
    with pytest.raises(KeyError):
        async with client.transaction() as t:
            t.put("a", "1")
            raise KeyError("the caller's own error")
    assert not fake.requests["Txn"]
    assert not fake.data


async def test_a_finished_transaction_cannot_be_used(client: AsyncClient, fake: FakeRouter) -> None:
    async with client.transaction() as t:
        t.put("a", "1")
        result = await t.commit()  # committed in the block: not again at its end
    assert result == TxnResult(True, [PutResult(b"a", None)])
    assert len(fake.requests["Txn"]) == 1
    with pytest.raises(RuntimeError, match="committed"):
        await t.get("a")
    with pytest.raises(RuntimeError, match="committed"):
        t.put("a", "2")
    with pytest.raises(RuntimeError, match="committed"):
        await t.commit()
    t.discard()
    discarded = AsyncTransaction(client)
    discarded.discard()
    with pytest.raises(RuntimeError, match="discarded"):
        discarded.delete("a")


async def test_a_scope_is_a_with_block_or_a_decorator_not_both(client: AsyncClient) -> None:
    with pytest.raises(ValueError, match="cannot be re-run"):
        async with client.transaction(retries=2):
            pass
    scope = client.transaction()
    async with scope:
        with pytest.raises(RuntimeError, match="in use"):
            async with scope:
                pass
    with pytest.raises(ValueError, match="retries"):
        client.transaction(retries=-1)


def test_blocking_transaction_in_a_with_block(sync_client: Client, fake: FakeRouter) -> None:
    sync_client.put("a", "1")
    with sync_client.transaction() as t:
        assert isinstance(t, Transaction)
        t.put("b", (t.get("a") or b"") + b"!")
        assert t.get("b") == b"1!"
    assert fake.data == {b"a": b"1", b"b": b"1!"}
    assert list(fake.requests["Txn"][0].compares) == [mod_revision("a") == 1]
    with pytest.raises(TransactionConflict), sync_client.transaction() as t:
        t.get("a")
        sync_client.put("a", "2")
        t.put("b", "stale")
    assert fake.data[b"b"] == b"1!"


# -- the decorator ------------------------------------------------------------------------


def test_decorator_reruns_on_conflict_and_returns_the_result(
    sync_client: Client, fake: FakeRouter
) -> None:
    sync_client.put("n", "0")
    seen: list[int] = []

    @sync_client.transaction(retries=2)
    def increment(t: Transaction, key: str, *, by: int) -> int:
        current = int(t.get(key) or b"0")
        seen.append(current)
        if len(seen) == 1:
            sync_client.put(key, "10")  # another writer, once
        t.put(key, str(current + by))
        return current + by

    assert increment("n", by=5) == 15
    assert seen == [0, 10]
    assert fake.data[b"n"] == b"15"
    assert increment.__name__ == "increment"
    assert len(fake.requests["Txn"]) == 2


def test_decorator_stops_after_retries(sync_client: Client, fake: FakeRouter) -> None:
    runs = 0

    @sync_client.transaction(retries=2)
    def always_beaten(t: Transaction) -> None:
        nonlocal runs
        runs += 1
        t.get("n")
        sync_client.put("n", str(runs))  # another writer, every time
        t.put("m", "never")

    with pytest.raises(TransactionConflict):
        always_beaten()
    assert runs == 3
    assert len(fake.requests["Txn"]) == 3
    assert b"m" not in fake.data

    @sync_client.transaction()
    def once(t: Transaction) -> None:
        nonlocal runs
        runs += 1
        t.get("n")
        sync_client.put("n", "x")

    with pytest.raises(TransactionConflict):
        once()
    assert runs == 4


def test_decorator_does_not_rerun_other_errors(sync_client: Client, fake: FakeRouter) -> None:
    runs = 0

    @sync_client.transaction(retries=5)
    def broken(t: Transaction) -> None:
        nonlocal runs
        runs += 1
        t.put("a", "1")
        raise LookupError("a bug in the caller")

    with pytest.raises(LookupError):
        broken()
    assert runs == 1
    assert not fake.requests["Txn"]


async def test_async_decorator_reruns_on_conflict(client: AsyncClient, fake: FakeRouter) -> None:
    await client.put("from", "100")
    await client.put("to", "0")
    runs = 0

    @client.transaction(retries=3)
    async def transfer(t: AsyncTransaction, amount: int) -> tuple[int, int]:
        nonlocal runs
        runs += 1
        source = int(await t.get("from") or b"0")
        target = int(await t.get("to") or b"0")
        if runs < 3:
            await client.put("from", str(source + 1))  # a deposit lands meanwhile
        t.put("from", str(source - amount))
        t.put("to", str(target + amount))
        return source - amount, target + amount

    assert await transfer(30) == (72, 30)
    assert runs == 3
    assert fake.data == {b"from": b"72", b"to": b"30"}


async def test_async_decorator_stops_after_retries(client: AsyncClient, fake: FakeRouter) -> None:
    runs = 0

    @client.transaction(retries=1)
    async def always_beaten(t: AsyncTransaction) -> None:
        nonlocal runs
        runs += 1
        await t.get("n")
        await client.put("n", str(runs))

    with pytest.raises(TransactionConflict):
        await always_beaten()
    assert runs == 2
