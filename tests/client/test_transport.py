"""TLS and connection options build the right credentials and channels."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from ananke import NO_RETRY, AnankeClient, AnankeError
from ananke.transport import ConnectionConfig


def test_plaintext_by_default() -> None:
    config = ConnectionConfig("localhost:50051")
    assert not config.uses_tls
    assert config.channel_credentials() is None
    assert config.target == "localhost:50051"


@pytest.mark.parametrize(
    ("address", "target", "tls"),
    [
        ("https://ananke.example:443", "ananke.example:443", True),
        ("grpcs://ananke.example:443/", "ananke.example:443", True),
        ("http://localhost:50051", "localhost:50051", False),
        ("unix:///tmp/ananke.sock", "unix:///tmp/ananke.sock", False),
    ],
)
def test_address_schemes(address: str, target: str, tls: bool) -> None:
    config = ConnectionConfig(address)
    assert config.target == target
    assert config.uses_tls is tls


def test_tls_with_system_roots() -> None:
    config = ConnectionConfig("h:1", tls=True)
    assert isinstance(config.channel_credentials(), grpc.ChannelCredentials)


def test_any_certificate_turns_tls_on(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    assert ConnectionConfig("h:1", root_certificates=ca).uses_tls
    assert ConnectionConfig("h:1", root_certificates=str(ca)).uses_tls


def test_client_cert_needs_key() -> None:
    with pytest.raises(ValueError, match="mutual TLS"):
        ConnectionConfig("h:1", client_certificate=b"x")


def test_empty_api_key_refused() -> None:
    with pytest.raises(ValueError, match="api_key"):
        ConnectionConfig("h:1", api_key=" ")


def test_channel_options() -> None:
    config = ConnectionConfig(
        "h:1", server_name="ananke.internal", options=(("grpc.max_receive_message_length", 1),)
    )
    options = dict(config.channel_options())
    assert options["grpc.ssl_target_name_override"] == "ananke.internal"
    assert options["grpc.max_receive_message_length"] == 1


def test_api_key_metadata() -> None:
    config = ConnectionConfig("h:1", api_key="k")
    assert config.call_metadata((("x", "y"),)) == (("authorization", "Bearer k"), ("x", "y"))


@dataclass
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


@pytest.fixture(scope="module")
def pki() -> Pki:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client one."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        issuer_key: ec.EllipticCurvePrivateKey,
        *,
        ca: bool = False,
        san: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    import ipaddress

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = cert(
        "ananke.test",
        server_key,
        "test-ca",
        ca_key,
        san=[
            x509.DNSName("ananke.test"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = cert("maze", client_key, "test-ca", ca_key)
    pem = serialization.Encoding.PEM
    return Pki(
        ca=ca_cert.public_bytes(pem),
        server_cert=server_cert.public_bytes(pem),
        server_key=key_pem(server_key),
        client_cert=client_cert.public_bytes(pem),
        client_key=key_pem(client_key),
    )


def test_tls_server(pki: Pki, start_fake, tmp_path: Path) -> None:
    creds = grpc.ssl_server_credentials([(pki.server_key, pki.server_cert)])
    _, address = start_fake(creds)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.ca)
    with AnankeClient(address, root_certificates=ca_file, api_key="k") as client:
        assert client.health() == "SERVING"
    with AnankeClient(
        address.replace("127.0.0.1", "localhost"),
        root_certificates=pki.ca,
        server_name="ananke.test",
    ) as client:
        assert client.model_info().model_id == "fake/model"
    # plaintext against a TLS port fails as UNAVAILABLE
    with (
        AnankeClient(address, retry=NO_RETRY, timeout=5) as client,
        pytest.raises(AnankeError) as info,
    ):
        client.health()
    assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(pki: Pki, start_fake) -> None:
    creds = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)],
        root_certificates=pki.ca,
        require_client_auth=True,
    )
    _, address = start_fake(creds)
    with AnankeClient(
        address,
        root_certificates=pki.ca,
        client_certificate=pki.client_cert,
        client_key=pki.client_key,
    ) as client:
        assert client.generate("x").text == "Hello"
    with (
        AnankeClient(address, root_certificates=pki.ca, retry=NO_RETRY, timeout=5) as client,
        pytest.raises(AnankeError) as info,
    ):
        client.health()
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
