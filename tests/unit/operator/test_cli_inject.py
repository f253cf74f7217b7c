"""``sidecar-state``: the offline twin of the webhook, called in-process through ``run``."""

from __future__ import annotations

import importlib.metadata
import subprocess

import pytest
import yaml

from sidecar_operator import __version__
from sidecar_operator.api.crd import CRD_FILE_NAME, render_crd
from sidecar_operator.injection.names import (
    CREDENTIALS_CONTAINER,
    HYDRATOR_CONTAINER,
    REDIS_CONTAINER,
)
from sidecar_state_stack.console_scripts import console_script


def dump(document):
    return yaml.dump(document, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))


SOCKET_URL = "unix:///var/run/sidecar-state/redis.sock"


def template_of(document):
    if document["kind"] == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]
    return document["spec"]["template"]


def container_names(template, key):
    return [c["name"] for c in template["spec"].get(key) or []]


def assert_injected(document):
    template = template_of(document)
    assert container_names(template, "initContainers")[:3] == [
        CREDENTIALS_CONTAINER,
        REDIS_CONTAINER,
        HYDRATOR_CONTAINER,
    ]
    assert "sidecarstate.dev/injected-bindings" in template["metadata"]["annotations"]


def assert_one_line_error(result, *fragments):
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {result.err!r}"
    assert lines[0].startswith("sidecar-state: error: ")
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} missing from {lines[0]!r}"


@pytest.fixture
def seed_files(write_yaml, make_workload, binding_doc):
    """The seed example: a Deployment labelled app=checkout and the feature-flags binding."""
    return write_yaml(make_workload("Deployment")), write_yaml(binding_doc())


# --- injection -------------------------------------------------------------------------------


def test_seed_example_gets_the_sidecars(cli, seed_files):
    manifest, binding = seed_files

    result = cli("inject", "-f", manifest, "-b", binding)

    assert (result.code, result.err) == (0, "")
    (deployment,) = result.documents
    template = template_of(deployment)
    spec = template["spec"]
    credentials, redis, hydrator = spec["initContainers"]
    assert "restartPolicy" not in credentials
    command = redis["command"]
    assert command[command.index("--port") + 1] == "0"
    assert command[command.index("--unixsocket") + 1] == "/var/run/sidecar-state/redis.sock"
    assert command[command.index("--maxmemory") + 1] == str(64 * 2**20)
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--aclfile") + 1] == "/var/run/sidecar-state-credentials/users.acl"
    assert redis["restartPolicy"] == hydrator["restartPolicy"] == "Always"
    assert '"topics":["feature-flags"]' in hydrator["env"][0]["value"]
    assert {"name": "SIDECAR_STATE_REDIS_URL", "value": SOCKET_URL} in spec["containers"][0]["env"]
    assert "sidecar-state-socket" in [v["name"] for v in spec["volumes"]]


def test_rerunning_on_its_own_output_prints_the_same_text(cli, seed_files, write_yaml):
    manifest, binding = seed_files
    first = cli("inject", "-f", manifest, "-b", binding)

    second = cli("inject", "-f", write_yaml(first.out), "-b", binding)

    assert second.code == 0
    assert second.out == first.out


def test_output_has_no_yaml_anchors(cli, seed_files):
    manifest, binding = seed_files

    out = cli("inject", "-f", manifest, "-b", binding).out

    assert "&id" not in out and "*id" not in out


def test_untouched_documents_come_out_unchanged_and_in_order(
    cli, write_yaml, make_workload, make_pod, binding_doc
):
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "checkout"},
        "spec": {"selector": {"app": "checkout"}, "ports": [{"port": 80}]},
    }
    cart = make_workload("Deployment", "cart", template=make_pod(labels={"app": "cart"}))
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
              "data": {"k": "v"}}  # fmt: skip
    manifest = write_yaml(service, cart, make_workload("Deployment"), config)

    result = cli("inject", "-f", manifest, "-b", write_yaml(binding_doc()))

    out_service, out_cart, out_checkout, out_config = result.documents
    assert (out_service, out_cart, out_config) == (service, cart, config)
    assert_injected(out_checkout)


def test_binding_in_another_namespace_does_not_apply(cli, write_yaml, make_workload, binding_doc):
    deployment = make_workload("Deployment", namespace="payments")

    result = cli("inject", "-f", write_yaml(deployment), "-b", write_yaml(binding_doc()))

    assert result.code == 0
    assert result.documents == [deployment]


def test_documents_and_bindings_without_namespace_meet_in_default(
    cli, write_yaml, make_workload, binding_doc
):
    deployment = make_workload("Deployment", namespace=None)

    result = cli("inject", "-f", write_yaml(deployment),
                 "-b", write_yaml(binding_doc(namespace=None)))  # fmt: skip

    assert_injected(result.documents[0])


@pytest.mark.parametrize(
    "kind", ["Job", "CronJob", "StatefulSet", "DaemonSet", "ReplicaSet", "Deployment"]
)
def test_every_workload_kind_is_injected(cli, write_yaml, make_workload, binding_doc, kind):
    result = cli("inject", "-f", write_yaml(make_workload(kind)), "-b", write_yaml(binding_doc()))

    assert result.code == 0, result.err
    assert_injected(result.documents[0])


def test_job_keeps_its_restart_policy(cli, write_yaml, make_workload, binding_doc):
    result = cli("inject", "-f", write_yaml(make_workload("Job")), "-b", write_yaml(binding_doc()))

    assert template_of(result.documents[0])["spec"]["restartPolicy"] == "Never"


def test_bare_pod_is_injected(cli, write_yaml, make_workload, binding_doc):
    result = cli("inject", "-f", write_yaml(make_workload("Pod")), "-b", write_yaml(binding_doc()))

    (pod,) = result.documents
    assert container_names(pod, "initContainers") == [
        CREDENTIALS_CONTAINER,
        REDIS_CONTAINER,
        HYDRATOR_CONTAINER,
    ]


def test_manifest_from_stdin(cli, make_workload, binding_doc, write_yaml):
    manifest = dump(make_workload("Deployment"))

    result = cli("inject", "-f", "-", "-b", write_yaml(binding_doc()), stdin=manifest)

    assert result.code == 0
    assert_injected(result.documents[0])


def test_binding_from_stdin(cli, make_workload, binding_doc, write_yaml):
    result = cli("inject", "-f", write_yaml(make_workload("Deployment")), "-b", "-",
                 stdin=dump(binding_doc()))  # fmt: skip

    assert_injected(result.documents[0])


def test_several_binding_files_serve_one_pod(cli, write_yaml, make_workload, binding_doc):
    prices = binding_doc("prices", topics=["prices"], max_memory="32Mi", prefix="price:")

    result = cli("inject", "-f", write_yaml(make_workload("Deployment")),
                 "-b", write_yaml(binding_doc()), "-b", write_yaml(prices))  # fmt: skip

    annotations = template_of(result.documents[0])["metadata"]["annotations"]
    assert annotations["sidecarstate.dev/injected-bindings"] == "feature-flags,prices"


def test_empty_documents_are_dropped(cli, write_yaml, make_workload, binding_doc):
    text = "---\n" + dump(make_workload("Deployment")) + "---\n---\n"

    result = cli("inject", "-f", write_yaml(text), "-b", write_yaml(binding_doc()))

    assert len(result.documents) == 1


def test_containers_mode_flag(cli, seed_files):
    manifest, binding = seed_files

    result = cli("inject", "-f", manifest, "-b", binding, "--sidecar-mode", "containers")

    template = template_of(result.documents[0])
    assert container_names(template, "containers") == ["app", REDIS_CONTAINER, HYDRATOR_CONTAINER]
    assert container_names(template, "initContainers") == [CREDENTIALS_CONTAINER]


def test_default_flags_apply_to_bindings_that_omit_them(
    cli, write_yaml, make_workload, binding_doc
):
    binding = write_yaml(binding_doc(max_memory=None))

    result = cli("inject", "-f", write_yaml(make_workload("Deployment")), "-b", binding,
                 "--max-memory", "1Gi", "--bootstrap-servers", "k1:9092,k2:9092",
                 "--redis-image", "redis:local", "--hydrator-image", "hydrator:local")  # fmt: skip

    _, redis, hydrator = template_of(result.documents[0])["spec"]["initContainers"]
    assert str(2**30) in redis["command"]
    assert (redis["image"], hydrator["image"]) == ("redis:local", "hydrator:local")
    assert '"bootstrap_servers":["k1:9092","k2:9092"]' in hydrator["env"][0]["value"]


# --- refusals: exit 2, one line --------------------------------------------------------------


def test_invalid_binding_names_file_document_and_field(cli, write_yaml, make_workload, binding_doc):
    binding = write_yaml(binding_doc(topics=[]))

    result = cli("inject", "-f", write_yaml(make_workload("Deployment")), "-b", binding)

    assert_one_line_error(result, f"{binding}: document 1 (StateBinding/feature-flags): ",
                          "spec.source.kafka.topics")  # fmt: skip


def test_invalid_binding_in_a_later_document_is_located(
    cli, write_yaml, make_workload, binding_doc
):
    bad = binding_doc("prices", patch={"spec.store.maxMemory": "lots"})
    binding = write_yaml(binding_doc(), bad)

    result = cli("inject", "-f", write_yaml(make_workload("Deployment")), "-b", binding)

    assert_one_line_error(result, "document 2 (StateBinding/prices)", "spec.store.maxMemory")


def test_non_binding_in_a_binding_file_is_refused(cli, write_yaml, make_workload):
    result = cli("inject", "-f", write_yaml(make_workload("Deployment")),
                 "-b", write_yaml(make_workload("Deployment")))  # fmt: skip

    assert_one_line_error(result, "document 1 (Deployment/checkout)", "not a StateBinding")


def test_binding_without_a_name_is_refused(cli, write_yaml, make_workload, binding_doc):
    nameless = binding_doc(patch={"metadata": {"namespace": "shop"}})

    result = cli("inject", "-f", write_yaml(make_workload("Deployment")),
                 "-b", write_yaml(nameless))  # fmt: skip

    assert_one_line_error(result, "document 1 (StateBinding/?)", "metadata.name")


@pytest.mark.parametrize("broken", ["manifest", "binding"])
def test_invalid_yaml_is_refused(cli, write_yaml, make_workload, binding_doc, broken):
    bad = write_yaml("kind: Deployment\nmetadata: {name: [unclosed\n")
    manifest = bad if broken == "manifest" else write_yaml(make_workload("Deployment"))
    binding = bad if broken == "binding" else write_yaml(binding_doc())

    result = cli("inject", "-f", manifest, "-b", binding)

    assert_one_line_error(result, f"{bad}: not valid YAML")


@pytest.mark.parametrize("missing", ["manifest", "binding"])
def test_missing_file_is_refused(cli, write_yaml, make_workload, binding_doc, tmp_path, missing):
    absent = tmp_path / "absent.yaml"
    manifest = absent if missing == "manifest" else write_yaml(make_workload("Deployment"))
    binding = absent if missing == "binding" else write_yaml(binding_doc())

    result = cli("inject", "-f", manifest, "-b", binding)

    assert_one_line_error(result, f"{absent}: cannot read", "No such file")


def test_stdin_for_both_manifest_and_binding_is_refused(cli):
    assert_one_line_error(cli("inject", "-f", "-", "-b", "-"), "only one of -f and -b")


def test_conflicting_workload_is_refused_naming_the_document(
    cli, write_yaml, make_workload, make_pod, make_container, binding_doc
):
    template = make_pod(containers=[make_container("sidecar-state-redis")])
    manifest = write_yaml({"kind": "ConfigMap", "metadata": {"name": "c"}},
                          make_workload("Deployment", template=template))  # fmt: skip

    result = cli("inject", "-f", manifest, "-b", write_yaml(binding_doc()))

    assert_one_line_error(result, f"{manifest}: document 2 (Deployment/checkout)",
                          "'sidecar-state-redis' is reserved")  # fmt: skip


def test_unknown_named_binding_is_refused(cli, write_yaml, make_workload, make_pod, binding_doc):
    template = make_pod(annotations={"sidecarstate.dev/bindings": "prices"})

    result = cli("inject", "-f", write_yaml(make_workload("Deployment", template=template)),
                 "-b", write_yaml(binding_doc()))  # fmt: skip

    assert_one_line_error(result, "document 1 (Deployment/checkout)", "prices")


def test_bad_default_memory_is_refused(cli, write_yaml, make_workload, binding_doc):
    binding = write_yaml(binding_doc(max_memory=None))

    result = cli("inject", "-f", write_yaml(make_workload("Deployment")), "-b", binding,
                 "--max-memory", "lots")  # fmt: skip

    assert_one_line_error(result, "'lots' is not a Kubernetes quantity")


def test_malformed_workload_is_refused_naming_the_document(
    cli, write_yaml, make_workload, make_pod, binding_doc
):
    template = make_pod()
    template["spec"]["containers"] = {"name": "app", "image": "shop/checkout:1.0"}

    result = cli("inject", "-f", write_yaml(make_workload("Deployment", template=template)),
                 "-b", write_yaml(binding_doc()))  # fmt: skip

    assert_one_line_error(result, "document 1 (Deployment/checkout)", "containers")


def test_missing_required_flag_exits_2(cli, capsys):
    with pytest.raises(SystemExit) as caught:
        cli("inject", "-f", "manifest.yaml")

    assert caught.value.code == 2
    assert "-b/--binding" in capsys.readouterr().err


# --- crd and version -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered_crd():
    return render_crd()


def test_crd_prints_the_generated_crd(cli, rendered_crd):
    result = cli("crd")

    assert (result.code, result.out) == (0, rendered_crd)


def test_crd_write_writes_each_folder(cli, tmp_path, rendered_crd):
    folders = [tmp_path / "crds", tmp_path / "chart" / "crds"]

    result = cli("crd", "--write", *folders)

    assert result.code == 0
    for folder in folders:
        assert (folder / CRD_FILE_NAME).read_text() == rendered_crd
        assert f"wrote {folder / CRD_FILE_NAME}" in result.out


def test_version_prints_the_installed_package_version(cli):
    result = cli("version")

    assert (result.code, result.out, result.err) == (0, f"{__version__}\n", "")
    assert result.out.strip() == importlib.metadata.version("sidecar-state")


# --- the real entry point --------------------------------------------------------------------


def test_installed_entry_point_exits_2_with_one_line(write_yaml, make_workload, binding_doc):
    executable = console_script("sidecar-state")
    binding = write_yaml(binding_doc(topics=["feature flags"]))

    completed = subprocess.run(
        [executable, "inject", "-f", write_yaml(make_workload("Deployment")), "-b", binding],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip

    assert completed.returncode == 2
    assert completed.stdout == ""
    (line,) = completed.stderr.splitlines()
    assert line.startswith(f"sidecar-state: error: {binding}: document 1")
    assert "spec.source.kafka.topics[0]" in line
