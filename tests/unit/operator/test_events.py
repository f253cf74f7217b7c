"""Events on bindings: built as core/v1 objects, coalesced so a burst makes one API call."""

from __future__ import annotations

import datetime as dt

from sidecar_operator.events import Event, ObjectRef, build_event, coalesce

FLAGS = ObjectRef(api_version="sidecarstate.dev/v1alpha1", kind="StateBinding",
                  name="flags", namespace="shop", uid="u-1")  # fmt: skip
PRICES = ObjectRef(api_version="sidecarstate.dev/v1alpha1", kind="StateBinding",
                   name="prices", namespace="shop", uid="u-2")  # fmt: skip


def injected(target: ObjectRef, pod: str) -> Event:
    return Event(target=target, type="Normal", reason="Injected",
                 message=f"Pod {pod}: sidecars injected (config abc)")  # fmt: skip


def test_a_single_event_is_posted_as_it_is():
    assert coalesce([injected(FLAGS, "a")]) == [injected(FLAGS, "a")]


def test_a_burst_becomes_one_event_per_binding_and_reason():
    burst = [injected(FLAGS, f"p{i}") for i in range(8)] + [injected(PRICES, "q")]

    merged = coalesce(burst)

    assert [(e.target.name, e.reason) for e in merged] == [("flags", "Injected"),
                                                           ("prices", "Injected")]  # fmt: skip
    flags = merged[0].message
    assert flags.startswith("8 Pods: Pod p0: sidecars injected")
    assert "Pod p4" in flags and "Pod p5" not in flags and flags.endswith("and 3 more")


def test_different_reasons_stay_apart():
    skipped = Event(target=FLAGS, type="Normal", reason="Skipped", message="Pod x: opted out")

    assert len(coalesce([injected(FLAGS, "a"), skipped])) == 2


def test_event_object_points_at_the_binding():
    now = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)

    body = build_event(injected(FLAGS, "a"), now=now, host="op-1")

    assert body["involvedObject"] == {"apiVersion": "sidecarstate.dev/v1alpha1",
                                      "kind": "StateBinding", "name": "flags",
                                      "namespace": "shop", "uid": "u-1"}  # fmt: skip
    assert body["metadata"] == {"generateName": "flags.", "namespace": "shop"}
    assert (body["type"], body["reason"], body["firstTimestamp"]) == (
        "Normal", "Injected", "2026-11-28T12:00:00Z")  # fmt: skip
