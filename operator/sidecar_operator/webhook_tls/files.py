"""The files the webhook server loads, written the way a Secret volume is, so a reader never
sees a certificate without its key."""

from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

from sidecar_operator.webhook_tls.bundle import Bundle

DATA_LINK = "..data"


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_files(bundle: Bundle, *, cert_file: Path, key_file: Path, ca_file: Path) -> bool:
    """Write the serving pair and the CA bundle; True when anything changed.

    The layout is the one of a Secret volume: the files live in a fresh ``..<random>``
    directory, ``..data`` points at it, and each file is a symlink through ``..data``. Moving
    ``..data`` is one atomic rename, so a reader sees the old pair or the new pair — never a
    new certificate with the old key (kopf re-reads the files every ``file_check_interval``).
    """
    directory = cert_file.parent
    if key_file.parent != directory or ca_file.parent != directory:
        raise ValueError(f"{cert_file}, {key_file} and {ca_file} must share one directory")
    contents = {
        cert_file.name: bundle.serving.cert_pem,
        key_file.name: bundle.serving.key_pem,
        ca_file.name: bundle.ca_bundle(),
    }
    if all(_read_or_none(directory / name) == data for name, data in contents.items()):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{dt.datetime.now(dt.UTC):%Y_%m_%d_%H_%M_%S}.{secrets.token_hex(4)}"
    version.mkdir(mode=0o700)
    for name, data in contents.items():
        fd = os.open(version / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    data_link = directory / DATA_LINK
    previous = os.readlink(data_link) if data_link.is_symlink() else None
    staged = directory / f"{DATA_LINK}_tmp"
    staged.unlink(missing_ok=True)
    staged.symlink_to(version.name)
    os.replace(staged, data_link)
    for name in contents:
        link = directory / name
        target = Path(DATA_LINK) / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        staged_link = directory / f".{name}.tmp"
        staged_link.unlink(missing_ok=True)
        staged_link.symlink_to(target)
        os.replace(staged_link, link)
    if previous is not None and previous.startswith("..") and "/" not in previous:
        old = directory / previous
        if old != version and old.is_dir():
            for leftover in old.iterdir():
                leftover.unlink()
            old.rmdir()
    return True
