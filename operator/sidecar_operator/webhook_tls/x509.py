"""Certificates for the admission webhook, made with ``cryptography``.

The apiserver only calls webhooks over TLS and checks the server against the ``caBundle`` of
the webhook configuration. Without cert-manager the operator is its own CA: it makes a CA and a
serving certificate, stores both in a Secret, and renews the serving certificate well before it
expires. Out of the cluster (development, tests) the same functions write files, and the local
control plane's certificates (``tools/localkube/pki.py``) come from this builder too:
``make_serving_cert`` for the apiserver, ``make_client_cert`` for its clients.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_VALIDITY",
    "RENEW_BEFORE",
    "SERVING_VALIDITY",
    "CertFiles",
    "KeyPair",
    "make_ca",
    "make_client_cert",
    "make_serving_cert",
    "service_hosts",
    "write_webhook_certs",
]

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True, kw_only=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def expires_within(self, margin: dt.timedelta, *, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        return self.certificate.not_valid_after_utc - now < margin


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(*, common_name: str = "sidecar-state-webhook-ca") -> KeyPair:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_pem(key))


def _ca_key(ca: KeyPair) -> ec.EllipticCurvePrivateKey:
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key must be an EC key made by make_ca()")
    return ca_key


def _issue(
    *,
    ca: KeyPair,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    validity: dt.timedelta,
    sans: Sequence[x509.GeneralName] = (),
) -> KeyPair:
    """A leaf certificate for a fresh key, signed by ``ca``: one extended key usage, and the
    subject alternative names ``sans`` when there are any."""
    ca_key = _ca_key(ca)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_pem(key))


def make_serving_cert(
    *, ca: KeyPair, hosts: Sequence[str], validity: dt.timedelta = SERVING_VALIDITY
) -> KeyPair:
    """A server certificate for ``hosts`` (DNS names or IP addresses), signed by ``ca``."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name or address")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return _issue(
        ca=ca,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        validity=validity,
        sans=names,
    )


def make_client_cert(
    *,
    ca: KeyPair,
    common_name: str,
    organizations: Sequence[str] = (),
    validity: dt.timedelta = SERVING_VALIDITY,
) -> KeyPair:
    """A client certificate signed by ``ca``. Kubernetes reads the subject as the identity:
    the common name is the user, each organization a group (``system:masters``...)."""
    if not common_name:
        raise ValueError("a client certificate needs a common name (the user it authenticates)")
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return _issue(
        ca=ca,
        subject=x509.Name(attributes),
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        validity=validity,
    )


def service_hosts(*, service: str, namespace: str) -> list[str]:
    """The names the apiserver may use for a webhook Service."""
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    ]


@dataclass(frozen=True, kw_only=True)
class CertFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def write_webhook_certs(directory: Path, *, hosts: Sequence[str]) -> CertFiles:
    """Make a CA and a serving certificate for ``hosts`` and write them as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    serving = make_serving_cert(ca=ca, hosts=hosts)
    files = CertFiles(
        ca_file=directory / "ca.crt",
        cert_file=directory / "tls.crt",
        key_file=directory / "tls.key",
    )
    files.ca_file.write_bytes(ca.cert_pem)
    files.cert_file.write_bytes(serving.cert_pem)
    files.key_file.write_bytes(serving.key_pem)
    files.key_file.chmod(0o600)
    return files
