"""How the hydrator names why it is not hydrated: one vocabulary for Kafka and NATS, the
probes' bodies, and the credentials read from a Secret that may be corrected in place."""

from __future__ import annotations

import ssl
from pathlib import Path

import nats.errors
import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from sidecar_hydrator.config import KafkaConnection
from sidecar_hydrator.health import HealthServer, Metrics, Probes
from sidecar_hydrator.kafka_source import bootstrap_problem, topics_problem
from sidecar_hydrator.nats_source import connection_problem
from sidecar_hydrator.reasons import (
    CONDITION_REASONS,
    FIXES,
    PRIORITY,
    Problem,
    Reason,
    State,
    parse_body,
    progress_detail,
    worst,
)

SERVERS = "kafka.data.svc:9092"


def test_every_reason_has_a_rank_a_condition_reason_and_a_fix():
    assert set(PRIORITY) == set(Reason) and len(PRIORITY) == len(Reason)
    assert set(CONDITION_REASONS) == set(Reason)
    assert all(FIXES[r] for r in Reason if r is not Reason.HYDRATED)


def test_the_worst_problem_wins():
    problems = [
        Problem(Reason.HYDRATING, "read 1 of 2 records (50%)"),
        Problem(Reason.TOPIC_MISSING, "topic a does not exist"),
        Problem(Reason.STORE_FULL, "Redis refused 3 key writes"),
    ]

    assert worst(problems) == problems[2]
    assert worst([]) is None


@pytest.mark.parametrize(
    ("error", "reason", "said"),
    [
        (SaslAuthenticationFailed("Authentication failed: Invalid username or password"),
         Reason.AUTHENTICATION_FAILED, f"{SERVERS} refused the credentials: Authentication "
         "failed: Invalid username or password"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"),
         Reason.AUTHENTICATION_FAILED, f"the TLS certificate of {SERVERS} does not verify"),
        (KafkaConnectionError("Unable to bootstrap"), Reason.UNREACHABLE,
         f"no Kafka broker answers at {SERVERS} (Unable to bootstrap)"),
        (ConnectionRefusedError(111, "Connection refused"), Reason.UNREACHABLE,
         f"no Kafka broker answers at {SERVERS}"),
        (None, Reason.UNREACHABLE, f"no Kafka broker answers at {SERVERS}"),
    ],
)  # fmt: skip
def test_kafka_bootstrap_failures_are_named(
    error: BaseException | None, reason: Reason, said: str
) -> None:
    problem = bootstrap_problem(error, servers=SERVERS)

    assert problem.reason is reason
    assert problem.detail.startswith(said)


def test_kafka_topics_that_cannot_be_read_are_named():
    missing = topics_problem(missing=["feature-flagz"], unauthorized=[], servers=SERVERS)
    both = topics_problem(missing=["a", "b"], unauthorized=["c"], servers=SERVERS)

    assert missing == Problem(
        Reason.TOPIC_MISSING, f"topic feature-flagz does not exist on {SERVERS}"
    )
    assert both == Problem(
        Reason.AUTHORIZATION_FAILED, f"not authorized to read topic c on {SERVERS}"
    )
    assert topics_problem(missing=["a", "b"], unauthorized=[], servers=SERVERS).detail == (
        f"topics a, b do not exist on {SERVERS}"
    )


def test_nats_errors_map_onto_the_same_reasons():
    servers = "nats://nats.data.svc:4222"

    refused = connection_problem(nats.errors.AuthorizationError(), servers=servers)
    denied = connection_problem(
        nats.errors.Error("nats: permissions violation for subscription to x"), servers=servers
    )
    gone = connection_problem(nats.errors.NoServersError(), servers=servers)

    assert refused.reason is Reason.AUTHENTICATION_FAILED
    assert denied.reason is Reason.AUTHORIZATION_FAILED
    assert gone.reason is Reason.UNREACHABLE and servers in gone.detail


def test_progress_is_in_records_and_percent():
    assert progress_detail(read=1200, target=5000) == "read 1200 of 5000 records (24%)"
    assert progress_detail(read=0, target=0) == "read 0 of 0 records (100%)"
    assert State(Reason.HYDRATING, read_records=1, target_records=3).percent == 33


def test_a_failing_probe_says_why_and_the_body_reads_back():
    state = State(Reason.TOPIC_MISSING, f"topic feature-flagz does not exist on {SERVERS}")
    cold = HealthServer(
        metrics=Metrics(),
        probes=Probes(ready=lambda: False, started=lambda: False, state=lambda: state),
        port=0,
    )

    for path in (b"/readyz", b"/startupz"):
        status, _, body = cold.respond(b"GET " + path + b" HTTP/1.1")
        assert status.startswith("503")
        assert body == f"topic_missing: topic feature-flagz does not exist on {SERVERS}\n".encode()
        assert parse_body(body.decode()) == (Reason.TOPIC_MISSING, state.detail)
    assert parse_body("hydrated\n") == (Reason.HYDRATED, "")
    assert parse_body("") is None and parse_body("not hydrated\n") is None


def test_sasl_credentials_are_read_from_the_mounted_secret_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_USER", "from-env")
    monkeypatch.setenv("KAFKA_PASSWORD", "old")
    password = tmp_path / "password"
    conn = KafkaConnection(
        bootstrap_servers=(SERVERS,), security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN", username_env="KAFKA_USER", password_env="KAFKA_PASSWORD",
        username_file=str(tmp_path / "username"), password_file=str(password),
    )  # fmt: skip

    assert (conn.username(), conn.password()) == ("from-env", "old")  # no files (yet)
    password.write_text("corrected\n")  # the kubelet updates a mounted Secret in place
    assert conn.password() == "corrected"


def test_credential_files_without_sasl_are_refused():
    with pytest.raises(ValueError, match="password_file given with security_protocol SSL"):
        KafkaConnection(bootstrap_servers=(SERVERS,), security_protocol="SSL",
                        password_file="/x/password")  # fmt: skip
