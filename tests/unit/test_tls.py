"""Mutual TLS pieces: dev certificates, loading them, and who a TLS server lets in.

The handshake tests run a real gRPC server on 127.0.0.1 (TLS is what only
real sockets show) with the health service, in this process.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from router.certs import DevCerts, write_dev_certs
from router.cli import EXIT_OK, EXIT_USAGE, build_parser, main, resolve_tls
from router.launcher import Layout, child_specs
from shardkv.node.config import ConfigError, load_config
from shardkv.tls import TlsError, TlsFiles, TlsMaterial, add_port, open_channel


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return write_dev_certs(tmp_path_factory.mktemp("certs"), 2, ["db.example", "10.1.2.3"])


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    return write_dev_certs(tmp_path_factory.mktemp("other"), 1)


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- the certificates ----------------------------------------------------------------


def test_dev_certs_are_signed_by_the_ca_and_name_the_local_hosts(certs: DevCerts) -> None:
    ca = _certificate(certs.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert {path.name for path in certs.directory.iterdir()} == {
        "ca.pem",
        "ca-key.pem",
        *(f"{name}{suffix}" for name in certs.names() for suffix in (".pem", "-key.pem")),
    }
    assert certs.names() == ["node-1", "node-2", "router", "client"]
    for name in certs.names():
        files = certs.files(name)
        cert = _certificate(files.cert)
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost", "db.example"]
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
        ]
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        # The key is the certificate's, and only its owner can read it.
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert files.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(certs.ca_key.stat().st_mode) == 0o600


def test_dev_certs_never_overwrite(certs: DevCerts) -> None:
    before = certs.ca.read_bytes()
    with pytest.raises(FileExistsError, match=r"ca\.pem already exists"):
        write_dev_certs(certs.directory, 2)
    assert certs.ca.read_bytes() == before


# -- loading -------------------------------------------------------------------------


def test_tls_files_are_all_three_or_none(certs: DevCerts) -> None:
    assert TlsFiles.from_options(None, None, None) is None
    files = certs.node(1)
    assert TlsFiles.from_options(str(files.ca), files.cert, files.key) == files
    with pytest.raises(TlsError, match="missing: key file"):
        TlsFiles.from_options(files.ca, files.cert, None)


def test_loading_names_the_file_that_is_missing_or_not_pem(certs: DevCerts, tmp_path: Path) -> None:
    files = certs.node(1)
    material = files.load()
    assert material.key.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(material)
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsError, match=f"cannot read the TLS certificate {missing}"):
        TlsFiles(files.ca, missing, files.key).load()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsError, match=f"CA certificate {garbage} is not a PEM file"):
        TlsFiles(garbage, files.cert, files.key).load()


# -- the handshake -------------------------------------------------------------------


@pytest.fixture
async def tls_server(certs: DevCerts) -> AsyncIterator[int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = add_port(server, "127.0.0.1:0", certs.node(1).load())
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def _check(port: int, tls: TlsMaterial | None) -> grpc.StatusCode:
    async with open_channel(f"127.0.0.1:{port}", tls) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_a_tls_server_lets_in_only_callers_with_a_certificate_of_its_ca(
    tls_server: int, certs: DevCerts, other_ca: DevCerts
) -> None:
    assert await _check(tls_server, certs.client.load()) == grpc.StatusCode.OK
    # Another node's certificate will do: nodes dial each other.
    assert await _check(tls_server, certs.node(2).load()) == grpc.StatusCode.OK
    assert await _check(tls_server, None) == grpc.StatusCode.UNAVAILABLE
    assert await _check(tls_server, other_ca.client.load()) == grpc.StatusCode.UNAVAILABLE
    # A client that trusts the right CA but has no certificate of it is refused too.
    mixed = TlsMaterial(
        ca=certs.ca.read_bytes(),
        cert=other_ca.client.cert.read_bytes(),
        key=other_ca.client.key.read_bytes(),
    )
    assert await _check(tls_server, mixed) == grpc.StatusCode.UNAVAILABLE


# -- configuration -------------------------------------------------------------------


def test_node_tls_settings_come_from_every_layer_all_three_or_none(tmp_path: Path) -> None:
    assert load_config(["--node-id", "1"], {}).tls is None
    env = {
        "SHARDKV_TLS_CA_FILE": "/etc/shardkv/ca.pem",
        "SHARDKV_TLS_CERT_FILE": "/etc/shardkv/node.pem",
        "SHARDKV_TLS_KEY_FILE": "/etc/shardkv/node-key.pem",
    }
    config = load_config(["--node-id", "1", "--tls-key-file", "k.pem"], env)
    assert config.tls == TlsFiles(
        Path("/etc/shardkv/ca.pem"), Path("/etc/shardkv/node.pem"), Path("k.pem")
    )
    # Relative paths in the TOML file are relative to the file.
    toml = tmp_path / "conf" / "node.toml"
    toml.parent.mkdir()
    toml.write_text(
        'node_id = 1\ntls_ca_file = "ca.pem"\ntls_cert_file = "n.pem"\ntls_key_file = "n-key.pem"\n'
    )
    config = load_config(["--config", str(toml)], {})
    assert config.tls == TlsFiles(
        toml.parent / "ca.pem", toml.parent / "n.pem", toml.parent / "n-key.pem"
    )
    with pytest.raises(ConfigError) as partial:
        load_config(["--node-id", "1", "--tls-ca-file", "ca.pem"], {})
    assert partial.value.setting == "tls_cert_file"
    assert "--tls-cert-file" in str(partial.value)
    assert "flag --tls-ca-file" in str(partial.value)


def test_cli_tls_flags_win_over_the_environment() -> None:
    args = build_parser().parse_args(["get", "k", "--tls-ca-file", "flag-ca.pem"])
    env = {
        "SHARDKV_TLS_CA_FILE": "env-ca.pem",
        "SHARDKV_TLS_CERT_FILE": "c.pem",
        "SHARDKV_TLS_KEY_FILE": "k.pem",
    }
    assert resolve_tls(args, env) == TlsFiles(Path("flag-ca.pem"), Path("c.pem"), Path("k.pem"))
    assert resolve_tls(build_parser().parse_args(["get", "k"]), {}) is None
    with pytest.raises(TlsError):
        resolve_tls(args, {})


def test_cli_refuses_half_a_tls_setup(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tls-ca-file", "ca.pem", "get", "k"]) == EXIT_USAGE
    assert "missing: certificate file, key file" in capsys.readouterr().err


def test_certs_command_writes_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--nodes", "1"]) == EXIT_OK
    assert f"--tls-cert-file {out / 'client.pem'}" in capsys.readouterr().out
    assert (out / "node-1.pem").exists() and not (out / "node-2.pem").exists()
    assert main(["certs", "--out", str(out)]) == EXIT_USAGE
    assert "already exists" in capsys.readouterr().err


def test_up_with_tls_gives_every_child_its_certificate(tmp_path: Path, certs: DevCerts) -> None:
    specs = child_specs(Layout(nodes=2, groups=4, port=9000), tmp_path, certs)
    for spec, files in zip(specs, [certs.node(1), certs.node(2), certs.router], strict=True):
        flags = dict(zip(spec.argv[3::2], spec.argv[4::2], strict=True))
        assert flags["--tls-ca-file"] == str(files.ca)
        assert flags["--tls-cert-file"] == str(files.cert)
        assert flags["--tls-key-file"] == str(files.key)
    assert spec.argv[0] == sys.executable
