"""Where each workload kind keeps its pod template, for the CLI and the controller."""

from __future__ import annotations

import copy

import pytest

from sidecar_operator.injection.workloads import pod_template, replace_pod_template

KINDS_AND_PATHS = [
    ("Deployment", ("spec", "template")),
    ("StatefulSet", ("spec", "template")),
    ("DaemonSet", ("spec", "template")),
    ("ReplicaSet", ("spec", "template")),
    ("ReplicationController", ("spec", "template")),
    ("Job", ("spec", "template")),
    ("CronJob", ("spec", "jobTemplate", "spec", "template")),
]


def dig(obj, path):
    for key in path:
        obj = obj[key]
    return obj


@pytest.mark.parametrize(("kind", "path"), KINDS_AND_PATHS)
def test_pod_template_of_each_workload(make_workload, kind, path):
    workload = make_workload(kind)

    template = pod_template(workload)

    assert template is dig(workload, path)
    assert template["metadata"]["labels"] == {"app": "checkout"}


def test_pod_template_of_a_pod_is_the_pod_itself(make_workload):
    pod = make_workload("Pod")

    assert pod_template(pod) is pod


@pytest.mark.parametrize(
    "obj",
    [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "checkout"}, "spec": {}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}},
        {"kind": "Deployment", "metadata": {"name": "no-spec"}},
        {"kind": "Deployment", "spec": {"template": "not a mapping"}},
        {"kind": "CronJob", "spec": {"jobTemplate": None}},
        {"metadata": {"name": "no kind"}},
    ],
    ids=["Service", "ConfigMap", "Deployment without spec", "template not a mapping",
         "CronJob without jobTemplate", "no kind"],
)  # fmt: skip
def test_objects_without_a_pod_template(obj):
    assert pod_template(obj) is None


@pytest.mark.parametrize(("kind", "path"), KINDS_AND_PATHS)
def test_replace_pod_template_returns_a_copy_with_the_new_template(make_workload, kind, path):
    workload = make_workload(kind)
    before = copy.deepcopy(workload)
    new_template = {"metadata": {"labels": {"app": "new"}}, "spec": {"containers": []}}

    replaced = replace_pod_template(workload, new_template)

    assert dig(replaced, path) is new_template
    assert replaced["metadata"] == workload["metadata"]
    assert workload == before, "the original workload was modified"


def test_replace_pod_template_of_a_pod_is_the_new_pod(make_workload):
    new_pod = {"metadata": {"name": "x"}, "spec": {"containers": []}}

    assert replace_pod_template(make_workload("Pod"), new_pod) is new_pod


def test_cronjob_schedule_survives_template_replacement(make_workload):
    cronjob = make_workload("CronJob")

    replaced = replace_pod_template(cronjob, {"metadata": {}, "spec": {}})

    assert replaced["spec"]["schedule"] == cronjob["spec"]["schedule"]
