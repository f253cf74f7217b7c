"""What the webhook's Secret holds, and what to do with it: pure, so every branch has a unit
test. :func:`decide` reads a :class:`Bundle`; :func:`issue` makes the certificates a decision
asks for."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sidecar_operator.webhook_tls.x509 import RENEW_BEFORE, KeyPair, make_ca, make_serving_cert

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
#: CAs the apiserver should trust: the current one, plus the previous one while a CA rolls over.
CA_BUNDLE = "ca-bundle.crt"
SECRET_TYPE = "kubernetes.io/tls"


# --- what the Secret holds ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """Everything in the Secret: the CA (with its key, to sign renewals) and the serving pair."""

    ca: KeyPair
    serving: KeyPair
    #: PEM of the CAs to trust; the current CA, and the previous one during a roll-over.
    trust_pem: bytes

    def secret_data(self) -> dict[str, str]:
        """The Secret's ``data``: base64 of each PEM."""
        raw = {
            CA_CERT: self.ca.cert_pem,
            CA_KEY: self.ca.key_pem,
            TLS_CERT: self.serving.cert_pem,
            TLS_KEY: self.serving.key_pem,
            CA_BUNDLE: self.trust_pem,
        }
        return {key: base64.b64encode(value).decode("ascii") for key, value in raw.items()}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> Bundle | None:
        """The bundle in a Secret's ``data``; ``None`` when anything is missing or unreadable."""
        if not data:
            return None
        try:
            raw = {key: base64.b64decode(data[key], validate=True) for key in
                   (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY)}  # fmt: skip
            trust = base64.b64decode(data.get(CA_BUNDLE) or data[CA_CERT], validate=True)
            bundle = cls(
                ca=KeyPair(cert_pem=raw[CA_CERT], key_pem=raw[CA_KEY]),
                serving=KeyPair(cert_pem=raw[TLS_CERT], key_pem=raw[TLS_KEY]),
                trust_pem=trust,
            )
            for pair in (bundle.ca, bundle.serving):
                _ = pair.certificate
                serialization.load_pem_private_key(pair.key_pem, password=None)
            x509.load_pem_x509_certificates(trust)
        except (KeyError, ValueError, TypeError, binascii.Error):
            return None
        return bundle

    def ca_bundle(self, *, now: dt.datetime | None = None) -> bytes:
        """The ``caBundle`` for the webhook configurations: the trusted CAs not yet expired."""
        return trusted_cas(self.trust_pem, current=self.ca.cert_pem, now=now)


def trusted_cas(trust_pem: bytes, *, current: bytes, now: dt.datetime | None = None) -> bytes:
    """``current`` first, then every other CA of ``trust_pem`` that is still valid."""
    now = now or dt.datetime.now(dt.UTC)
    current_cert = x509.load_pem_x509_certificate(current)
    kept = [current_cert]
    for cert in x509.load_pem_x509_certificates(trust_pem):
        if cert not in kept and cert.not_valid_after_utc > now:
            kept.append(cert)
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in kept)


# --- deciding -------------------------------------------------------------------------------


class Action(enum.Enum):
    REUSE = "reuse"  # the Secret is good: use it as it is
    CREATE = "create"  # no Secret: make a CA and a serving certificate, create the Secret
    RENEW = "renew"  # same CA, new serving certificate: update the Secret
    REPLACE = "replace"  # unusable Secret or expiring CA: new CA and serving cert, update


@dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    reason: str


def _public_key_bytes(pair: KeyPair) -> bytes:
    private = serialization.load_pem_private_key(pair.key_pem, password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _matches_key(pair: KeyPair) -> bool:
    return pair.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == _public_key_bytes(pair)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def covered_hosts(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = set(san.get_values_for_type(x509.DNSName))
    names.update(str(address) for address in san.get_values_for_type(x509.IPAddress))
    return names


def decide(
    bundle: Bundle | None,
    *,
    exists: bool,
    hosts: Sequence[str],
    now: dt.datetime | None = None,
    renew_before: dt.timedelta = RENEW_BEFORE,
) -> Decision:
    """What to do with the Secret as read: pure, so every branch has a unit test.

    ``exists`` tells a missing Secret (create it) from one that holds nothing usable (replace
    its content with an update, which keeps the race safe through its resourceVersion).
    """
    now = now or dt.datetime.now(dt.UTC)
    if not exists:
        return Decision(action=Action.CREATE, reason="the Secret does not exist")
    if bundle is None:
        return Decision(action=Action.REPLACE, reason="the Secret holds no usable certificates")
    if not _matches_key(bundle.ca):
        return Decision(action=Action.REPLACE, reason="the CA certificate does not match its key")
    if bundle.ca.expires_within(renew_before, now=now):
        return Decision(action=Action.REPLACE, reason="the CA expires within the renewal margin")
    serving = bundle.serving.certificate
    if not _matches_key(bundle.serving):
        return Decision(
            action=Action.RENEW, reason="the serving certificate does not match its key"
        )
    if not _issued_by(serving, bundle.ca.certificate):
        return Decision(action=Action.RENEW, reason="the serving certificate is not from the CA")
    missing = sorted(set(hosts) - covered_hosts(serving))
    if missing:
        return Decision(action=Action.RENEW, reason=f"the serving certificate lacks {missing}")
    if serving.not_valid_before_utc > now:
        return Decision(action=Action.RENEW, reason="the serving certificate is not valid yet")
    if bundle.serving.expires_within(renew_before, now=now):
        return Decision(action=Action.RENEW, reason="the serving certificate expires soon")
    return Decision(action=Action.REUSE, reason="the certificates are valid")


def issue(decision: Decision, current: Bundle | None, *, hosts: Sequence[str]) -> Bundle:
    """New certificates for a decision other than :attr:`Action.REUSE` (no I/O)."""
    if decision.action is Action.REUSE:
        raise ValueError("nothing to issue when the certificates are reused")
    if decision.action is Action.RENEW and current is not None:
        serving = make_serving_cert(ca=current.ca, hosts=hosts)
        return Bundle(ca=current.ca, serving=serving, trust_pem=current.trust_pem)
    ca = make_ca()
    serving = make_serving_cert(ca=ca, hosts=hosts)
    trust = ca.cert_pem
    if current is not None and _matches_key(current.ca):
        # Keep trusting the outgoing CA: other replicas serve certificates it signed until they
        # re-read the Secret. Expired CAs drop out of the bundle by themselves.
        trust = trusted_cas(current.trust_pem + current.ca.cert_pem, current=ca.cert_pem)
    return Bundle(ca=ca, serving=serving, trust_pem=trust)
