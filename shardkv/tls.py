"""Mutual TLS for every gRPC connection: client to router, router to node, node to node.

Every process is given three PEM files: the cluster CA's certificate, its own
certificate (signed by that CA) and its own private key. With them it

1. serves only callers that present a certificate signed by the cluster CA
   (``require_client_auth``): a plaintext caller or one from another CA fails
   the handshake and never reaches a handler;
2. dials only servers whose certificate the cluster CA signed and names the
   host it dials (gRPC checks the target's host against the certificate's
   subject alternative names, so a certificate for ``127.0.0.1:7101`` must
   carry the IP SAN 127.0.0.1; ``shardkv certs`` adds localhost, 127.0.0.1,
   ::1 and any ``--host``), and presents its own certificate.

``TlsFiles`` names the files (``None`` in its place everywhere means
plaintext); ``TlsFiles.load()`` reads them once into ``TlsMaterial``, which
makes the credentials. ``open_channel`` and ``add_port`` are the one place a
channel or a listening port is made secure or not. This module is shared by
the node, the router and the client, and reads no configuration itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from shardkv.errors import ShardKVError

__all__ = ["TlsError", "TlsFiles", "TlsMaterial", "add_port", "open_channel"]

_PEM_BEGIN = b"-----BEGIN "


class TlsError(ShardKVError):
    """A TLS file is missing, unreadable or not PEM; the message names the file."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of the cluster CA's certificate, this process's certificate, and its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_options(
        cls, ca: str | Path | None, cert: str | Path | None, key: str | Path | None
    ) -> TlsFiles | None:
        """The files from three optional settings: all three, or none (plaintext).

        Raises ``TlsError`` when only some are given: half a TLS setup would
        silently fall back to plaintext, or fail later with a vaguer message.
        """
        given = {"CA file": ca, "certificate file": cert, "key file": key}
        if all(value is None for value in given.values()):
            return None
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise TlsError(
                "TLS needs the CA file, the certificate file and the key file together; "
                "missing: " + ", ".join(missing)
            )
        assert ca is not None and cert is not None and key is not None
        return cls(Path(ca), Path(cert), Path(key))

    def load(self) -> TlsMaterial:
        """Read the three files; ``TlsError`` naming the file that is missing or not PEM."""
        return TlsMaterial(
            ca=_read_pem(self.ca, "CA certificate"),
            cert=_read_pem(self.cert, "certificate"),
            key=_read_pem(self.key, "private key"),
        )


@dataclass(frozen=True, slots=True, repr=False)
class TlsMaterial:
    """The PEM bytes of ``TlsFiles``; not printed, since it holds a private key."""

    ca: bytes
    cert: bytes
    key: bytes

    def __repr__(self) -> str:
        return "TlsMaterial(...)"

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with this certificate; refuse callers without one the CA signed."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Trust only the cluster CA; present this certificate to the server."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def open_channel(
    address: str,
    tls: TlsMaterial | None,
    options: Sequence[tuple[str, int | str]] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``address``: mutual TLS with ``tls``, plaintext without."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)


def add_port(server: grpc.aio.Server, address: str, tls: TlsMaterial | None) -> int:
    """Listen on ``address`` with mutual TLS, or plaintext without ``tls``; the bound port."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.server_credentials())


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the TLS {what} {path}: {exc.strerror}") from exc
    if _PEM_BEGIN not in data:
        raise TlsError(f"the TLS {what} {path} is not a PEM file")
    return data
