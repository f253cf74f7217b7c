"""The authorizer's configuration: the contract between the operator and the sidecar.

The operator renders one :class:`AuthorizerConfig` per Pod from the binding's
``spec.intercept`` into ``SIDECAR_STATE_AUTHZ_CONFIG`` (JSON), with every key template already
carrying the binding's ``keys.prefix``; the authorizer never needs to know about bindings.
Like the hydrator's contract it lives on the sidecar's side and the operator imports it, so a
renamed field breaks the type checker, not a running Pod.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_ENV = "SIDECAR_STATE_AUTHZ_CONFIG"
CREDENTIAL_PLACEHOLDER = "{credential}"
#: Sent with every allowed request: how stale the Pod's view is, in milliseconds.
STALENESS_HEADER = "x-sidecar-state-staleness-ms"
#: Names the injected headers whose stored value was too large (or empty after sanitising) and
#: was therefore left out rather than cut: a half JSON document is worse than none.
OMITTED_HEADER = "x-sidecar-state-omitted"
#: What Envoy adds upstream when the authorizer failed and ``failure.mode`` is ``open``.
FAILURE_OPEN_HEADER = "x-envoy-auth-failure-mode-allowed"
#: The HTTP service's way to remove request headers (``stripUpstream``) before the upstream.
HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
#: RFC 9110 field names: the only header names a rule may inject, strip or read.
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9a-z-]{1,256}$"
_POINTER_TOKEN = re.compile(r"^(/([^~/]|~[01])*)*$")


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Response(_Contract):
    """A refusal as the client sees it: status, headers and a body."""

    status: int = Field(default=401, ge=200, le=599)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""


class Credential(_Contract):
    """Where a request carries its credential; ``prefix`` is required and removed."""

    source: Literal["header", "cookie", "query"]
    name: str = Field(min_length=1)
    prefix: str = ""


class Injection(_Contract):
    """One header added to an allowed request.

    ``source`` is ``value`` (the stored value as it is) or ``json:/pointer`` (one field of a
    JSON value, RFC 6901). ``key`` is a fixed key (prefixed); without it the rule's key is read.
    """

    header: str = Field(pattern=HEADER_NAME_PATTERN)
    source: str = "value"
    key: str | None = None

    @model_validator(mode="after")
    def _source_is_known(self) -> Injection:
        if self.source == "value":
            return self
        pointer = self.source.removeprefix("json:")
        if pointer == self.source or not _POINTER_TOKEN.fullmatch(pointer):
            raise ValueError(
                f"inject {self.header}: from must be 'value' or 'json:/pointer' "
                f"(example json:/plan), not {self.source!r}"
            )
        return self

    @property
    def json_pointer(self) -> str | None:
        return None if self.source == "value" else self.source.removeprefix("json:")


class Rule(_Contract):
    name: str = Field(min_length=1)
    path_prefix: str = "/"
    methods: tuple[str, ...] = ()
    credential: Credential | None = None
    #: The key template with the binding's prefix; ``{credential}`` is replaced.
    key: str | None = None
    on_missing_credential: Response = Response(status=401)
    on_missing_key: Literal["deny", "allow"] = "deny"
    missing_key_response: Response = Response(status=401)
    inject: tuple[Injection, ...] = ()
    strip_upstream: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        uses_placeholder = self.key is not None and CREDENTIAL_PLACEHOLDER in self.key
        if self.credential is not None and not uses_placeholder:
            raise ValueError(
                f"rule {self.name}: key must contain {CREDENTIAL_PLACEHOLDER} "
                "when a credential is given"
            )
        if self.credential is None and uses_placeholder:
            raise ValueError(
                f"rule {self.name}: key uses {CREDENTIAL_PLACEHOLDER} but gives no credential"
            )
        for injection in self.inject:
            if injection.key is None and self.key is None:
                raise ValueError(
                    f"rule {self.name}: inject {injection.header} reads the rule's key, "
                    "but the rule has none: give the injection a key"
                )
        return self

    def matches(self, *, method: str, path: str) -> bool:
        return path.startswith(self.path_prefix) and (not self.methods or method in self.methods)


class AuthorizerConfig(_Contract):
    """Everything one authorizer needs; the operator renders it, the sidecar parses it."""

    redis_socket: str = "/var/run/sidecar-state/redis.sock"
    #: Where Envoy's ext_authz cluster connects (a ``pipe:`` address on the shared volume).
    listen_socket: str = "/var/run/sidecar-state/authz.sock"
    #: Also listen on ``127.0.0.1:<port>`` (a mesh's sidecar calls it there); loopback only,
    #: because the answers carry the Pod's data.
    loopback_port: int | None = Field(default=None, ge=1, le=65535)
    #: ``/livez`` and ``/readyz`` for the kubelet; serves nothing else.
    health_port: int | None = Field(default=9465, ge=1, le=65535)
    #: Name every header a rule could inject but this answer did not set in
    #: ``x-envoy-auth-headers-to-remove``, so that a client's forged copy never reaches the app.
    #: For a mesh's Envoy (``mode: istio``), which has no filter of ours removing them first.
    remove_unset_headers: bool = False
    metadata_key: str = "sidecar-state:meta"
    rules: tuple[Rule, ...] = ()
    max_header_bytes: int = Field(default=8192, ge=16)
    max_credential_bytes: int = Field(default=4096, ge=1)
    #: Redis must answer within this; slower is an error (and Envoy's timeout backs it up).
    redis_timeout_ms: int = Field(default=1000, ge=1)

    def to_env_value(self) -> str:
        # Every field, defaults included: an operator and an authorizer of different versions
        # must not silently disagree about a default.
        return self.model_dump_json()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AuthorizerConfig:
        environ = dict(os.environ) if environ is None else environ
        try:
            raw = environ[CONFIG_ENV]
        except KeyError:
            raise SystemExit(
                f"{CONFIG_ENV} is not set: the authorizer is configured by the sidecar-state "
                "operator from a binding's spec.intercept."
            ) from None
        return cls.model_validate_json(raw)

    def injected_headers(self) -> tuple[str, ...]:
        """Every header the authorizer may set upstream: the ones a client must never forge."""
        return self._injected_headers

    @cached_property
    def _injected_headers(self) -> tuple[str, ...]:
        # Computed once: with remove_unset_headers every allowed request reads it.
        names = {STALENESS_HEADER, OMITTED_HEADER, FAILURE_OPEN_HEADER}
        names.update(i.header for rule in self.rules for i in rule.inject)
        return tuple(sorted(names))

    def credential_headers(self) -> tuple[str, ...]:
        """Request headers the authorizer must see (Envoy sends only those it is told to)."""
        names = set()
        for rule in self.rules:
            if rule.credential is None or rule.credential.source == "query":
                continue
            names.add("cookie" if rule.credential.source == "cookie" else rule.credential.name)
        return tuple(sorted(names))
