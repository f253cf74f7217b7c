"""Who may do what with the Pod's Redis: apps read, only the hydrator writes.

Any process in the Pod that can ``connect()`` to the socket (every app container is in the
socket's group) gets the ``default`` ACL user, without credentials. That user may run read
commands, transactions of reads, and subscribe (client-side-caching invalidations, keyspace
events) — nothing that changes the store or the server: no writes, no ``FLUSH*``, ``SWAPDB``,
``CONFIG``, ``DEBUG``, ``SHUTDOWN``, scripts, ``SELECT`` of the spare database, or killing and
pausing other clients. Its keys are additionally read-only (``%R~*``), so a read-flagged command
that ever touched a key for writing would still be refused. The hydrator authenticates as
:data:`HYDRATOR_REDIS_USER`.

Why a start-up step (the ``sidecar-state-credentials`` init container) writes both files:
Redis must know the hydrator's password when it starts (it starts first, as a native sidecar),
and only the hydrator's UID may read the password. Redis runs as another UID, and app
containers share the socket group, so no file mode could give Redis the password without
giving it to others as well. But Redis needs only its SHA-256 (``#<hex>`` in an ACL file): so a
one-shot init container, running as the hydrator's UID before Redis starts, generates a random
password into ``redis-password`` (mode 0400) and the ACL file with the digest only
(``users.acl``, 0444) into a memory-backed volume that only Redis and the hydrator mount, both
read-only, and app containers not at all. The digest of 256 random bits reveals nothing usable.

Alternatives rejected: a per-Pod Secret created by the operator would put network I/O on the
admission path (a Pod under admission has no uid to own it, and anyone who may read Secrets in
the namespace could read it); a random password in the Pod spec would be visible to anyone who
may read Pods and would make the injection non-deterministic (every hash would change);
``ACL SETUSER`` at the hydrator's start needs a privileged connection that would have to be
protected in the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

#: The ACL user the hydrator writes as.
HYDRATOR_REDIS_USER = "sidecar-state-hydrator"
PASSWORD_FILE = "redis-password"
ACL_FILE = "users.acl"

#: What a connection without credentials may run. ``-@all`` first: every command not named
#: here is refused, including those a later Redis version adds.
APP_COMMANDS: tuple[str, ...] = (
    "-@all",
    "+@read",
    # MULTI/EXEC and WATCH: each queued command is checked on its own, so a write in a
    # transaction is refused and the EXEC aborts.
    "+@transaction",
    "+subscribe", "+psubscribe", "+ssubscribe", "+unsubscribe", "+punsubscribe", "+sunsubscribe",
    "+hello", "+ping", "+echo", "+quit", "+reset", "+command",
    # The connection's own settings, and client-side caching (invalidation messages).
    "+client|id", "+client|info", "+client|getname", "+client|setname", "+client|reply",
    "+client|tracking", "+client|trackinginfo", "+client|caching", "+client|getredir",
    "+client|help",
)  # fmt: skip

#: The hydrator may write anything, but not administer the server.
HYDRATOR_COMMANDS: tuple[str, ...] = ("+@all", "-@admin")


def acl_file_text(*, password_sha256: str) -> str:
    """The ``aclfile`` Redis loads at start: the app's ``default`` user and the hydrator's."""
    if len(password_sha256) != 64 or not all(c in "0123456789abcdef" for c in password_sha256):
        raise ValueError("password_sha256: must be 64 lower-case hex digits")
    # resetchannels then &*: subscribing to any channel, with PUBLISH refused, only ever
    # delivers what Redis or the hydrator sends.
    app = ["user default on nopass", "resetkeys", "%R~*", "resetchannels", "&*", *APP_COMMANDS]
    hydrator = [
        f"user {HYDRATOR_REDIS_USER} on",
        f"#{password_sha256}",
        "~*",
        "&*",
        *HYDRATOR_COMMANDS,
    ]
    return " ".join(app) + "\n" + " ".join(hydrator) + "\n"


def password_sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def _write_atomically(path: Path, text: str, *, mode: int) -> None:
    """Write then rename: a re-run (the Pod's sandbox re-created) replaces a 0400 file the
    owner could not open for writing, and a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)  # the umask may have narrowed it
    os.replace(temporary, path)


def write_credentials(*, directory: Path) -> None:
    """Generate the hydrator's password and the ACL file holding only its digest."""
    password = secrets.token_urlsafe(32)
    _write_atomically(directory / PASSWORD_FILE, password, mode=0o400)
    _write_atomically(
        directory / ACL_FILE, acl_file_text(password_sha256=password_sha256(password)), mode=0o444
    )


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="sidecar-state-credentials",
        description=(
            "The injected Pod's first init container: writes a random Redis password for the"
            f" hydrator ({PASSWORD_FILE}, mode 0400) and the ACL file Redis loads at start"
            f" ({ACL_FILE}: the password's SHA-256 only; apps may only read) into DIRECTORY."
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``sidecar-state-credentials DIRECTORY``: the init container's one step."""
    parser = build_parser()
    parser.add_argument("directory", type=Path, metavar="DIRECTORY")
    directory: Path = parser.parse_args(argv).directory
    try:
        write_credentials(directory=directory)
    except OSError as error:
        print(f"cannot write Redis credentials into {directory}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {directory / ACL_FILE} and {directory / PASSWORD_FILE}", file=sys.stderr)
    return 0
