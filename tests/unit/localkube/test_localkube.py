"""localkube's pure parts: the certificates its control plane trusts (made by the product's
builder), the Go-build helper's names and environment, the cache root, ports, the plugin's
mode, and the public API the tests, the demo and the benchmarks import."""

from __future__ import annotations

import argparse
import io
import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import localkube
from localkube import build as build_mod
from localkube import gobuild, pytest_plugin
from localkube.cache import CACHE_ENV, cache_root
from localkube.errors import BuildError, ControlPlaneError, KindBuildError, LocalkubeError
from localkube.pki import APISERVER_DNS_NAMES, write_control_plane_pki
from localkube.ports import free_ports


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_control_plane_certificates_are_issued_by_its_ca_for_the_right_identities(
    tmp_path: Path,
) -> None:
    pki = write_control_plane_pki(tmp_path, extra_apiserver_ips=["192.0.2.7"])
    ca = _cert(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (pki.apiserver_cert, pki.admin_cert, pki.controller_manager_cert):
        cert = _cert(leaf)
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    admin = _cert(pki.admin_cert)
    # Kubernetes reads the subject: CN is the user, O the group that makes it an admin.
    assert admin.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "sidecar-state-admin"
    )
    assert [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "system:masters"
    ]
    assert _usages(admin) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    scheduler = _cert(pki.scheduler_cert)
    assert scheduler.subject.rfc4514_string() == "CN=system:kube-scheduler"
    apiserver = _cert(pki.apiserver_cert)
    assert _usages(apiserver) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = apiserver.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == set(APISERVER_DNS_NAMES)
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(ip) for ip in ("127.0.0.1", "10.0.0.1", "192.0.2.7")
    }


def test_control_plane_keys_are_private_and_of_the_kinds_the_components_expect(
    tmp_path: Path,
) -> None:
    from cryptography.hazmat.primitives import serialization

    pki = write_control_plane_pki(tmp_path)
    for key in (pki.ca_key, pki.apiserver_key, pki.admin_key, pki.service_account_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    leaf = serialization.load_pem_private_key(pki.admin_key.read_bytes(), password=None)
    assert isinstance(leaf, ec.EllipticCurvePrivateKey)
    # Service-account tokens are RS256 by default: the signing key must be RSA.
    signing = serialization.load_pem_private_key(pki.service_account_key.read_bytes(), None)
    assert isinstance(signing, rsa.RSAPrivateKey)
    public = serialization.load_pem_public_key(pki.service_account_pub.read_bytes())
    assert public.public_numbers() == signing.public_key().public_numbers()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("package", "binary"),
    [
        ("github.com/nats-io/nats-server/v2@v2.15.2", "nats-server"),
        ("sigs.k8s.io/kind@v0.33.0", "kind"),
        ("sigs.k8s.io/cri-tools/cmd/crictl@v1.34.0", "crictl"),
        ("github.com/rhysd/actionlint/cmd/actionlint", "actionlint"),
    ],
)
def test_go_install_names_the_binary_as_go_does(package: str, binary: str) -> None:
    assert gobuild.binary_name(package) == binary


def test_go_env_is_static_reproducible_and_keeps_the_callers_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOFLAGS", "-v -trimpath")
    env = gobuild.go_env(jobs=3)
    assert env["GOFLAGS"].split() == ["-v", "-trimpath", "-buildvcs=false", "-mod=mod", "-p=3"]
    assert env["CGO_ENABLED"] == "0"
    assert env["GOTOOLCHAIN"] == "local"


def test_go_install_of_a_cached_binary_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "kind").write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", "")  # no go: a build attempt would fail
    assert gobuild.go_install("sigs.k8s.io/kind@v0", target=tmp_path, out=io.StringIO()) == (
        tmp_path / "kind"
    )


def test_a_build_of_some_groups_checks_only_their_stamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("PATH", "")  # no go: a build attempt would fail
    helm_group = next(g for g in build_mod._groups() if g.name == "helm")
    directory = build_mod.bin_dir()
    directory.mkdir(parents=True)
    (directory / "helm").write_text("#!/bin/sh\n")
    (directory / "helm").chmod(0o755)
    build_mod._stamp(directory, helm_group).write_text(build_mod._stamp_text(helm_group))
    assert build_mod.build(only=("helm",), out=io.StringIO()).helm == directory / "helm"
    assert not build_mod.is_built()  # etcd and Kubernetes are still missing


def test_a_build_of_an_unknown_group_names_the_known_ones() -> None:
    with pytest.raises(BuildError, match=r"no such build group \['kubelet'\].*'helm'"):
        build_mod.build(only=("kubelet",), out=io.StringIO())
    assert build_mod.group_names("helm, etcd") == ("helm", "etcd")
    with pytest.raises(argparse.ArgumentTypeError, match="kubelet"):
        build_mod.group_names("helm,kubelet")


def test_go_install_without_go_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(BuildError, match=r"install Go 1\.26\+"):
        gobuild.go_install("sigs.k8s.io/kind@v0", target=tmp_path, out=io.StringIO())


def test_cache_root_follows_the_environment_and_defaults_to_the_home_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.setenv(CACHE_ENV, "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "sidecar-state"


def test_setup_sh_spells_the_same_cache_root() -> None:
    """The shell's one-line default mirrors :func:`cache_root`; this keeps them together."""
    setup = (Path(__file__).resolve().parents[3] / "scripts" / "setup.sh").read_text()
    assert "${SIDECAR_STATE_CACHE:-$HOME/.cache/sidecar-state}" in setup


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20


def test_cluster_mode_rejects_anything_but_local_or_existing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("E2E_CLUSTER", "kind")
    with pytest.raises(pytest.UsageError, match="'local' or 'existing'"):
        pytest_plugin.cluster_mode()
    monkeypatch.setenv("E2E_CLUSTER", "")
    assert pytest_plugin.cluster_mode() == "local"


def test_every_error_is_a_localkube_error() -> None:
    for error in (BuildError, ControlPlaneError, KindBuildError):
        assert issubclass(error, LocalkubeError)


def test_the_public_api_names_what_callers_use() -> None:
    assert set(localkube.__all__) >= {
        "ClusterAccess", "LocalControlPlane", "Binaries", "cache_root", "free_port", "go_install",
        "LocalkubeError", "BuildError", "ControlPlaneError",
    }  # fmt: skip
    assert sorted(localkube.__all__) == sorted(localkube._EXPORTS)
    for name in localkube.__all__:
        assert getattr(localkube, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        localkube.nothing  # noqa: B018


def _run_pytest(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_uses_cluster.py").write_text(
        "def test_cluster(cluster):\n"
        "    assert cluster.existing\n"
        "    print('ACCESS', cluster.kubeconfig, cluster.kubectl.name, cluster.helm.name)\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_plugin_gives_any_suite_the_existing_cluster(tmp_path: Path) -> None:
    """Installed as a pytest11 entry point: a suite with no conftest gets ``cluster``."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("kubectl", "helm"):
        (tools / name).write_text("#!/bin/sh\nexit 0\n")
        (tools / name).chmod(0o755)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    suite = tmp_path / "suite"
    suite.mkdir()
    env = {
        **os.environ, "E2E_CLUSTER": "existing", "KUBECONFIG": str(kubeconfig),
        "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
    }  # fmt: skip
    proc = _run_pytest(suite, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ACCESS {kubeconfig} kubectl helm" in proc.stdout


def test_the_plugin_says_what_an_existing_cluster_lacks(tmp_path: Path) -> None:
    env = {**os.environ, "E2E_CLUSTER": "existing", "KUBECONFIG": str(tmp_path / "missing")}
    proc = _run_pytest(tmp_path, env)
    assert proc.returncode == 1
    assert "E2E_CLUSTER=existing needs KUBECONFIG" in proc.stdout
