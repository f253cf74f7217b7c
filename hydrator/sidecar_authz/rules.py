"""The decision, without I/O: which rule applies, what to read, what to answer.

Two steps, so that the Redis round trip sits between them and stays one round trip:
:func:`plan` turns a request into a :class:`Refuse` (nothing to read) or a :class:`Lookup`
(every key the answer depends on, read in one pipeline); :func:`decide` turns what Redis
returned into an :class:`Allow` (headers for the upstream) or a :class:`Refuse`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from sidecar_authz.config import (
    CREDENTIAL_PLACEHOLDER,
    HEADERS_TO_REMOVE,
    OMITTED_HEADER,
    STALENESS_HEADER,
    AuthorizerConfig,
    Credential,
    Response,
    Rule,
)

#: Control characters (CR and LF above all: a header value with them would split the
#: response) are deleted from stored values; horizontal tab is legal in a field value.
_CONTROL = bytes(c for c in range(32) if c != 9) + b"\x7f"


@dataclass(frozen=True, slots=True)
class Request:
    """What Envoy's check request tells us: header names are lower case."""

    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


@dataclass(frozen=True, slots=True)
class Lookup:
    """The keys to read (each once, in order) for ``rule``; ``rule_key`` is its own key."""

    rule: Rule | None
    keys: tuple[str, ...]
    rule_key: str | None


@dataclass(frozen=True, slots=True)
class Allow:
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Meta:
    """The fields of the hydrator's metadata hash the answer depends on."""

    hydrated: bool
    fresh_as_of_ms: int | None


#: The view is not there yet (or was lost with a Redis restart): a missing key would be a lie.
NOT_HYDRATED = Refuse(status=503, body="sidecar-state: the Pod's view is not hydrated\n")


def plan(config: AuthorizerConfig, request: Request) -> Refuse | Lookup:
    """First matching rule wins; no matching rule means "pass, with the staleness only"."""
    path = request.path.split("?", 1)[0]
    rule = next((r for r in config.rules if r.matches(method=request.method, path=path)), None)
    if rule is None:
        return Lookup(rule=None, keys=(), rule_key=None)
    rule_key = rule.key
    if rule.credential is not None and rule_key is not None:
        credential = extract_credential(rule.credential, request)
        if credential is None or len(credential.encode()) > config.max_credential_bytes:
            return _refusal(rule.on_missing_credential)
        rule_key = rule_key.replace(CREDENTIAL_PLACEHOLDER, credential)
    keys = [] if rule_key is None else [rule_key]
    for injection in rule.inject:
        if injection.key is not None and injection.key not in keys:
            keys.append(injection.key)
    return Lookup(rule=rule, keys=tuple(keys), rule_key=rule_key)


def decide(
    config: AuthorizerConfig,
    lookup: Lookup,
    *,
    values: Sequence[bytes | None],
    meta: Meta,
    now_ms: int,
) -> Allow | Refuse:
    """``values`` are the stored values of ``lookup.keys``, in order (``None``: no such key)."""
    if not meta.hydrated:
        return NOT_HYDRATED
    found = dict(zip(lookup.keys, values, strict=True))
    headers: list[tuple[str, bytes]] = []
    omitted: list[str] = []
    rule = lookup.rule
    if rule is not None:
        key_missing = lookup.rule_key is not None and found.get(lookup.rule_key) is None
        if key_missing and rule.on_missing_key == "deny":
            return _refusal(rule.missing_key_response)
        for injection in rule.inject:
            raw = found.get(injection.key or lookup.rule_key or "")
            if raw is None:
                continue
            pointer = injection.json_pointer
            value = raw if pointer is None else json_field(raw, pointer)
            if value is None:
                continue
            clean = sanitise(value)
            if not clean or len(clean) > config.max_header_bytes:
                omitted.append(injection.header)
                continue
            headers.append((injection.header, clean))
    if omitted:
        headers.append((OMITTED_HEADER, ", ".join(omitted).encode()))
    removed = list(rule.strip_upstream) if rule is not None else []
    if config.remove_unset_headers:
        given = {name for name, _ in headers}
        given.add(STALENESS_HEADER)  # always set, below
        removed += [name for name in config.injected_headers() if name not in given]
    if removed:
        headers.append((HEADERS_TO_REMOVE, ", ".join(removed).encode()))
    staleness = (
        b"unknown"
        if meta.fresh_as_of_ms is None
        else str(max(0, now_ms - meta.fresh_as_of_ms)).encode()
    )
    headers.append((STALENESS_HEADER, staleness))
    return Allow(headers=tuple(headers))


def extract_credential(credential: Credential, request: Request) -> str | None:
    """The credential without its prefix; ``None`` when absent, empty or wrongly prefixed."""
    raw: str | None
    if credential.source == "header":
        raw = request.headers.get(credential.name.lower())
    elif credential.source == "cookie":
        raw = _cookie(request.headers.get("cookie"), credential.name)
    else:
        raw = _query_parameter(request.path, credential.name)
    if raw is None:
        return None
    if credential.prefix:
        # Authorization schemes are case-insensitive (RFC 9110 11.1): "bearer x" is "Bearer x".
        if raw[: len(credential.prefix)].lower() != credential.prefix.lower():
            return None
        raw = raw[len(credential.prefix) :]
    value = raw.strip()
    return value or None


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return None if morsel is None else morsel.value


def _query_parameter(path: str, name: str) -> str | None:
    _, _, query = path.partition("?")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            return value
    return None


def json_field(raw: bytes, pointer: str) -> bytes | None:
    """The RFC 6901 ``pointer`` into a JSON document: strings as they are, anything else as
    compact JSON; ``None`` when the value is not JSON, the field is absent, or it is null."""
    try:
        node: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            if token not in node:
                return None
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    if node is None:
        return None
    if isinstance(node, str):
        return node.encode()
    return json.dumps(node, separators=(",", ":"), ensure_ascii=False).encode()


def sanitise(value: bytes) -> bytes:
    """A stored value made safe as a header value: control characters deleted, trimmed."""
    return value.translate(None, _CONTROL).strip(b" \t")


def _refusal(response: Response) -> Refuse:
    return Refuse(
        status=response.status,
        headers=tuple(sorted(response.headers.items())),
        body=response.body,
    )
