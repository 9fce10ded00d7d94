"""The errors of the etcd benchmark harness, under one root::

    EtcdError
    ├── EtcdNotInstalled   no etcd binary on PATH or at /usr/bin/etcd
    ├── EtcdClusterError   a member failed to start, or the cluster never became healthy
    └── EtcdRequestError   an RPC to etcd failed (carries the gRPC status code)

gRPC's own errors are translated to ``EtcdRequestError`` in one place,
``bench.etcd.client``.
"""

from __future__ import annotations

import grpc

__all__ = ["EtcdClusterError", "EtcdError", "EtcdNotInstalled", "EtcdRequestError"]


class EtcdError(Exception):
    """Root of every error this package raises."""


class EtcdNotInstalled(EtcdError):
    """The etcd server binary is missing; the message says how to install it."""


class EtcdClusterError(EtcdError):
    """A member exited or the cluster did not become healthy in time."""


class EtcdRequestError(EtcdError):
    """An RPC failed: deadline, unavailable member, or etcd refused the request."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"etcd {method} failed: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details
