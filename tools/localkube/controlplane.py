"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

Why: the e2e suite must exercise what only a real apiserver does (CRD schema validation,
admission webhooks, RBAC, ownership and garbage collection, Deployments turning into ReplicaSets
and Pods) on machines without Docker. There is no kubelet yet, so Pods stay Pending; everything
up to scheduling is the genuine article.

Every port is chosen free on 127.0.0.1 and every file lives in one work dir, so several control
planes (a long-lived ``cluster up`` and a pytest session) can run side by side. Each component
runs in its own process group with its log in ``<workdir>/logs/<component>.log``; ``stop()``
signals the groups and waits, so nothing is left behind.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self, TextIO

from . import build as build_mod
from .errors import ControlPlaneError
from .pki import ControlPlanePKI, write_control_plane_pki
from .ports import free_port, free_ports
from .processes import StartStopContext, spawn_logged

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "sidecar-state-local"
LOG_TAIL_LINES = 25

#: Start order; ``stop()`` goes in reverse so clients die before the servers they talk to.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_cert: Path,
    client_cert: Path,
    client_key: Path,
    user: str,
) -> Path:
    """Write a kubeconfig with embedded credentials, so it stays valid if copied elsewhere."""

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": b64(ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client_cert),
                    "client-key-data": b64(client_key),
                },
            }
        ],
        "contexts": [{"name": CLUSTER_NAME, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": CLUSTER_NAME,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    # JSON is valid YAML: kubectl, client-go and the Python client all read it.
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)
    return path


@dataclasses.dataclass(kw_only=True)
class ProcessRecord:
    """What ``down`` needs to find a component again after ``up`` exited: pid and binary path."""

    name: str
    pid: int
    binary: str
    log: str


def process_alive(record: ProcessRecord) -> bool:
    """True if ``record.pid`` is still that component (not a recycled pid or a zombie)."""
    try:
        exe = os.readlink(f"/proc/{record.pid}/exe")
        with open(f"/proc/{record.pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and exe.removesuffix(" (deleted)") == record.binary


def terminate_process_groups(
    records: Sequence[ProcessRecord],
    *,
    timeout: float = 15.0,
    reap: Callable[[int], None] | None = None,
) -> None:
    """SIGTERM each component's process group, wait, then SIGKILL what is left.

    Works from any process (``down`` is not the parent of what ``up`` started), which is why it
    checks /proc rather than waiting on child handles; ``reap`` lets the parent collect zombies.
    """
    # Only signal what is verifiably ours now: a recycled pid must never be hit. One at a time,
    # in the order given, so clients are gone before the servers they would retry against.
    signalled = [r for r in records if process_alive(r)]
    for record in signalled:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process_alive(record) and time.monotonic() < deadline:
            if reap is not None:
                reap(record.pid)
            time.sleep(0.05)
        if process_alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5
            while process_alive(record) and time.monotonic() < kill_deadline:
                time.sleep(0.05)
        if reap is not None:
            reap(record.pid)
    # Not our children (``down``): their new parent (init) reaps them; wait so that, on return,
    # no trace is left, not even a zombie in ``pgrep``.
    gone_deadline = time.monotonic() + 5
    while time.monotonic() < gone_deadline and any(
        os.path.exists(f"/proc/{r.pid}") for r in signalled
    ):
        if reap is not None:
            for record in signalled:
                reap(record.pid)
        time.sleep(0.05)


def env_bypassing_proxy(hosts: Sequence[str]) -> dict[str, str]:
    """This process's environment with ``hosts`` added to ``NO_PROXY`` (both spellings)."""
    env = dict(os.environ)
    no_proxy = [v for v in env.get("NO_PROXY", env.get("no_proxy", "")).split(",") if v]
    no_proxy += hosts
    env["NO_PROXY"] = env["no_proxy"] = ",".join(no_proxy)
    return env


def reaper(procs: dict[str, subprocess.Popen[bytes]]) -> Callable[[int], None]:
    """A ``reap`` for :func:`terminate_process_groups` that collects our own children's zombies."""

    def reap(pid: int) -> None:
        for proc in procs.values():
            if proc.pid == pid:
                proc.poll()

    return reap


def log_tails(records: Sequence[ProcessRecord], count: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``count`` lines of each component's log, each under a header line."""
    parts = []
    for record in records:
        try:
            lines = Path(record.log).read_text(errors="replace").splitlines()
        except OSError:
            continue
        parts.append(f"--- {record.name} (last {count} lines of {record.log}) ---")
        parts.extend(lines[-count:])
    return parts


class LocalControlPlane(StartStopContext):
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on 127.0.0.1.

    Use as a context manager (``with LocalControlPlane() as cp: ... cp.kubeconfig``) or call
    ``start()``/``stop()``. With ``detach=True`` the components outlive this Python process
    (for ``python -m localkube up``); ``records`` then says what to stop later.
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        binaries: build_mod.Binaries | None = None,
        build: bool = True,
        start_timeout: float = 180.0,
        detach: bool = False,
        log: TextIO | None = None,
        bind_address: str = "127.0.0.1",
        advertise_address: str | None = None,
        apiserver_profiling: bool = False,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(workdir)
            if workdir is not None
            else Path(tempfile.mkdtemp(prefix="sidecar-state-cp-"))
        )
        self._binaries = binaries
        self._build = build
        self._start_timeout = start_timeout
        self._detach = detach
        self._log = log if log is not None else sys.stderr
        self._bind_address = bind_address
        self._advertise_address = advertise_address
        # Off unless asked for: a benchmark reads kube-apiserver's CPU profile
        # (/debug/pprof/profile, admin only) to see where its side of a request goes.
        self._apiserver_profiling = apiserver_profiling
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.records: list[ProcessRecord] = []
        self.kubeconfig = self.workdir / "kubeconfig"
        self.logs_dir = self.workdir / "logs"
        self.apiserver_port = 0
        self.server = ""
        self._pki: ControlPlanePKI | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def binaries(self) -> build_mod.Binaries:
        """The binaries in use (building them on first access if allowed)."""
        if self._binaries is None:
            if self._build:
                self._binaries = build_mod.build(out=self._log)
            else:
                self._binaries = build_mod.Binaries.in_dir(build_mod.bin_dir())
        return self._binaries

    @property
    def pki(self) -> ControlPlanePKI:
        if self._pki is None:
            raise ControlPlaneError("control plane not started")
        return self._pki

    def start(self) -> Self:
        """Start all components and wait until the cluster is usable; raise with logs if not."""
        binaries = self.binaries
        missing = [str(p) for p in binaries.all() if not os.access(p, os.X_OK)]
        if missing:
            raise ControlPlaneError(f"missing binaries {missing}; run `python -m localkube build`")
        started = time.monotonic()
        try:
            self._prepare_workdir()
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._wait(
                "the default ServiceAccount (needs kube-controller-manager)",
                lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default") == 200,
            )
        except BaseException as error:
            report = self._failure_report()
            self._owns_workdir = False  # keep the logs the report points at
            self.stop()
            if isinstance(error, ControlPlaneError):
                raise ControlPlaneError(f"{error}\n{report}") from None
            raise
        self._say(f"control plane ready in {time.monotonic() - started:.1f}s at {self.server}")
        return self

    def stop(self) -> None:
        """Stop every component this object started and wait for them; idempotent."""
        if self._procs or self.records:
            terminate_process_groups(list(reversed(self.records)), reap=reaper(self._procs))
            for proc in self._procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            self._procs.clear()
            self.records.clear()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def api_get(self, path: str) -> tuple[int, Any]:
        """GET an API path as cluster-admin; return (status, decoded JSON, text or None)."""
        request = urllib.request.Request(f"{self.server}{path}")
        try:
            with self._opener().open(request, timeout=5) as response:
                body = response.read().decode(errors="replace")
                status: int = response.status
        except urllib.error.HTTPError as error:
            return error.code, None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body  # /readyz, /healthz and /livez answer plain text

    # -- internals ------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        print(f"[cluster] {message}", file=self._log, flush=True)

    def _prepare_workdir(self) -> None:
        """Start from a clean slate: new certificates, an empty etcd, truncated logs."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("pki", "etcd-data", "logs", "certs"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        self.logs_dir.mkdir()
        extra_ips = [a for a in (self._bind_address, self._advertise_address) if a]
        self._pki = write_control_plane_pki(
            self.workdir / "pki",
            extra_apiserver_ips=[a for a in extra_ips if a not in ("0.0.0.0", "::")],
        )

    def _spawn(self, name: str, binary: Path, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log_path = self.logs_dir / f"{name}.log"
        # Proxies must never see loopback or in-cluster traffic (webhooks, aggregated APIs).
        env = env_bypassing_proxy(
            ["127.0.0.1", "localhost", SERVICE_CLUSTER_IP_RANGE, ".svc", ".cluster.local"]
        )
        proc = spawn_logged(
            [str(binary), *args],
            log_path,
            cwd=self.workdir,
            env=env,
            # SIGTERM when this process dies, so a killed pytest leaks nothing.
            pdeathsig=None if self._detach else signal.SIGTERM,
            echo_command=True,
        )
        self._procs[name] = proc
        self.records.append(
            ProcessRecord(
                name=name, pid=proc.pid, binary=os.path.realpath(binary), log=str(log_path)
            )
        )
        return proc

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until true; fail fast if a component exits, or at the timeout."""
        deadline = time.monotonic() + self._start_timeout
        started = time.monotonic()
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with code {proc.returncode} while waiting for {what}"
                    )
            with contextlib.suppress(OSError, ssl.SSLError, ValueError):
                if ready():
                    self._say(f"{what}: ready after {time.monotonic() - started:.1f}s")
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out after {self._start_timeout:.0f}s waiting for {what}"
                )
            time.sleep(0.25)

    def _opener(self) -> urllib.request.OpenerDirector:
        pki = self.pki
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        # An empty ProxyHandler: talk to 127.0.0.1 directly even if HTTPS_PROXY is set.
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def _get(self, path: str) -> int:
        status, _ = self.api_get(path)
        return status

    def _start_etcd(self) -> None:
        client_port, peer_port = free_ports(2)
        self._etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._say(f"starting etcd on {self._etcd_url}")
        self._spawn(
            "etcd",
            self.binaries.etcd,
            [
                "--name=sidecar-state",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=sidecar-state={peer_url}",
                "--initial-cluster-state=new",
                # Test data is disposable; skipping fsync makes the apiserver much faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(f"{self._etcd_url}/health", timeout=2) as response:
                return bool(json.loads(response.read()).get("health") == "true")

        self._wait("etcd /health", healthy)

    def _start_apiserver(self) -> None:
        pki = self.pki
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self._say(f"starting kube-apiserver on {self.server}")
        self._spawn(
            "kube-apiserver",
            self.binaries.kube_apiserver,
            [
                f"--etcd-servers={self._etcd_url}",
                f"--bind-address={self._bind_address}",
                f"--secure-port={self.apiserver_port}",
                *self._advertise_args(),
                f"--cert-dir={self.workdir / 'certs' / 'apiserver'}",
                f"--tls-cert-file={pki.apiserver_cert}",
                f"--tls-private-key-file={pki.apiserver_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                # The default admission plugins already include MutatingAdmissionWebhook and
                # ValidatingAdmissionWebhook; naming them documents that the suite relies on them.
                "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                # Aggregated APIs (none yet) would be reached by endpoint IP, not via kube-proxy.
                "--enable-aggregator-routing=true",
                f"--profiling={str(self._apiserver_profiling).lower()}",
            ],
        )
        self._wait("kube-apiserver /readyz", lambda: self._get("/readyz") == 200)
        write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_cert=pki.ca_cert,
            client_cert=pki.admin_cert,
            client_key=pki.admin_key,
            user="sidecar-state-admin",
        )

    def _advertise_args(self) -> list[str]:
        """How the ``kubernetes`` Service in ``default`` gets its endpoints.

        Endpoints may not be loopback addresses, so a loopback-only control plane publishes none
        (``--endpoint-reconciler-type=none``; nothing in-cluster could reach it anyway) instead
        of logging a validation error every ten seconds. A node that runs Pods passes its own
        non-loopback ``advertise_address``, and the lease reconciler publishes that; the
        apiserver then also gets what it needs to reach that node's kubelet.
        """
        if self._advertise_address is None:
            return ["--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        pki = self.pki
        return [
            f"--advertise-address={self._advertise_address}",
            # With a kubelet, `kubectl logs/exec` go apiserver -> kubelet: authenticate as the
            # admin (the kubelet's webhook authorizer allows system:masters) and dial the
            # Node's InternalIP (its name does not resolve on this machine).
            f"--kubelet-client-certificate={pki.admin_cert}",
            f"--kubelet-client-key={pki.admin_key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _component_kubeconfig(self, name: str, cert: Path, key: Path, user: str) -> Path:
        return write_kubeconfig(
            self.workdir / "pki" / f"{name}.kubeconfig",
            server=self.server,
            ca_cert=self.pki.ca_cert,
            client_cert=cert,
            client_key=key,
            user=user,
        )

    def _start_controllers(self) -> None:
        pki = self.pki
        kcm_config = self._component_kubeconfig(
            "controller-manager",
            pki.controller_manager_cert,
            pki.controller_manager_key,
            "system:kube-controller-manager",
        )
        scheduler_config = self._component_kubeconfig(
            "scheduler", pki.scheduler_cert, pki.scheduler_key, "system:kube-scheduler"
        )
        kcm_port, scheduler_port = free_ports(2)
        self._say("starting kube-controller-manager and kube-scheduler")
        self._spawn(
            "kube-controller-manager",
            self.binaries.kube_controller_manager,
            [
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                f"--cert-dir={self.workdir / 'certs' / 'controller-manager'}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            ],
        )
        self._spawn(
            "kube-scheduler",
            self.binaries.kube_scheduler,
            [
                f"--kubeconfig={scheduler_config}",
                f"--authentication-kubeconfig={scheduler_config}",
                f"--authorization-kubeconfig={scheduler_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                f"--cert-dir={self.workdir / 'certs' / 'scheduler'}",
                "--leader-elect=false",
            ],
        )

    def _failure_report(self) -> str:
        """Tail of every component log plus hints, for a start failure."""
        parts = [f"component logs are in {self.logs_dir}", *log_tails(self.records)]
        parts.append(
            "hints: a component exiting at once usually means a bad flag or a busy port (retry); "
            "a timeout can mean the machine is short of memory or CPU; if a binary is corrupt, "
            "rebuild with `python -m localkube build --force`."
        )
        return "\n".join(parts)
