"""The nkey encoding and signatures of ``nats_auth``, against the reference ``nkeys`` package."""

from __future__ import annotations

import os

import nkeys
import pytest

from sidecar_hydrator.nats_auth import (
    PREFIX_ACCOUNT,
    PREFIX_OPERATOR,
    PREFIX_USER,
    Nkey,
    NkeyError,
    crc16,
    read_creds_file,
    read_seed_file,
)


@pytest.mark.parametrize("prefix", [PREFIX_USER, PREFIX_ACCOUNT, PREFIX_OPERATOR])
def test_seeds_and_public_keys_match_the_reference_implementation(prefix):
    raw = os.urandom(32)
    seed = nkeys.encode_seed(raw, prefix)
    reference = nkeys.from_seed(bytearray(seed))

    key = Nkey.from_seed(seed)

    assert key.public_key == reference.public_key.decode().rstrip("=")
    assert key.seed == seed
    assert key.sign(b"nonce") == reference.sign(b"nonce")  # Ed25519 is deterministic


def test_crc16_is_xmodem():
    assert crc16(b"123456789") == 0x31C3


def test_a_mistyped_seed_is_refused_by_its_checksum():
    seed = bytearray(Nkey.generate(PREFIX_USER).seed)
    seed[10] = ord("A") if seed[10] != ord("A") else ord("B")

    with pytest.raises(NkeyError, match="checksum does not match"):
        Nkey.from_seed(bytes(seed))


def test_a_public_key_is_not_a_seed(tmp_path):
    path = tmp_path / "user.nk"
    path.write_text(Nkey.generate(PREFIX_USER).public_key)

    with pytest.raises(NkeyError, match=f"nkey seed file {path} is not an nkey seed"):
        read_seed_file(str(path))


def test_an_account_seed_is_no_user_seed(tmp_path):
    path = tmp_path / "user.nk"
    path.write_bytes(Nkey.generate(PREFIX_ACCOUNT).seed)

    with pytest.raises(NkeyError, match="holds an account seed; a client signs in with a user"):
        read_seed_file(str(path))


def test_a_creds_file_without_its_seed_block_is_refused(tmp_path):
    path = tmp_path / "user.creds"
    path.write_text("-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n")

    with pytest.raises(NkeyError, match="needs a NATS USER JWT block and a USER NKEY SEED"):
        read_creds_file(str(path))
