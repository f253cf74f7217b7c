"""The sidecars are built once per distinct plan: every later Pod of that plan gets the very
same containers and digest, as objects of its own."""

from __future__ import annotations

import pytest

from sidecar_operator.injection import InjectionConflict, InjectionDefaults, decide, render
from sidecar_operator.injection.names import HYDRATOR_CONTAINER
from sidecar_operator.injection.pod import build_sidecars, config_hash, sidecars_and_digest


def _plan(pod, binding, defaults=None):
    decision = decide(pod, bindings=[binding], namespace="shop",
                      defaults=defaults or InjectionDefaults())  # fmt: skip
    assert decision.plan is not None
    return decision.plan


def test_the_memo_answers_what_building_answers(make_pod, make_binding):
    plan = _plan(make_pod(), make_binding())
    built = build_sidecars(plan=plan.sidecars, defaults=plan.defaults, intercept=plan.intercept)

    for _ in range(2):  # the first call builds, the second reads the memo
        ours, digest = sidecars_and_digest(plan=plan.sidecars, defaults=plan.defaults,
                                           intercept=plan.intercept)  # fmt: skip
        assert (ours.setup, ours.running, ours.volumes) == (
            built.setup, built.running, built.volumes,
        )  # fmt: skip
        assert digest == config_hash([*built.setup, *built.running], built.volumes)


def test_a_changed_render_leaves_the_next_one_as_it_was(make_pod, make_binding):
    binding = make_binding()
    first = render(decide(make_pod(), bindings=[binding], namespace="shop",
                          defaults=InjectionDefaults()))  # fmt: skip
    expected = render(decide(make_pod(), bindings=[binding], namespace="shop",
                             defaults=InjectionDefaults())).pod  # fmt: skip
    for container in first.pod["spec"]["initContainers"]:
        container["image"] = "changed"
        container.setdefault("env", []).append({"name": "CHANGED", "value": "1"})
        container["volumeMounts"].clear()
    first.pod["spec"]["volumes"].clear()

    again = render(decide(make_pod(), bindings=[binding], namespace="shop",
                          defaults=InjectionDefaults()))  # fmt: skip

    assert again.pod == expected
    assert again.config_hash == first.config_hash


def test_different_plans_get_their_own_sidecars(make_pod, make_binding):
    small = _plan(make_pod(), make_binding(max_memory="64Mi"))
    large = _plan(make_pod(), make_binding(max_memory="128Mi"))

    small_ours, small_digest = sidecars_and_digest(plan=small.sidecars, defaults=small.defaults,
                                                   intercept=small.intercept)  # fmt: skip
    large_ours, large_digest = sidecars_and_digest(plan=large.sidecars, defaults=large.defaults,
                                                   intercept=large.intercept)  # fmt: skip

    assert small_digest != large_digest
    assert small_ours.running != large_ours.running


def test_other_defaults_get_their_own_sidecars(make_pod, make_binding):
    binding = make_binding()
    plain = _plan(make_pod(), binding)
    other = _plan(make_pod(), binding, InjectionDefaults(hydrator_image="registry.example/h:2"))

    ours, _ = sidecars_and_digest(plan=other.sidecars, defaults=other.defaults,
                                  intercept=other.intercept)  # fmt: skip
    plain_ours, _ = sidecars_and_digest(plan=plain.sidecars, defaults=plain.defaults,
                                        intercept=plain.intercept)  # fmt: skip

    def image(sidecars):
        return next(c["image"] for c in sidecars.running if c["name"] == HYDRATOR_CONTAINER)

    assert image(ours) == "registry.example/h:2"
    assert image(plain_ours) == InjectionDefaults().hydrator_image


def test_a_changed_binding_gets_a_plan_of_its_own(make_pod, make_binding):
    before = _plan(make_pod(), make_binding(max_memory="64Mi", prefix="flag:"))
    # The index parses every version of a binding anew: a changed one is another object.
    after = _plan(make_pod(), make_binding(max_memory="64Mi", prefix="feature:"))

    assert before.bindings_hash != after.bindings_hash
    prefixes = [b.keys.prefix for b in after.sidecars.hydrator_config.bindings]
    assert prefixes == ["feature:"]


def test_the_same_binding_objects_share_one_plan(make_pod, make_binding):
    binding = make_binding()

    first, second = _plan(make_pod(), binding), _plan(make_pod(name="other"), binding)

    assert first.sidecars is second.sidecars
    assert first.bindings_hash == second.bindings_hash


def test_overlapping_bindings_are_refused_every_time(make_pod, make_binding):
    both = [make_binding("a", prefix="flag:"), make_binding("b", prefix="flag:x")]
    for _ in range(2):
        with pytest.raises(InjectionConflict, match="overlap"):
            decide(make_pod(), bindings=both, namespace="shop", defaults=InjectionDefaults())
