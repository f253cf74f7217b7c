"""NATS nkey and creds (JWT) authentication, signed with ``cryptography``'s Ed25519.

Why not nats-py's own ``nkeys_seed`` / ``user_credentials``: they import the ``nkeys`` package,
which is published as source only (and pulls PyNaCl), while the images install binary wheels
only. An nkey is an Ed25519 key in NATS's encoding (base32, a prefix byte naming its role, a
CRC-16 checksum), so this module decodes the seed, signs the server's nonce with
``cryptography`` (a wheel, already the operator's dependency) and hands nats-py the callbacks
its ``connect`` takes: ``signature_cb`` and, for creds, ``user_jwt_cb``.

The files are read again on every (re)connect, as nats-py's own code does, so a rotated Secret
(the kubelet updates the mounted files) is picked up without a restart.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

#: Prefix bytes of the nkey encoding (nats-io/nkeys): the first base32 character of a key.
PREFIX_SEED = 18 << 3  # "S"
PREFIX_OPERATOR = 14 << 3  # "O"
PREFIX_ACCOUNT = 0  # "A"
PREFIX_USER = 20 << 3  # "U"
_ROLES = {PREFIX_OPERATOR: "operator", PREFIX_ACCOUNT: "account", PREFIX_USER: "user"}


class NkeyError(ValueError):
    """An nkey seed or creds file that cannot be used; the message names the file."""


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum of the nkey encoding."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _b32decode(text: bytes) -> bytes:
    return base64.b32decode(text + b"=" * (-len(text) % 8))


def _checked(raw: bytes, *, what: str) -> bytes:
    """``raw`` without its trailing checksum, which must match."""
    if len(raw) < 3 or crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise NkeyError(f"{what}: the checksum does not match (a truncated or mistyped key?)")
    return raw[:-2]


@dataclass(frozen=True, slots=True)
class Nkey:
    """One nkey pair: its role prefix and its Ed25519 private key."""

    prefix: int
    key: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: bytes, *, what: str = "nkey seed") -> Nkey:
        """Decode an encoded seed (``SU...`` for a user), checking its checksum and role."""
        try:
            raw = _checked(_b32decode(seed.strip()), what=what)
        except (binascii.Error, ValueError) as exc:
            if isinstance(exc, NkeyError):
                raise
            raise NkeyError(f"{what} is not an nkey seed (base32 text starting with S)") from None
        if len(raw) != 34 or raw[0] & 0xF8 != PREFIX_SEED:
            raise NkeyError(f"{what} is not an nkey seed (base32 text starting with S)")
        prefix = (raw[0] & 0x07) << 5 | (raw[1] & 0xF8) >> 3
        if prefix not in _ROLES:
            raise NkeyError(f"{what} is a seed of an unknown kind (prefix {prefix})")
        return cls(prefix=prefix, key=Ed25519PrivateKey.from_private_bytes(raw[2:]))

    @classmethod
    def generate(cls, prefix: int) -> Nkey:
        return cls(prefix=prefix, key=Ed25519PrivateKey.generate())

    @property
    def role(self) -> str:
        return _ROLES[self.prefix]

    @property
    def public_key(self) -> str:
        """The encoded public key (``U...`` for a user), as servers and JWTs name it."""
        raw = bytes([self.prefix]) + self.key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        return base64.b32encode(raw + crc16(raw).to_bytes(2, "little")).decode().rstrip("=")

    @property
    def seed(self) -> bytes:
        """The encoded seed (``SU...`` for a user)."""
        private = self.key.private_bytes_raw()
        header = bytes([PREFIX_SEED | self.prefix >> 5, (self.prefix & 31) << 3])
        raw = header + private
        return base64.b32encode(raw + crc16(raw).to_bytes(2, "little")).rstrip(b"=")

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def _read(path: str, *, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise NkeyError(f"{what} {path}: {exc.strerror or exc}") from None


def read_seed_file(path: str) -> Nkey:
    """The nkey of a seed file (``user.nk``: the seed, possibly with surrounding whitespace)."""
    what = f"nkey seed file {path}"
    key = Nkey.from_seed(_read(path, what="nkey seed file"), what=what)
    if key.prefix != PREFIX_USER:
        raise NkeyError(f"{what} holds an {key.role} seed; a client signs in with a user seed")
    return key


def read_creds_file(path: str) -> tuple[bytes, Nkey]:
    """The user JWT and user nkey of a ``.creds`` file (as ``nsc`` writes it: a block
    ``-----BEGIN NATS USER JWT-----`` then one ``-----BEGIN USER NKEY SEED-----``)."""
    what = f"creds file {path}"
    lines = [line.strip() for line in _read(path, what="creds file").splitlines()]
    jwt = _after(lines, b"BEGIN NATS USER JWT")
    seed = _after(lines, b"BEGIN USER NKEY SEED")
    if jwt is None or seed is None:
        raise NkeyError(
            f"{what} needs a NATS USER JWT block and a USER NKEY SEED block (as nsc writes it)"
        )
    key = Nkey.from_seed(seed, what=f"{what} (its seed)")
    if key.prefix != PREFIX_USER:
        raise NkeyError(f"{what} holds an {key.role} seed; a client signs in with a user seed")
    return jwt, key


def _after(lines: list[bytes], marker: bytes) -> bytes | None:
    for index, line in enumerate(lines):
        if marker in line:
            following = next((x for x in lines[index + 1 :] if x), b"")
            return following if following and not following.startswith(b"---") else None
    return None


@dataclass(frozen=True, slots=True)
class NkeyCallbacks:
    """What nats-py's ``connect`` needs: ``signature_cb``, and ``user_jwt_cb`` for creds;
    ``public_key`` is sent as ``nkey`` when there is no JWT."""

    signature_cb: Callable[[str], bytes]
    user_jwt_cb: Callable[[], bytearray] | None
    public_key: str | None


def nkey_callbacks(*, seed_file: str) -> NkeyCallbacks:
    """Sign in with a user nkey seed (the server lists the public key). The file is read now,
    so a bad one fails before connecting, and again for each signature."""
    public = read_seed_file(seed_file).public_key

    def sign(nonce: str) -> bytes:
        return base64.b64encode(read_seed_file(seed_file).sign(nonce.encode()))

    return NkeyCallbacks(signature_cb=sign, user_jwt_cb=None, public_key=public)


def creds_callbacks(*, creds_file: str) -> NkeyCallbacks:
    """Sign in with a creds file: its user JWT, and its seed's signature of the nonce."""
    read_creds_file(creds_file)

    def jwt() -> bytearray:
        return bytearray(read_creds_file(creds_file)[0])

    def sign(nonce: str) -> bytes:
        return base64.b64encode(read_creds_file(creds_file)[1].sign(nonce.encode()))

    return NkeyCallbacks(signature_cb=sign, user_jwt_cb=jwt, public_key=None)
