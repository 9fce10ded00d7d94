"""Errors the shardkv client raises: one tree, one root, each with its gRPC status.

::

    ClientError              root: .code (grpc.StatusCode) and .details (the server's message)
    ├── InvalidArgument      the request breaks a rule (empty key, oversized value, ...): fix it
    │                        (also a ValueError; raised locally for what is obviously bad)
    ├── NotFound             what the request names does not exist
    ├── Unavailable          no router or group served the call before its deadline: retry later
    ├── DeadlineExceeded     the call's deadline passed; a write may or may not have applied
    ├── ResourceExhausted    the router is at a limit: retry after ``retry_after`` seconds
    │                        (the client already did, until the deadline), or the request
    │                        is over the size limit (``retry_after`` None: make it smaller)
    ├── Unauthenticated      no token, or one the router does not know: pass ``token=``
    ├── PermissionDenied     the token's role does not allow the call (admin commands)
    ├── Aborted              a conflict (transactions): retry the whole transaction
    │   └── TransactionConflict
    │                        a transaction was not applied: an interactive one's reads had
    │                        changed, or the router said ABORTED after the client's retries
    └── ClusterError         anything else the cluster answered (INTERNAL, UNKNOWN, ...)

``from_rpc_error`` is the one place where a gRPC error becomes one of these;
the client raises its result ``from`` the original ``grpc.aio.AioRpcError``.
Keys that are of the wrong type raise ``TypeError``, not a ``ClientError``.
The server side has its own tree (``shardkv.errors.ShardKVError``); the
client's is separate so that users never need the server's modules.
"""

from __future__ import annotations

import grpc

__all__ = [
    "Aborted",
    "ClientError",
    "ClusterError",
    "DeadlineExceeded",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TransactionConflict",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class ClientError(Exception):
    """Root of the client's errors: the gRPC ``code`` and the server's ``details``."""

    def __init__(self, message: str, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class InvalidArgument(ClientError, ValueError):
    """The request is malformed or breaks a limit; retrying it unchanged fails again."""


class NotFound(ClientError):
    """What the request names does not exist."""


class Unavailable(ClientError):
    """No router, or no leader of a group, answered before the deadline; retrying later may work."""


class DeadlineExceeded(ClientError):
    """The call's deadline passed. For a write the outcome is unknown: it may yet apply."""


class ResourceExhausted(ClientError):
    """The router refused the call at a limit; nothing of it was applied.

    ``retry_after`` (seconds) is the router's hint when it was busy; None when
    the request itself was too large, so that sending it again fails again.
    """

    retry_after: float | None = None


class Unauthenticated(ClientError):
    """The call had no token, or one the router does not know; nothing was applied."""


class PermissionDenied(ClientError):
    """The token's role does not allow the call (admin commands); nothing was applied."""


class Aborted(ClientError):
    """The request conflicted with another (transactions) and was not applied."""


class TransactionConflict(Aborted):
    """A transaction conflicted and nothing of it was applied: run it again.

    Raised when an interactive transaction's compares on the versions it read
    failed (another writer got there first), or when the router still
    answered ABORTED (a clash with another transaction's locks) after the
    client's retries.
    """


class ClusterError(ClientError):
    """The cluster failed the call in a way the other classes do not name (INTERNAL, ...)."""


_CLASS_OF_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}

WRITE_OUTCOME_UNKNOWN = "the write may or may not have applied"


def from_rpc_error(
    code: grpc.StatusCode,
    details: str,
    *,
    method: str,
    write: bool,
    context: str = "",
    retry_after: float | None = None,
) -> ClientError:
    """The client error for a call of ``method`` that ended with ``code`` and ``details``.

    ``context`` says what the client already tried (attempts, addresses); a
    write that ends in DEADLINE_EXCEEDED says that its outcome is unknown.
    ``retry_after`` is a RESOURCE_EXHAUSTED's hint (``retry-after-ms``).
    """
    error_class = _CLASS_OF_CODE.get(code, ClusterError)
    if error_class is Aborted and method == "Txn":
        error_class = TransactionConflict
    parts = [f"{method}: {code.name}: {details or 'no details'}"]
    if context:
        parts.append(context)
    if write and error_class is DeadlineExceeded:
        parts.append(WRITE_OUTCOME_UNKNOWN)
    error = error_class("; ".join(parts), code, details)
    if isinstance(error, ResourceExhausted):
        error.retry_after = retry_after
    return error
