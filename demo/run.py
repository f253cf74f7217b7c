"""``make demo`` / ``make demo-down``: the feature-flag demo on a kind cluster on this machine.

Why a Python runner rather than Makefile recipes: ``up`` starts a cluster and a Kafka broker that
must outlive it, records them, and cleans up what it started if a later step fails; ``down``
must stop exactly those. The cluster is made the way the node scenarios' is
(``tools/localkube/kind/cluster.py``: the Dockerfile images loaded, the chart installed with its
default image names), under a name of its own, so the demo runs what the scenarios prove.

    python -m demo.run up     # build (cached), start everything, deploy, flip a flag, measure
    python -m demo.run up --source nats   # the same app, its flags from a NATS KV bucket
    python -m demo.run down   # stop and remove everything ``up`` started
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from demo.publish import TOPIC, ensure_topic, publish
from images.build import image_refs
from localkube.access import ClusterAccess
from localkube.build import Binaries, bin_dir
from localkube.cache import cache_root
from localkube.kind import cluster as kind_cluster
from sidecar_state_stack.objects import wait_reconciled
from sidecar_state_stack.operator_process import OPERATOR_NAMESPACE, ChartOperator

REPO = Path(__file__).resolve().parents[1]
BINDING = REPO / "demo" / "binding.yaml"
APP = REPO / "demo" / "app.yaml"
FLAG = "new-ui-layout"
_NO_PROXY = {"NO_PROXY": "*", "no_proxy": "*"}
#: Its own name, so ``make test`` leaves it be; the Pod subnet is the one the node image's CNI
#: config hands out (10.245.0.0/16), so the suite's cluster and the demo's are not up at once.
DEMO_CLUSTER = kind_cluster.KindCluster(name="sidecar-state-demo")


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def workdir() -> Path:
    return cache_root() / "demo"


def state_file() -> Path:
    return workdir() / "demo-state.json"


def _start_kafka(node_ip: str, directory: Path) -> tuple[int, str]:
    """A broker on the address Pods reach this host at, in its own session; (pid, bootstrap)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "kafka-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar_state_stack.kafka_broker", "run", "--host", node_ip],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    pattern = re.compile(rf"^{re.escape(node_ip)}:\d+$", re.M)
    while time.monotonic() < deadline:
        found = pattern.search(log.read_text(errors="replace"))
        if found:
            return proc.pid, found.group(0)
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the Kafka broker did not start:\n{tail}")


def _http(url: str) -> str:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return str(response.read().decode().strip())
    except urllib.error.HTTPError as error:
        return f"({error.code}: {error.read().decode().strip()})"
    except OSError as error:
        return f"({error})"


def _wait_answer(url: str, want: str, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _http(url) == want:
            return time.time()
        time.sleep(0.005)
    raise RuntimeError(f"{url} never answered {want!r} (last: {_http(url)!r})")


def _app_manifest() -> str:
    """demo/app.yaml with the demo-app image as built here (the tag follows the version)."""
    app = yaml.safe_load(APP.read_text())
    app["spec"]["template"]["spec"]["containers"][0]["image"] = image_refs()["demo-app"]
    return yaml.safe_dump(app)


def _start_nats(
    host: str, work: Path, state: dict[str, Any]
) -> tuple[Callable[[bool], float], str]:
    """``--source nats``: a nats-server where Pods reach this host and the flag in its KV bucket;
    returns the function that flips the flag, and the same binding reading the bucket."""
    from demo import publish_nats

    pid, url = publish_nats.start_server(host, work / "nats")
    state.update(nats_pid=pid, nats=url)
    publish_nats.put(url, FLAG, False)
    docs = list(yaml.safe_load_all(BINDING.read_text()))
    docs[-1]["spec"]["source"] = {
        "nats": {"servers": [url], "kv": {"bucket": publish_nats.BUCKET}, "format": "json"}
    }
    return lambda enabled: publish_nats.put(url, FLAG, enabled), yaml.safe_dump_all(docs)


def _stop_kafka(state: dict[str, Any]) -> None:
    for key in ("nats_pid", "kafka_pid"):
        _stop_group(state.get(key))


def _stop_group(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def up(*, keep_on_failure: bool = False, source: str = "kafka") -> int:
    started = time.monotonic()
    if state_file().exists():
        say("a demo is already recorded; `make demo-down` first (or it was left by a crash)")
        return 1
    work = workdir()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    state: dict[str, Any] = {"cluster": DEMO_CLUSTER.name}

    def save() -> None:
        state_file().write_text(json.dumps(state, indent=2) + "\n")

    save()
    try:
        say("step 1/5: kind cluster, the Dockerfile images loaded, the chart installed (cached")
        say("          builds; a cold machine takes ~30 minutes)")
        kubeconfig = kind_cluster.up(kind_cluster=DEMO_CLUSTER)
        binaries = Binaries.in_dir(bin_dir())
        cluster = ClusterAccess(
            kubeconfig=kubeconfig, kubectl=binaries.kubectl, helm=binaries.helm, existing=True
        )
        # `make demo-session` and the printed commands reach this cluster through these.
        state.update(kubeconfig=str(kubeconfig), kubectl=str(binaries.kubectl))
        save()
        say("step 2/5: Kafka broker on the address Pods reach this host at")
        kafka_pid, bootstrap = _start_kafka(kind_cluster.gateway_address(), work / "kafka")
        state.update(kafka_pid=kafka_pid, bootstrap=bootstrap)
        save()
        ensure_topic(bootstrap, TOPIC)
        publish(bootstrap, FLAG, False)
        flip: Callable[[bool], float] = lambda enabled: publish(bootstrap, FLAG, enabled)  # noqa: E731
        binding = BINDING.read_text()
        if source == "nats":
            say("step 2/5: and a nats-server there, the flag in a KV bucket")
            flip, binding = _start_nats(kind_cluster.gateway_address(), work, state)
            save()
        say("step 3/5: the chart's operator pointed at the broker")
        cluster.helm_run(
            "upgrade", kind_cluster.RELEASE, str(REPO / "charts" / "sidecar-state"),
            "-n", OPERATOR_NAMESPACE, "--reuse-values", "--wait", "--timeout", "5m",
            "--set", f"kafka.bootstrapServers={{{bootstrap}}}",
            # The demo watches status move; the default 15 s is for production.
            "--set", "controller.watchdogIntervalSeconds=2",
        )  # fmt: skip
        ChartOperator(cluster=cluster).wait_ready()
        say("step 4/5: deploy the demo binding and app, wait until Ready")
        cluster.kubectl_run("apply", "-f", "-", input=binding)
        # Until the operator has seen the binding, a new Pod would start uninjected (and then
        # be rolled); wait for its status first.
        wait_reconciled(cluster, "feature-flags", "demo")
        cluster.kubectl_run("apply", "-f", "-", input=_app_manifest())
        cluster.kubectl_run(
            "rollout", "status", "deployment/flags-demo", "-n", "demo", "--timeout=180s",
            timeout=190,
        )  # fmt: skip
        pods = cluster.kubectl_json("get", "pods", "-n", "demo", "-l", "app=flags-demo")["items"]
        pod = next(p for p in pods if not p["metadata"].get("deletionTimestamp"))
        ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
        url = f"http://{ip}:8080/"
        say("step 5/5: flip the flag and measure")
        before = _http(url)
        acked = flip(True)
        seen = _wait_answer(url, "Showing New Layout")
        after = _http(url)
    except BaseException:
        save()
        if keep_on_failure:
            say(f"start failed: everything kept for inspection ({work}); `make demo-down`")
        else:
            say("start failed: removing what was started")
            down()
        raise
    state["pod"] = {"name": name, "ip": ip}
    save()
    kubectl = binaries.kubectl
    publish_hint = (
        f"{sys.executable} -m demo.publish_nats {FLAG} false --server {state['nats']}"
        if source == "nats"
        else f"{sys.executable} -m demo.publish {FLAG} false --bootstrap {bootstrap}"
    )
    print(
        f"""
  Before the flip:  {before}
  After the flip:   {after}
  Lag ({"NATS KV put" if source == "nats" else "Kafka"} ack -> the app answers differently): \
{(seen - acked) * 1000:.0f} ms
  Up in {time.monotonic() - started:.0f} s.

Poke it:
  curl http://{ip}:8080/          # the answer
  curl http://{ip}:8080/flags     # every flag and the hydrator's metadata
  curl http://{ip}:9464/metrics   # the hydrator's metrics
  {publish_hint}
  export KUBECONFIG={kubeconfig}
  {kubectl} get statebindings,pods -n demo
  {kubectl} logs -n demo {name} -c sidecar-state-hydrator
Stop everything: make demo-down
""",
        flush=True,
    )
    return 0


def down() -> int:
    path = state_file()
    if not path.exists():
        say(f"no demo recorded ({path}); nothing to stop")
        return 0
    state: dict[str, Any] = json.loads(path.read_text())
    _stop_kafka(state)
    kind_cluster.down(kind_cluster=DEMO_CLUSTER)
    path.unlink(missing_ok=True)
    shutil.rmtree(workdir(), ignore_errors=True)
    say("demo removed (the brokers stopped, the kind cluster deleted)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.run", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--keep-on-failure", action="store_true", help="for debugging `up`")
    parser.add_argument(
        "--source", choices=["kafka", "nats"], default="kafka",
        help="where the flags come from: a Kafka topic, or a NATS KV bucket (SOURCE=nats)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.update(_NO_PROXY)
    if args.command == "down":
        return down()
    return up(keep_on_failure=args.keep_on_failure, source=args.source)


if __name__ == "__main__":
    sys.exit(main())
