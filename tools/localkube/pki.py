"""Certificates for a throwaway control plane, via ``cryptography``.

Why in Python rather than openssl/cfssl: ``cryptography`` is already a dependency of the operator,
so the e2e suite needs no extra tool. (The operator's webhook certificates come from the
operator's own :mod:`sidecar_operator.webhook_tls.x509`, as in production.)

Leaf keys are ECDSA P-256 (cheap to generate, accepted by every Kubernetes component); the
service-account key is RSA because token signing and verification by the apiserver default to
RS256.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Certificates are short-lived test fixtures; a year is far beyond any run and avoids
#: surprises when a long-lived ``cluster up`` is reused across days.
DEFAULT_VALIDITY = datetime.timedelta(days=365)
#: Back-date validity a little so small clock differences never make a fresh cert "not yet valid".
_CLOCK_SKEW = datetime.timedelta(hours=1)

#: Subject alternative names of the kube-apiserver serving certificate: loopback for the host,
#: the first service IP and the in-cluster names for Pods (once a kubelet exists).
APISERVER_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IPS = ("127.0.0.1", "10.0.0.1")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CertifiedKey:
    """A certificate and its private key, with PEM encodings ready for files or kubeconfigs."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``<name>.crt`` and ``<name>.key`` (mode 0600) and return both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _sans(dns_names: Iterable[str], ip_addresses: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return names


@dataclasses.dataclass(frozen=True, kw_only=True)
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    certified: CertifiedKey

    @classmethod
    def create(
        cls,
        common_name: str = "sidecar-state-test-ca",
        *,
        validity: datetime.timedelta = DEFAULT_VALIDITY,
    ) -> CertificateAuthority:
        """Generate a new CA key and self-signed certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = _name(common_name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(certified=CertifiedKey(cert=cert, key=key))

    @property
    def cert_pem(self) -> bytes:
        return self.certified.cert_pem

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
        validity: datetime.timedelta = DEFAULT_VALIDITY,
    ) -> CertifiedKey:
        """Issue a leaf certificate.

        Kubernetes authenticates client certificates by subject: CN is the user name and each
        O is a group, hence ``organizations``. Serving certificates are matched by SAN only
        (Go ignores the CN), hence ``dns_names``/``ip_addresses``.
        """
        if not (server or client):
            raise ValueError("a certificate must be for a server, a client or both")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        ca_key = self.certified.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self.certified.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        sans = _sans(dns_names, ip_addresses)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return CertifiedKey(cert=cert, key=key)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ControlPlanePKI:
    """Paths of every key and certificate the local control plane's components read."""

    ca_cert: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    admin_cert: Path
    admin_key: Path
    controller_manager_cert: Path
    controller_manager_key: Path
    scheduler_cert: Path
    scheduler_key: Path
    service_account_key: Path
    service_account_pub: Path


def write_control_plane_pki(
    directory: Path, *, extra_apiserver_ips: Sequence[str] = ()
) -> ControlPlanePKI:
    """Generate a CA and all control-plane certificates into ``directory`` and return the paths.

    ``extra_apiserver_ips`` adds SANs to the apiserver certificate, for an advertise address
    other than loopback (Pods on a local node reach the apiserver there).

    Everything is regenerated on each call: the control plane is ephemeral, and fresh keys mean
    a stale kubeconfig from an earlier run fails loudly instead of talking to the wrong cluster.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("sidecar-state-local-ca")
    ca_cert, ca_key = ca.certified.write(directory, "ca")
    apiserver = ca.issue(
        "kube-apiserver",
        dns_names=APISERVER_DNS_NAMES,
        ip_addresses=list(dict.fromkeys([*APISERVER_IPS, *extra_apiserver_ips])),
        server=True,
    )
    apiserver_cert, apiserver_key = apiserver.write(directory, "apiserver")
    admin = ca.issue("sidecar-state-admin", organizations=("system:masters",), client=True)
    admin_cert, admin_key = admin.write(directory, "admin")
    kcm = ca.issue("system:kube-controller-manager", client=True)
    kcm_cert, kcm_key = kcm.write(directory, "controller-manager")
    scheduler = ca.issue("system:kube-scheduler", client=True)
    scheduler_cert, scheduler_key = scheduler.write(directory, "scheduler")

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key_path = directory / "sa.key"
    sa_key_path.touch(mode=0o600)
    sa_key_path.write_bytes(_key_pem(sa_key))
    sa_pub_path = directory / "sa.pub"
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ControlPlanePKI(
        ca_cert=ca_cert,
        ca_key=ca_key,
        apiserver_cert=apiserver_cert,
        apiserver_key=apiserver_key,
        admin_cert=admin_cert,
        admin_key=admin_key,
        controller_manager_cert=kcm_cert,
        controller_manager_key=kcm_key,
        scheduler_cert=scheduler_cert,
        scheduler_key=scheduler_key,
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )
