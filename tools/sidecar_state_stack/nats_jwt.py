"""A NATS operator -> account -> user JWT chain, for servers in operator (decentralised) mode.

Why generated here rather than with ``nsc``: the machines have no NATS CLI, and the chain is
small: each JWT is ``header.claims.signature`` (base64url, no padding), signed with Ed25519 by
the issuer's nkey; its ``jti`` is the base32 SHA-256 of the claims without it. The keys come
from :class:`sidecar_hydrator.nats_auth.Nkey` (checked against the reference ``nkeys`` package
by its unit tests); nats-server validates everything on its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sidecar_hydrator.nats_auth import PREFIX_ACCOUNT, PREFIX_OPERATOR, PREFIX_USER, Nkey

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode_jwt(*, issuer: Nkey, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


#: Unlimited JetStream for the account (a JWT account has none unless it says so).
_JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip


@dataclass(frozen=True)
class JwtChain:
    """An operator, its system account (JetStream needs one) and the app's account."""

    operator: Nkey
    account: Nkey
    system: Nkey
    operator_jwt: str
    account_jwt: str
    system_jwt: str

    @classmethod
    def create(cls) -> JwtChain:
        operator = Nkey.generate(PREFIX_OPERATOR)
        account = Nkey.generate(PREFIX_ACCOUNT)
        system = Nkey.generate(PREFIX_ACCOUNT)
        operator_jwt = encode_jwt(
            issuer=operator,
            subject=operator.public_key,
            name="op",
            nats={"type": "operator", "system_account": system.public_key},
        )
        account_jwt = encode_jwt(
            issuer=operator,
            subject=account.public_key,
            name="app",
            nats={"type": "account", "limits": {**_UNLIMITED, **_JETSTREAM}},
        )
        system_jwt = encode_jwt(
            issuer=operator,
            subject=system.public_key,
            name="SYS",
            nats={"type": "account", "limits": _UNLIMITED},
        )
        return cls(operator, account, system, operator_jwt, account_jwt, system_jwt)

    def server_config(self) -> str:
        """nats-server config text: trust the operator, preload both accounts (memory
        resolver)."""
        return (
            f"operator: {self.operator_jwt}\n"
            f"system_account: {self.system.public_key}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{ {self.account.public_key}: {self.account_jwt}, "
            f"{self.system.public_key}: {self.system_jwt} }}\n"
        )

    def user_creds(self, *, signer: Nkey | None = None) -> str:
        """A ``.creds`` file's text for a new user of the account (``signer``: a key the
        server does not trust, for a refused user)."""
        user = Nkey.generate(PREFIX_USER)
        user_jwt = encode_jwt(
            issuer=signer or self.account,
            subject=user.public_key,
            name="hydrator",
            nats={"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
        )
        return (
            f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )
