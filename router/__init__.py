"""The shardkv router: the stateless gRPC front door, its client and CLI.

It owns the ring, the routing cache, the two-phase-commit coordinator and the
rebalancing planner. It talks to nodes only through gRPC and imports from
``shardkv`` only the pure pieces both sides must share exactly (ring function,
key encoding, generated protocol, error types). See docs/design.md.

Users import the client from here: ``from router import Client, AsyncClient``
(docs/client.md), and catch ``router.ClientError`` and its subclasses.
Transactions' compares and operations are built with ``router.transactions``
(``value``, ``version``, ``put``, ``get``, ...).
"""

from router.client import AsyncClient, Client, RetryPolicy
from router.errors import (
    Aborted,
    ClientError,
    ClusterError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TransactionConflict,
    Unauthenticated,
    Unavailable,
)
from router.transactions import (
    AsyncTransaction,
    DeleteResult,
    GetResult,
    KeyValue,
    PutResult,
    Transaction,
    TxnResult,
)
from shardkv.tls import TlsFiles

__all__ = [
    "Aborted",
    "AsyncClient",
    "AsyncTransaction",
    "Client",
    "ClientError",
    "ClusterError",
    "DeadlineExceeded",
    "DeleteResult",
    "GetResult",
    "InvalidArgument",
    "KeyValue",
    "NotFound",
    "PermissionDenied",
    "PutResult",
    "ResourceExhausted",
    "RetryPolicy",
    "TlsFiles",
    "Transaction",
    "TransactionConflict",
    "TxnResult",
    "Unauthenticated",
    "Unavailable",
]
