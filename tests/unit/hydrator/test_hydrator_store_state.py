"""When a served view can be resumed, and how the probes and logs report."""

from __future__ import annotations

import json
import logging

import pytest

from sidecar_hydrator.health import HealthServer, Metrics, Probes
from sidecar_hydrator.main import JsonFormatter
from sidecar_hydrator.store import StoreState, is_binding_field, offset_field, parse_run_id

GOOD_META = {"hydrated": "1", "run_id": "abc", "generation": "g1"}


@pytest.mark.parametrize(
    ("meta", "offsets", "loss"),
    [
        ({}, {}, "empty"),
        ({}, {"b/t/0": 3}, "empty"),
        ({"staleness_ms": "5"}, {}, "not_hydrated"),
        ({"hydrated": "1", "run_id": "old"}, {"b/t/0": 3}, "run_id_changed"),
        (GOOD_META, {}, "offsets_missing"),
        (GOOD_META, {"b/t/0": 3}, None),
    ],
)
def test_loss_reason(meta: dict[str, str], offsets: dict[str, int], loss: str | None) -> None:
    state = StoreState(run_id="abc", meta=meta, offsets=offsets, sentinel="g1")
    assert state.loss() == loss


@pytest.mark.parametrize(
    ("sentinel", "meta", "wrong_type"),
    [
        (None, GOOD_META, False),  # the sentinel was deleted (or flushed, and meta rewritten)
        ("g0", GOOD_META, False),  # a sentinel of another view
        ("g1", {"hydrated": "1", "run_id": "abc"}, False),  # metadata without a generation
        ("g1", GOOD_META, True),  # a bookkeeping key written over with another type
    ],
)
def test_a_view_that_disagrees_with_its_sentinel_is_damaged(
    sentinel: str | None, meta: dict[str, str], wrong_type: bool
) -> None:
    state = StoreState(
        run_id="abc", meta=meta, offsets={"b/t/0": 3}, sentinel=sentinel, wrong_type=wrong_type
    )
    assert state.loss() == "damaged"
    assert state.generation is None


def test_offset_fields_are_per_binding() -> None:
    field = offset_field("flags", "feature-flags", 3)
    assert field == "flags/feature-flags/3"
    assert is_binding_field(field, "flags")
    assert not is_binding_field(field, "flag")


def test_parse_run_id() -> None:
    info = b"# Server\r\nredis_version:7.0.15\r\nrun_id:0123abcd\r\ntcp_port:0\r\n"
    assert parse_run_id(info) == "0123abcd"


def server(*, ready: bool, started: bool) -> HealthServer:
    return HealthServer(
        metrics=Metrics(), probes=Probes(ready=lambda: ready, started=lambda: started), port=0
    )


def test_probe_routes() -> None:
    cold = server(ready=False, started=False)
    warm = server(ready=True, started=True)
    assert cold.respond(b"GET /livez HTTP/1.1")[0] == "200 OK"
    assert cold.respond(b"GET /readyz HTTP/1.1")[0].startswith("503")
    assert cold.respond(b"GET /startupz HTTP/1.1")[0].startswith("503")
    assert warm.respond(b"GET /readyz?verbose HTTP/1.1")[0] == "200 OK"
    assert warm.respond(b"GET /startupz HTTP/1.1")[0] == "200 OK"
    assert warm.respond(b"GET /nope HTTP/1.1")[0].startswith("404")
    assert warm.respond(b"POST /readyz HTTP/1.1")[0].startswith("405")


def test_metrics_route_exposes_the_documented_series() -> None:
    metrics = Metrics()
    metrics.bad_records.labels(binding="b", source="nats", kind="not_json").inc(2)
    status, content_type, body = HealthServer(
        metrics=metrics, probes=Probes(ready=lambda: True, started=lambda: True), port=0
    ).respond(b"GET /metrics HTTP/1.1")
    assert status == "200 OK" and content_type.startswith("text/plain")
    text = body.decode()
    assert (
        'sidecar_state_hydrator_bad_records_total{binding="b",kind="not_json",source="nats"} 2.0'
        in text
    )
    for name in (
        "records_applied_total",
        "lag_records",
        "last_apply_age_seconds",
        "staleness_seconds",
        "rebuilds_total",
        "redis_used_memory_bytes",
        "redis_oom_rejections_total",
        "hydrated",
    ):
        assert f"sidecar_state_hydrator_{name}" in text


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "x", "levelname": "WARNING", "msg": "skipped %s", "args": ("r",), "offset": 7}
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "skipped r" and line["level"] == "warning" and line["offset"] == 7


def test_unknown_staleness_and_last_apply_age_have_no_sample_not_minus_one() -> None:
    metrics = Metrics()
    text = metrics.render().decode()
    assert "# TYPE sidecar_state_hydrator_staleness_seconds gauge" in text
    assert "\nsidecar_state_hydrator_staleness_seconds " not in text
    assert "\nsidecar_state_hydrator_last_apply_age_seconds " not in text
    metrics.staleness_source = lambda: 2.5
    metrics.mark_applied(1.0)
    text = metrics.render().decode()
    assert "\nsidecar_state_hydrator_staleness_seconds 2.5\n" in text
    assert "\nsidecar_state_hydrator_last_apply_age_seconds " in text
