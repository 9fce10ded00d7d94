"""``shardkv certs``: a local CA and the certificates of a dev cluster, for mutual TLS.

``write_dev_certs(out, nodes)`` writes into ``out``::

    ca.pem, ca-key.pem                   the cluster CA (self-signed)
    node-1.pem, node-1-key.pem, ...      one per node, 1 .. nodes
    router.pem, router-key.pem           the router
    client.pem, client-key.pem           a client (the CLI, the Python client)

Every certificate but the CA's is signed by the CA, is good for both ends of
a connection (extended key usage serverAuth and clientAuth: a node both
serves and dials its peers), and names as subject alternative names
``localhost``, ``127.0.0.1`` and ``::1``, plus the given ``hosts`` (DNS names
or IP addresses): gRPC checks that the certificate of the server it dials
names the host of the address it dials. Keys are ECDSA P-256, unencrypted
PKCS#8 PEM, readable by their owner only.

It never overwrites: if any of the files exists it raises ``FileExistsError``
and writes nothing, so a CA cannot be replaced under a running cluster by
mistake. This is a dev tool: a production cluster gets its certificates from
its own CA, and points the ``tls_*`` settings at them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shardkv.tls import TlsFiles

__all__ = ["DEFAULT_HOSTS", "DevCerts", "write_dev_certs"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
_CA_DAYS = 3650
_LEAF_DAYS = 825
# Certificates start an hour early, so that a clock a little behind still accepts them.
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class DevCerts:
    """Where ``write_dev_certs`` put everything."""

    directory: Path
    nodes: int

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    def files(self, name: str) -> TlsFiles:
        """The CA, certificate and key of ``name``: ``node-<i>``, ``router`` or ``client``."""
        return TlsFiles(self.ca, self.directory / f"{name}.pem", self.directory / f"{name}-key.pem")

    def node(self, node_id: int) -> TlsFiles:
        return self.files(f"node-{node_id}")

    @property
    def router(self) -> TlsFiles:
        return self.files("router")

    @property
    def client(self) -> TlsFiles:
        return self.files("client")

    def names(self) -> list[str]:
        return [*(f"node-{i}" for i in range(1, self.nodes + 1)), "router", "client"]

    def paths(self) -> list[Path]:
        paths = [self.ca, self.ca_key]
        for name in self.names():
            files = self.files(name)
            paths += [files.cert, files.key]
        return paths


def write_dev_certs(
    out: Path, nodes: int, hosts: Sequence[str] = (), *, cluster: str = "shardkv"
) -> DevCerts:
    """Create the CA and every certificate in ``out`` (made if missing); see the docstring."""
    if nodes < 1:
        raise ValueError("nodes must be at least 1")
    names = _subject_alt_names([*DEFAULT_HOSTS, *hosts])
    certs = DevCerts(out, nodes)
    existing = [path for path in certs.paths() if path.exists()]
    if existing:
        raise FileExistsError(
            f"{existing[0]} already exists; certificates are never overwritten: "
            "remove them or pick another directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} dev CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(certs.ca_key, ca_key)
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for name in certs.names():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        files = certs.files(name)
        _write_key(files.key, key)
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return certs


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(host.strip().strip("[]") for host in hosts if host.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created readable by the owner only, never briefly readable by others.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
