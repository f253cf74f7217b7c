"""The hydrator's Redis credentials: the files the init step writes, and the config contract
that points the hydrator at them (issue 19). Redis itself loads them in
tests/integration/hydrator/test_store_acl.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from sidecar_hydrator import credentials
from sidecar_hydrator.config import ConfigError, HydratorConfig
from sidecar_hydrator.credentials import (
    ACL_FILE,
    HYDRATOR_REDIS_USER,
    PASSWORD_FILE,
    acl_file_text,
    main,
    write_credentials,
)

#: The hydrator's UID in the injected Pod (InjectionDefaults.hydrator_user).
HYDRATOR_UID = 65532
SYSTEM_PYTHON = "/usr/bin/python3"
BINDINGS = [{"name": "b", "kafka": {"bootstrap_servers": ["k:9092"]}, "topics": ["t"]}]


def test_password_is_owner_read_only_and_the_acl_file_holds_only_its_digest(tmp_path: Path):
    write_credentials(directory=tmp_path)

    password = (tmp_path / PASSWORD_FILE).read_text()
    acl = (tmp_path / ACL_FILE).read_text()
    assert stat.S_IMODE(os.stat(tmp_path / PASSWORD_FILE).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(tmp_path / ACL_FILE).st_mode) == 0o444
    assert len(password) >= 40  # 32 random bytes, URL-safe base64
    assert password not in acl
    assert f"#{hashlib.sha256(password.encode()).hexdigest()}" in acl
    assert [line.split()[1] for line in acl.splitlines()] == ["default", HYDRATOR_REDIS_USER]


def _write_as_a_non_root_user(directory: Path) -> None:
    """Root may open a 0400 file for writing; the init container's UID may not."""
    if os.geteuid() != 0:
        write_credentials(directory=directory)
        return
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run the step as UID {HYDRATOR_UID}")
    os.chown(directory, HYDRATOR_UID, HYDRATOR_UID)
    subprocess.run(
        # The system interpreter: the module needs only the standard library, and a
        # virtualenv's interpreter may sit where this UID cannot reach it.
        [SYSTEM_PYTHON, "-c", "import sys; from sidecar_hydrator.credentials import main; "
         "sys.exit(main(sys.argv[1:]))", str(directory)],
        user=HYDRATOR_UID, group=HYDRATOR_UID, extra_groups=[], check=True, capture_output=True,
        env={**os.environ, "PYTHONPATH": str(Path(credentials.__file__).parents[1])},
    )  # fmt: skip


def test_a_rerun_replaces_the_read_only_password():
    """The Pod's sandbox re-created runs init containers again: a 0400 file must not stop it."""
    directory = Path(tempfile.mkdtemp(prefix="sidecar-credentials-"))
    try:
        _write_as_a_non_root_user(directory)
        first = (directory / PASSWORD_FILE).read_text()

        _write_as_a_non_root_user(directory)

        second = (directory / PASSWORD_FILE).read_text()
        assert second != first
        assert hashlib.sha256(second.encode()).hexdigest() in (directory / ACL_FILE).read_text()
        assert sorted(p.name for p in directory.iterdir()) == [PASSWORD_FILE, ACL_FILE]
    finally:
        shutil.rmtree(directory)


def test_the_app_user_starts_from_nothing_and_gets_read_only_keys():
    app_line = acl_file_text(password_sha256="0" * 64).splitlines()[0].split()

    assert app_line[:4] == ["user", "default", "on", "nopass"]
    # Refuse everything first, so a command a later Redis adds is refused too.
    assert app_line.index("-@all") < app_line.index("+@read")
    assert "%R~*" in app_line and "~*" not in app_line
    for granted in app_line:
        assert not granted.startswith("+@") or granted in ("+@read", "+@transaction"), granted


def test_a_bad_digest_is_refused():
    with pytest.raises(ValueError, match="password_sha256"):
        acl_file_text(password_sha256="secret")


def test_main_needs_exactly_one_directory(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "usage: sidecar-state-credentials [-h] DIRECTORY" in capsys.readouterr().err


def test_main_reports_an_unwritable_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(tmp_path / "missing")]) == 1
    assert "cannot write Redis credentials" in capsys.readouterr().err


def test_config_reads_the_password_from_its_file(tmp_path: Path):
    write_credentials(directory=tmp_path)
    config = HydratorConfig.parse(
        {
            "bindings": BINDINGS,
            "redis_user": HYDRATOR_REDIS_USER,
            "redis_password_file": str(tmp_path / PASSWORD_FILE),
        }
    )

    assert config.redis_password() == (tmp_path / PASSWORD_FILE).read_text()


def test_config_without_credentials_connects_as_default():
    config = HydratorConfig.parse({"bindings": BINDINGS})

    assert (config.redis_user, config.redis_password()) == (None, None)


@pytest.mark.parametrize(
    "half", [{"redis_user": "u"}, {"redis_password_file": "/var/run/x/redis-password"}]
)
def test_a_user_without_a_password_file_or_the_reverse_is_refused(half: dict[str, str]):
    with pytest.raises(ConfigError, match="redis_user and redis_password_file"):
        HydratorConfig.parse({"bindings": BINDINGS, **half})


def test_a_missing_password_file_is_a_clear_exit(tmp_path: Path):
    config = HydratorConfig.parse(
        {"bindings": BINDINGS, "redis_user": "u", "redis_password_file": str(tmp_path / "none")}
    )

    with pytest.raises(SystemExit, match=r"redis_password_file .*none: No such file"):
        config.redis_password()
