"""``make demo-session``: the interceptor on the running demo (after ``make demo``).

Publishes a session (token ``tok-ada``, the user's profile as its value) to the ``sessions``
topic, deploys ``demo/session.yaml`` (a binding with ``spec.intercept`` and the demo app), then
calls the app through Envoy without a token, with it, after the profile changed, and after
the session was deleted (a tombstone). The app only echoes the ``x-user-*`` headers it got.

    python -m demo.session          # needs `make demo` running; `make demo-down` removes all
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from demo.publish import ensure_topic, publish_many

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "demo" / "session.yaml"
TOPIC = "sessions"
TOKEN = "tok-ada"
PORT = 15080
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def publish_session(bootstrap: str, token: str, profile: dict[str, Any] | None) -> float:
    """The session record (``None``: a tombstone, which ends the session); returns the ack."""
    value = None if profile is None else json.dumps({"id": token, **profile}).encode()
    return asyncio.run(publish_many(bootstrap, [(token, value)], topic=TOPIC))  # type: ignore[list-item]


def whoami(ip: str, token: str | None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{ip}:{PORT}/whoami")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _DIRECT.open(request, timeout=5) as response:
            return response.status, response.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().strip()


def _until(ip: str, token: str | None, check: Any, what: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    status, body = whoami(ip, token)
    while time.monotonic() < deadline:
        status, body = whoami(ip, token)
        if check(status, body):
            return f"{status} {body}"
        time.sleep(0.05)
    raise RuntimeError(f"{what}: the last answer was {status} {body!r}")


def manifest() -> str:
    """demo/session.yaml with the demo-app image as built here (the tag follows the version)."""
    from images.build import image_refs

    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    for doc in documents:
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["image"] = image_refs()["demo-app"]
    return yaml.safe_dump_all(documents, sort_keys=False)


def run(*, bootstrap: str, kubectl: Sequence[str]) -> int:
    def k(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            [*kubectl, *args], check=True, capture_output=True, text=True, timeout=200,
            input=stdin,
        ).stdout  # fmt: skip

    say(f"publish session {TOKEN} (Ada, plan pro) to topic {TOPIC}")
    ensure_topic(bootstrap, TOPIC)
    publish_session(bootstrap, TOKEN, {"name": "Ada", "plan": "pro"})
    say("deploy demo/session.yaml: the binding with spec.intercept, then the app")
    k("apply", "-f", "-", stdin=manifest())
    k("rollout", "status", "deployment/session-demo", "-n", "demo", "--timeout=180s")
    pods = json.loads(k("get", "pods", "-n", "demo", "-l", "app=session-demo", "-o", "json"))
    pod = next(p for p in pods["items"] if not p["metadata"].get("deletionTimestamp"))
    ip = pod["status"]["podIP"]
    without = _until(ip, None, lambda s, _: s == 401, "without a token")
    with_token = _until(ip, TOKEN, lambda s, b: s == 200 and '"pro"' in b, "with the token")
    publish_session(bootstrap, TOKEN, {"name": "Ada", "plan": "free"})
    changed = _until(ip, TOKEN, lambda s, b: s == 200 and '"free"' in b, "after the change")
    acked = publish_session(bootstrap, TOKEN, None)
    ended = _until(ip, TOKEN, lambda s, _: s == 401, "after the tombstone")
    lag = (time.time() - acked) * 1000
    print(
        f"""
  Without a token:          {without}
  With Bearer {TOKEN}:     {with_token}
  After the plan changed:   {changed}
  After the session ended:  {ended}   (seen within {lag:.0f} ms of the tombstone's ack)

Poke it:
  curl -i http://{ip}:{PORT}/whoami
  curl -H 'Authorization: Bearer {TOKEN}' http://{ip}:{PORT}/whoami
  {sys.executable} -m demo.session --publish '{{"name": "Ada", "plan": "pro"}}'
Stop everything: make demo-down
""",
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from demo.run import state_file

    # The running demo's record gives the defaults: its broker, its kubectl and kubeconfig.
    path = state_file()
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    parser = argparse.ArgumentParser(prog="python -m demo.session", description=__doc__)
    parser.add_argument(
        "--publish", metavar="JSON", help=f"only publish {TOKEN}'s profile (JSON, or 'none')"
    )
    parser.add_argument(
        "--bootstrap",
        default=state.get("bootstrap") or os.environ.get("SIDECAR_STATE_DEMO_BOOTSTRAP"),
        help="the demo's Kafka (default: the running demo's)",
    )
    parser.add_argument("--kubectl", default=state.get("kubectl") or "kubectl")
    parser.add_argument(
        "--kubeconfig", default=state.get("kubeconfig") or os.environ.get("KUBECONFIG")
    )
    args = parser.parse_args(argv)
    if not args.bootstrap:
        say(f"no demo is running ({path}): `make demo` first, or give --bootstrap")
        return 1
    os.environ.update({"NO_PROXY": "*", "no_proxy": "*"})
    if args.publish is not None:
        profile = None if args.publish == "none" else json.loads(args.publish)
        publish_session(args.bootstrap, TOKEN, profile)
        say(f"published {TOKEN}: {args.publish}")
        return 0
    kubectl = [args.kubectl, *([f"--kubeconfig={args.kubeconfig}"] if args.kubeconfig else [])]
    return run(bootstrap=args.bootstrap, kubectl=kubectl)


if __name__ == "__main__":
    sys.exit(main())
