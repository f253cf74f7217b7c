"""Certificates for a throwaway control plane, from the product's own builder.

Why the product's builder (:mod:`sidecar_operator.webhook_tls.x509`): one X.509 recipe in the
repo, so the certificates the suite trusts are made the way the operator makes its webhook's.
The CA and the apiserver's serving certificate are ``make_ca``/``make_serving_cert`` (ECDSA
P-256), the components' and the admin's client certificates ``make_client_cert``. The
service-account key is RSA because token signing and verification by the apiserver default to
RS256; it is a signing key, not a certificate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar_operator.webhook_tls.x509 import KeyPair, make_ca, make_client_cert, make_serving_cert

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


def write_pair(pair: KeyPair, directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``<name>.crt`` and ``<name>.key`` (mode 0600) and return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(pair.cert_pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(pair.key_pem)
    return cert_path, key_path


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
    ca = make_ca(common_name="sidecar-state-local-ca")
    ca_cert, ca_key = write_pair(ca, directory, "ca")
    hosts = list(dict.fromkeys([*APISERVER_DNS_NAMES, *APISERVER_IPS, *extra_apiserver_ips]))
    apiserver_cert, apiserver_key = write_pair(
        make_serving_cert(ca=ca, hosts=hosts), directory, "apiserver"
    )
    admin = make_client_cert(
        ca=ca, common_name="sidecar-state-admin", organizations=("system:masters",)
    )
    admin_cert, admin_key = write_pair(admin, directory, "admin")
    kcm = make_client_cert(ca=ca, common_name="system:kube-controller-manager")
    kcm_cert, kcm_key = write_pair(kcm, directory, "controller-manager")
    scheduler = make_client_cert(ca=ca, common_name="system:kube-scheduler")
    scheduler_cert, scheduler_key = write_pair(scheduler, directory, "scheduler")

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key_path = directory / "sa.key"
    sa_key_path.touch(mode=0o600)
    sa_key_path.write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
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
