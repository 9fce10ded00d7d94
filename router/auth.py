"""Who may call the router: bearer tokens, each with a role, checked before any handler runs.

A caller sends ``authorization: Bearer <token>`` in its call metadata (the
client's ``token=``, the CLI's ``--token``). The router's ``--tokens-file``
maps tokens to roles; without it, authentication is off and every call is
served, as before. With it, ``AuthInterceptor`` answers every call of the
``shardkv.v1.Router`` service:

1. no ``authorization`` metadata, or a token the file does not name:
   UNAUTHENTICATED;
2. a token whose role does not cover the method: PERMISSION_DENIED;
3. otherwise the call goes on to its handler.

A refused call never reaches its handler, so nothing of it is applied.

Roles: ``read-write`` may read and write keys, run transactions and read the
cluster's status; ``admin`` may do all that and also the operator's commands
(``ADMIN_METHODS``: listing, showing and resolving transactions, planning
and changing the ring and the placement of replicas). Health
checking and server reflection stay open, as is usual, so that load balancers
and standard tools work without a token.

The etcd v3 API the router also serves (``router.etcd``) is covered the same
way: its calls need a token too, which etcd's clients send as ``token``
metadata after ``Auth.Authenticate`` (etcdctl's ``--user NAME:TOKEN``: the
password is one of the file's tokens, the name is not checked).
``Authenticate`` itself is open; it answers a known token with itself.
Every etcd method the router serves is a ``read-write`` one.

The tokens file is TOML (``.toml``) or JSON (any other name)::

    [tokens]
    "a-long-random-string" = "read-write"
    "another-one" = "admin"
"""

from __future__ import annotations

import enum
import hmac
import json
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from router.interceptors import SERVICE_PREFIX

__all__ = [
    "ADMIN_METHODS",
    "METADATA_KEY",
    "AuthInterceptor",
    "Role",
    "TokensFileError",
    "bearer_metadata",
    "load_tokens",
]

METADATA_KEY = "authorization"
_SCHEME = "bearer "
# What etcd's clients send their token as.
ETCD_METADATA_KEY = "token"
ETCD_PREFIX = "/etcdserverpb."
# Open, as etcd's is: it is how an etcd client gets the token it sends.
ETCD_AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"

# The operator's commands: they read and change other callers' transactions,
# and change (or plan to change) which group owns which keys and which nodes
# hold which groups.
ADMIN_METHODS = frozenset(
    {"ListTransactions", "ShowTxn", "ResolveTxn", "ChangeRing", "ChangePlacement"}
)

if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[object, object]
    _Interceptor = grpc.aio.ServerInterceptor[object, object]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class Role(enum.Enum):
    READ_WRITE = "read-write"
    ADMIN = "admin"

    def may_call(self, method: str) -> bool:
        return self is Role.ADMIN or method not in ADMIN_METHODS


class TokensFileError(ValueError):
    """The tokens file cannot be read or says something other than token = role."""


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents ``token``."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def load_tokens(path: Path) -> dict[str, Role]:
    """The file's ``tokens`` table: token -> role (see the module docstring)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TokensFileError(f"cannot read the tokens file {path}: {exc.strerror or exc}") from exc
    try:
        document = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise TokensFileError(f"the tokens file {path} does not parse: {exc}") from exc
    table = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(table, dict) or not table:
        raise TokensFileError(f"the tokens file {path} has no tokens table of token = role")
    roles = {role.value: role for role in Role}
    tokens: dict[str, Role] = {}
    for token, role in table.items():
        if not isinstance(role, str) or role not in roles:
            raise TokensFileError(
                f"the tokens file {path} gives a token the role {role!r}; "
                f"roles are {', '.join(sorted(roles))}"
            )
        if not token or token != token.strip():
            raise TokensFileError(f"the tokens file {path} has an empty or padded token")
        tokens[token] = roles[role]
    return tokens


class AuthInterceptor(_Interceptor):
    """Refuses Router calls without a valid token or role; see the module docstring."""

    def __init__(self, tokens: Mapping[str, Role]) -> None:
        self._tokens = dict(tokens)
        self._refusals: dict[tuple[grpc.StatusCode, str], _Handler] = {}

    def role_of(
        self, metadata: tuple[tuple[str, str | bytes], ...] | None, *, etcd: bool = False
    ) -> Role | None:
        """The role of the token the call presents (etcd calls may send etcd's ``token``)."""
        for key, value in metadata or ():
            if not isinstance(value, str):
                continue
            if key == METADATA_KEY:
                if value[: len(_SCHEME)].lower() != _SCHEME:
                    return None
                return self.role_of_token(value[len(_SCHEME) :].strip())
            if etcd and key == ETCD_METADATA_KEY:
                return self.role_of_token(value.strip())
        return None

    def role_of_token(self, presented: str) -> Role | None:
        # Compared in constant time, so that timing does not tell how much of a guess is right.
        for token, role in self._tokens.items():
            if hmac.compare_digest(presented.encode(), token.encode()):
                return role
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        path = handler_call_details.method
        etcd = path.startswith(ETCD_PREFIX) and path != ETCD_AUTHENTICATE
        if not path.startswith(SERVICE_PREFIX) and not etcd:
            return await continuation(handler_call_details)
        method = path[len(SERVICE_PREFIX) :] if not etcd else path.rsplit("/", 1)[-1]
        role = self.role_of(handler_call_details.invocation_metadata, etcd=etcd)
        if role is None:
            return self._refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs a valid token: send 'authorization: Bearer <token>' "
                + (
                    "(etcdctl: --user any:<token>)"
                    if etcd
                    else "(the client's token=, the CLI's --token or $SHARDKV_TOKEN)"
                ),
            )
        if not etcd and not role.may_call(method):
            return self._refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is for the admin role; this token's role is {role.value}",
            )
        return await continuation(handler_call_details)

    def _refusal(self, code: grpc.StatusCode, message: str) -> _Handler:
        """A handler that refuses without reading the request (kept: metrics' cache sees one)."""
        refusal = self._refusals.get((code, message))
        if refusal is None:

            async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
                await context.abort(code, message)

            refusal = self._refusals[(code, message)] = grpc.unary_unary_rpc_method_handler(refuse)
        return refusal
