"""The authorizer's decision, as a pure function: rule choice, credentials, keys, headers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sidecar_authz.config import (
    HEADERS_TO_REMOVE,
    OMITTED_HEADER,
    STALENESS_HEADER,
    AuthorizerConfig,
    Credential,
    Injection,
    Response,
    Rule,
)
from sidecar_authz.rules import (
    NOT_HYDRATED,
    Allow,
    Lookup,
    Meta,
    Refuse,
    Request,
    decide,
    json_field,
    plan,
    sanitise,
)

HYDRATED = Meta(hydrated=True, fresh_as_of_ms=1_000)

SESSION = Rule(
    name="session",
    path_prefix="/api",
    methods=("GET", "POST"),
    credential=Credential(source="header", name="authorization", prefix="Bearer "),
    key="app:session:{credential}",
    on_missing_credential=Response(status=401, headers={"www-authenticate": "Bearer"}),
    missing_key_response=Response(status=403, body="unknown session"),
    inject=(
        Injection(header="x-user-profile"),
        Injection(header="x-user-plan", source="json:/plan"),
        Injection(header="x-flag", key="app:flag:new-ui"),
    ),
    strip_upstream=("authorization",),
)


def config(*rules: Rule, max_header_bytes: int = 8192) -> AuthorizerConfig:
    return AuthorizerConfig(rules=rules, max_header_bytes=max_header_bytes)


def request(path: str = "/api/x", method: str = "GET", **headers: str) -> Request:
    return Request(method=method, path=path, headers=headers)


def lookup_of(cfg: AuthorizerConfig, req: Request) -> Lookup:
    planned = plan(cfg, req)
    assert isinstance(planned, Lookup), planned
    return planned


def test_first_matching_rule_wins_and_reads_every_key_in_one_lookup() -> None:
    catch_all = Rule(name="all", inject=(Injection(header="x-other", key="app:other"),))
    cfg = config(SESSION, catch_all)
    planned = lookup_of(cfg, request(authorization="Bearer tok-1"))
    assert planned.rule is SESSION
    assert planned.keys == ("app:session:tok-1", "app:flag:new-ui")
    assert lookup_of(cfg, request(path="/other")).rule is catch_all


def test_method_outside_the_rule_falls_through_to_no_rule_and_only_staleness() -> None:
    cfg = config(SESSION)
    planned = lookup_of(cfg, request(method="DELETE"))
    assert planned.rule is None and planned.keys == ()
    verdict = decide(cfg, planned, values=[], meta=HYDRATED, now_ms=1_250)
    assert verdict == Allow(headers=((STALENESS_HEADER, b"250"),))


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}, {"authorization": "x"}],
)
def test_missing_or_wrongly_prefixed_credential_is_refused_as_configured(
    headers: dict[str, str],
) -> None:
    assert plan(config(SESSION), request(**headers)) == Refuse(
        status=401, headers=(("www-authenticate", "Bearer"),)
    )


def test_prefix_matches_case_insensitively() -> None:
    planned = lookup_of(config(SESSION), request(authorization="bearer tok-2"))
    assert planned.rule_key == "app:session:tok-2"


def test_oversized_credential_is_treated_as_missing() -> None:
    cfg = AuthorizerConfig(rules=(SESSION,), max_credential_bytes=8)
    assert isinstance(plan(cfg, request(authorization="Bearer 123456789")), Refuse)


def test_cookie_and_query_credentials() -> None:
    by_cookie = Rule(
        name="c", credential=Credential(source="cookie", name="sid"), key="s:{credential}"
    )
    by_query = Rule(
        name="q", credential=Credential(source="query", name="token"), key="s:{credential}"
    )
    got = lookup_of(config(by_cookie), request(cookie="theme=dark; sid=abc"))
    assert got.rule_key == "s:abc"
    got = lookup_of(config(by_query), request(path="/x?a=1&token=t%2F9"))
    assert got.rule_key == "s:t/9"
    assert isinstance(plan(config(by_query), request(path="/x?a=1")), Refuse)
    assert config(by_cookie, by_query).credential_headers() == ("cookie",)


def test_allow_enriches_with_value_json_field_fixed_key_strip_and_staleness() -> None:
    cfg = config(SESSION)
    planned = lookup_of(cfg, request(authorization="Bearer t"))
    profile = b'{"name": "Ada", "plan": "pro"}'
    verdict = decide(cfg, planned, values=[profile, b"true"], meta=HYDRATED, now_ms=1_003)
    assert verdict == Allow(
        headers=(
            ("x-user-profile", profile),
            ("x-user-plan", b"pro"),
            ("x-flag", b"true"),
            (HEADERS_TO_REMOVE, b"authorization"),
            (STALENESS_HEADER, b"3"),
        )
    )


def test_missing_key_denies_or_enriches_only() -> None:
    cfg = config(SESSION)
    planned = lookup_of(cfg, request(authorization="Bearer t"))
    assert decide(cfg, planned, values=[None, b"1"], meta=HYDRATED, now_ms=0) == Refuse(
        status=403, body="unknown session"
    )
    lenient = config(SESSION.model_copy(update={"on_missing_key": "allow"}))
    planned = lookup_of(lenient, request(authorization="Bearer t"))
    verdict = decide(lenient, planned, values=[None, b"1"], meta=HYDRATED, now_ms=1_000)
    assert isinstance(verdict, Allow)
    assert dict(verdict.headers) == {
        "x-flag": b"1",
        HEADERS_TO_REMOVE: b"authorization",
        STALENESS_HEADER: b"0",
    }


def test_a_view_that_is_not_hydrated_is_a_failure_not_a_missing_key() -> None:
    cfg = config(SESSION)
    planned = lookup_of(cfg, request(authorization="Bearer t"))
    not_there = Meta(hydrated=False, fresh_as_of_ms=None)
    assert decide(cfg, planned, values=[None, None], meta=not_there, now_ms=0) == NOT_HYDRATED
    assert NOT_HYDRATED.status == 503


def test_unknown_freshness_says_so() -> None:
    verdict = decide(
        config(),
        Lookup(rule=None, keys=(), rule_key=None),
        values=[],
        meta=Meta(hydrated=True, fresh_as_of_ms=None),
        now_ms=5,
    )
    assert verdict == Allow(headers=((STALENESS_HEADER, b"unknown"),))


def test_stored_values_lose_control_characters_and_oversized_ones_are_omitted() -> None:
    cfg = config(SESSION, max_header_bytes=16)
    planned = lookup_of(cfg, request(authorization="Bearer t"))
    forged = b'{"plan": "pro\\r\\nx-admin: 1"}'
    verdict = decide(cfg, planned, values=[forged, b"a\r\nb\x00c"], meta=HYDRATED, now_ms=1_000)
    assert isinstance(verdict, Allow)
    headers = dict(verdict.headers)
    assert headers["x-user-plan"] == b"prox-admin: 1"
    assert headers["x-flag"] == b"abc"
    assert "x-user-profile" not in headers  # 29 bytes > 16
    assert headers[OMITTED_HEADER] == b"x-user-profile"


def test_sanitise_keeps_tabs_and_utf8() -> None:
    assert sanitise(" a\tb\r\n\x7fé ".encode()) == "a\tbé".encode()


@pytest.mark.parametrize(
    ("document", "pointer", "expected"),
    [
        (b'{"a": {"b/c": [1, {"d": "x"}]}}', "/a/b~1c/1/d", b"x"),
        (b'{"a": {"n": 3, "t": true, "o": {"k": "v"}}}', "/a/n", b"3"),
        (b'{"a": {"o": {"k": "v"}}}', "/a/o", b'{"k":"v"}'),
        (b'{"a": null}', "/a", None),
        (b'{"a": 1}', "/b", None),
        (b"[1, 2]", "/5", None),
        (b"not json", "/a", None),
        (b'"whole"', "", b"whole"),
    ],
)
def test_json_field(document: bytes, pointer: str, expected: bytes | None) -> None:
    assert json_field(document, pointer) == expected


def test_rules_are_validated_with_messages_naming_the_rule() -> None:
    with pytest.raises(ValidationError, match="rule r: key must contain"):
        Rule(name="r", credential=Credential(source="header", name="a"), key="fixed")
    with pytest.raises(ValidationError, match="no credential"):
        Rule(name="r", key="s:{credential}")
    with pytest.raises(ValidationError, match="inject x-a reads the rule's key"):
        Rule(name="r", inject=(Injection(header="x-a"),))
    with pytest.raises(ValidationError, match="json:/pointer"):
        Injection(header="x-a", source="plan")


def test_every_header_the_authorizer_can_set_is_listed_for_stripping() -> None:
    assert config(SESSION).injected_headers() == (
        "x-envoy-auth-failure-mode-allowed",
        "x-flag",
        OMITTED_HEADER,
        STALENESS_HEADER,
        "x-user-plan",
        "x-user-profile",
    )


def test_remove_unset_headers_names_every_injectable_header_the_answer_did_not_set() -> None:
    """For a mesh's Envoy, which has no filter of ours dropping forged headers first."""
    mesh = AuthorizerConfig(rules=(SESSION,), remove_unset_headers=True)
    request = Request(method="GET", path="/api/x", headers={"authorization": "Bearer t"})
    lookup = plan(mesh, request)
    assert isinstance(lookup, Lookup)
    # The profile is stored but has no plan field, and the flag is absent: both are removed.
    values = [b'{"name": "Ada"}' if key == lookup.rule_key else None for key in lookup.keys]
    allow = decide(mesh, lookup, values=values, meta=HYDRATED, now_ms=2_000)
    assert isinstance(allow, Allow)
    headers = dict(allow.headers)
    removed = headers[HEADERS_TO_REMOVE].decode().split(", ")
    assert removed == [
        "authorization",
        "x-envoy-auth-failure-mode-allowed",
        "x-flag",
        "x-sidecar-state-omitted",
        "x-user-plan",
    ]
    assert "x-user-profile" in headers and "x-user-profile" not in removed
    # Envoy mode: its header-mutation filter does it; the answer stays as small as before.
    plain = decide(config(SESSION), lookup, values=values, meta=HYDRATED, now_ms=2_000)
    assert isinstance(plain, Allow) and dict(plain.headers)[HEADERS_TO_REMOVE] == b"authorization"


def test_remove_unset_headers_applies_when_no_rule_matches() -> None:
    mesh = AuthorizerConfig(rules=(SESSION,), remove_unset_headers=True)
    lookup = plan(mesh, Request(method="GET", path="/public", headers={}))
    assert isinstance(lookup, Lookup) and lookup.rule is None
    allow = decide(mesh, lookup, values=[], meta=HYDRATED, now_ms=2_000)
    assert isinstance(allow, Allow)
    removed = dict(allow.headers)[HEADERS_TO_REMOVE].decode().split(", ")
    assert {"x-user-profile", "x-user-plan", "x-flag"} <= set(removed)
    assert STALENESS_HEADER not in removed
