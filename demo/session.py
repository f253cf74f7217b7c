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


def run(state_path: Path) -> int:
    if not state_path.exists():
        say(f"no demo is running ({state_path}): `make demo` first")
        return 1
    state = json.loads(state_path.read_text())
    kubectl = [state["kubectl"], f"--kubeconfig={state['kubeconfig']}"]
    bootstrap = state["bootstrap"]

    def k(*args: str) -> str:
        return subprocess.run(
            [*kubectl, *args], check=True, capture_output=True, text=True, timeout=200
        ).stdout

    say(f"publish session {TOKEN} (Ada, plan pro) to topic {TOPIC}")
    ensure_topic(bootstrap, TOPIC)
    publish_session(bootstrap, TOKEN, {"name": "Ada", "plan": "pro"})
    say("deploy demo/session.yaml: the binding with spec.intercept, then the app")
    k("apply", "-f", str(MANIFEST))
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
    parser = argparse.ArgumentParser(prog="python -m demo.session", description=__doc__)
    parser.add_argument(
        "--publish", metavar="JSON", help=f"only publish {TOKEN}'s profile (JSON, or 'none')"
    )
    args = parser.parse_args(argv)
    os.environ.update({"NO_PROXY": "*", "no_proxy": "*"})
    from demo.run import state_file

    if args.publish is not None:
        state = json.loads(state_file().read_text())
        profile = None if args.publish == "none" else json.loads(args.publish)
        publish_session(state["bootstrap"], TOKEN, profile)
        say(f"published {TOKEN}: {args.publish}")
        return 0
    return run(state_file())


if __name__ == "__main__":
    sys.exit(main())
