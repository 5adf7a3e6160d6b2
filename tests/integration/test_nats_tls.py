"""TLS on the bus, switched on by settings: nats-server rendered with a certificate (and, for
mutual TLS, a client CA) and services connecting with KASVU_NATS_TLS_CA / _CERT / _KEY."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.errors import Error as NatsError
from pydantic import SecretStr

from kasvuctl.launcher import ServerTls
from kasvuctl.natsauth import NatsAuth
from services.runtime import bus
from services.runtime.settings import Settings
from tests.conftest import NatsServer

# A failed handshake comes as an SSL error (an OSError) or as nats-py's own error.
REFUSED = (OSError, NatsError)


class Authority:
    """A throwaway certificate authority that issues certificates into a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kasvu test CA")])
        self.certificate = self._sign(
            self.name, self.key.public_key(), x509.BasicConstraints(ca=True, path_length=None), []
        )
        self.file = self._write("ca.pem", self.certificate.public_bytes(serialization.Encoding.PEM))

    def _sign(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        constraints: x509.BasicConstraints,
        extensions: list[x509.ExtensionType],
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(constraints, critical=True)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def issue(self, name: str, *, server: bool) -> tuple[Path, Path]:
        """A certificate and key for 127.0.0.1 (a server) or for a client called `name`."""
        key = ec.generate_private_key(ec.SECP256R1())
        extensions: list[x509.ExtensionType] = [
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            )
        ]
        if server:
            extensions.append(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            )
        certificate = self._sign(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            key.public_key(),
            x509.BasicConstraints(ca=False, path_length=None),
            extensions,
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return (
            self._write(f"{name}.pem", certificate.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{name}-key.pem", key_pem),
        )


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    folder = tmp_path / "pki"
    folder.mkdir()
    return Authority(folder)


def tls_server(
    tmp_path: Path, users: NatsAuth, authority: Authority, *, mutual: bool
) -> Iterator[NatsServer]:
    cert, key = authority.issue("nats-server", server=True)
    server = NatsServer(
        tmp_path / "nats-tls", users, ServerTls(cert, key, authority.file if mutual else None)
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_over_tls(tmp_path: Path, nats_users: NatsAuth, authority: Authority) -> Iterator[NatsServer]:
    yield from tls_server(tmp_path, nats_users, authority, mutual=False)


@pytest.fixture
def nats_over_mutual_tls(tmp_path: Path, nats_users: NatsAuth, authority: Authority) -> Iterator[NatsServer]:
    yield from tls_server(tmp_path, nats_users, authority, mutual=True)


def service_settings(
    server: NatsServer, ca: Path, cert: Path | None = None, key: Path | None = None
) -> Settings:
    """The registry's settings as its environment would give them: its user, over TLS."""
    access = server.access("registry")
    return Settings(
        service="registry",
        nats_url=server.url,
        nats_user=access.user,
        nats_password=SecretStr(access.password),
        nats_tls_ca=ca,
        nats_tls_cert=cert,
        nats_tls_key=key,
    )


async def test_a_service_trusting_the_servers_ca_connects_over_tls(
    nats_over_tls: NatsServer, authority: Authority
) -> None:
    settings = service_settings(nats_over_tls, ca=authority.file)
    client = await bus.connect(settings.nats_url, "registry", settings.nats_access())
    try:
        assert client.is_connected
        await client.publish("kasvu.registry.v1.TermsPublished.pirkanmaa", b"")
        await client.flush()
    finally:
        await client.close()


async def test_a_client_that_cannot_verify_the_server_or_skips_tls_is_refused(
    nats_over_tls: NatsServer,
) -> None:
    access = nats_over_tls.access("registry").connect_options()
    with pytest.raises(REFUSED):
        await nats.connect(nats_over_tls.url, allow_reconnect=False, connect_timeout=2, **access)
    plain = nats_over_tls.url.replace("tls://", "nats://")
    with pytest.raises(REFUSED):
        await nats.connect(plain, allow_reconnect=False, connect_timeout=2, **access)


async def test_mutual_tls_admits_only_a_client_with_a_certificate_from_the_ca(
    nats_over_mutual_tls: NatsServer, authority: Authority
) -> None:
    cert, key = authority.issue("registry", server=False)
    without = service_settings(nats_over_mutual_tls, ca=authority.file)
    with pytest.raises(Exception):  # noqa: B017
        await nats.connect(
            without.nats_url,
            allow_reconnect=False,
            connect_timeout=2,
            **without.nats_access().connect_options(),
        )

    settings = service_settings(nats_over_mutual_tls, ca=authority.file, cert=cert, key=key)
    client = await bus.connect(settings.nats_url, "registry", settings.nats_access())
    try:
        assert client.is_connected
    finally:
        await client.close()


def test_a_client_certificate_without_its_key_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="KASVU_NATS_TLS_CERT and KASVU_NATS_TLS_KEY go together"):
        Settings(service="registry", nats_tls_cert=tmp_path / "registry.pem")
