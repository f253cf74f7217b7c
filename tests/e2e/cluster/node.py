"""One real worker node on this machine: containerd + runc, a CNI bridge, kubelet and kube-proxy.

Why: until a Pod with our sidecars really runs, native-sidecar ordering, the Unix socket on a
memory-backed volume, probes and restarts are only claims. The control plane
(``controlplane.py``) already runs etcd, the apiserver and the controllers on loopback; this adds
the parts that turn scheduled Pods into processes, without Docker or a registry.

Choices, each checked on these machines (Debian 12, cgroup v1, kernel with overlayfs):

- containerd from Debian (1.6.x) with its CRI plugin, runc from Debian, the ``overlayfs``
  snapshotter. Its root (images and unpacked layers) persists in the cache, so images are
  imported once; its state (sockets, shims, netns, rootfs mounts) lives in the work dir and is
  torn down on ``stop()``. A lock on the root allows one node per machine.
- Network: a bridge ``sstate0`` with ``10.244.0.1/24``, created before the kubelet so that
  address can be the node's InternalIP and the apiserver's advertise address: Pods reach the
  host (apiserver, Kafka) at ``NODE_IP``. The CNI ``bridge`` + ``host-local`` plugins give Pods
  addresses in that subnet. Pods are fenced in: iptables rejects anything forwarded between the
  bridge and any other interface, and the Service range has an ``unreachable`` route, so nothing
  a Pod sends ever leaves the machine.
- kube-proxy in iptables mode makes ``kubernetes.default`` (10.0.0.1) and every other Service
  work, including the operator's webhook Service and the demo's; ``kube-proxy --cleanup``
  removes its rules at stop. There is no cluster DNS: Pods get a resolv.conf pointing at
  127.0.0.1 so a name look-up fails at once instead of leaking to the host's resolver, and the
  tests and the demo give addresses.
- kubelet with ``cgroupDriver: cgroupfs`` (no systemd here), ``failSwapOn: false``, x509 and
  webhook authentication/authorization, image GC off (images cannot be pulled back), a node
  certificate ``CN=system:node:<name>, O=system:nodes`` issued by the control plane's CA.

``stop()`` leaves no process, mount, iptables rule or interface behind: it stops kube-proxy and
the kubelet, kills and deletes every container through containerd, stops containerd and any
shim it left, kills whatever is still in the ``kubepods`` cgroups, then unmounts everything
below its folders (container rootfs, ``/dev/shm`` of sandboxes, network namespaces, tmpfs
volumes) deepest first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.processes import StartStopContext, spawn_logged

from . import build as build_mod
from . import node_build
from .controlplane import (
    SERVICE_CLUSTER_IP_RANGE,
    ProcessRecord,
    env_bypassing_proxy,
    free_port,
    log_tails,
    process_alive,
    reaper,
    terminate_process_groups,
    write_kubeconfig,
)
from .pki import CertificateAuthority, CertifiedKey, ControlPlanePKI

NODE_NAME = "sidecar-state-node"
BRIDGE = "sstate0"
POD_CIDR = "10.244.0.0/24"
#: The bridge's own address: the node's InternalIP, the apiserver's advertise address, and the
#: address on which host services (Kafka for the demo) must listen to be reachable from Pods.
NODE_IP = "10.244.0.1"
SANDBOX_IMAGE = node_build.SANDBOX_IMAGE
#: containerd namespace the CRI plugin uses; images must be imported there.
K8S_NAMESPACE = "k8s.io"
LOG_TAIL_LINES = 30
#: Start order; stop goes in reverse.
COMPONENTS = ("containerd", "kubelet", "kube-proxy")
_IPTABLES_COMMENT = "sidecar-state local node"
#: Chains the kubelet itself creates in the filter, nat and mangle tables.
_KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")
_SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
}


class NodeError(RuntimeError):
    """The node failed to start or to become Ready; the message carries the logs' tails."""


def containerd_root() -> Path:
    """Persistent containerd root: imported images and their unpacked layers survive runs."""
    return build_mod.cache_root() / "node" / "containerd"


@contextlib.contextmanager
def _suppress_os() -> Iterator[None]:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        yield


def _load_ca(pki: ControlPlanePKI) -> CertificateAuthority:
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    return CertificateAuthority(certified=CertifiedKey(cert=cert, key=key))  # type: ignore[arg-type]


def _mounts_below(roots: Sequence[Path]) -> list[str]:
    """Mount points at or below any of ``roots``, deepest first (unmount order)."""
    prefixes = [str(r.resolve()) for r in roots]
    found: list[str] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _unmount_all(roots: Sequence[Path]) -> list[str]:
    """Lazily unmount everything below ``roots``; return what could not be unmounted."""
    for _ in range(3):
        points = _mounts_below(roots)
        if not points:
            return []
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return _mounts_below(roots)


def _pids_with(predicate: Callable[[int, list[str]], bool]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if args and predicate(int(entry), args):
            pids.append(int(entry))
    return pids


def _kubepods_cgroups() -> list[Path]:
    """Every ``kubepods`` cgroup folder in the v1 hierarchies (and v2, if mounted)."""
    base = Path("/sys/fs/cgroup")
    found = [p / "kubepods" for p in base.iterdir() if (p / "kubepods").is_dir()]
    if (base / "kubepods").is_dir():
        found.append(base / "kubepods")
    return found


def _kill_cgroup_tree(root: Path) -> None:
    """SIGKILL every task below a cgroup folder, then remove the folders deepest first."""
    dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    dirs.insert(0, root)
    for directory in dirs:
        with _suppress_os():
            for pid in (directory / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.2)
    for directory in reversed(dirs):
        with _suppress_os():
            directory.rmdir()


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeLayout:
    """Every path of one node; derived from the work dir so ``down`` can find them again."""

    workdir: Path

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.workdir / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.workdir / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.workdir / "pod-logs"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def state_file(self) -> Path:
        return self.workdir / "node-state.json"

    def mount_roots(self) -> list[Path]:
        """Folders below which the node's components mount things."""
        return [self.run, self.kubelet_root, containerd_root()]


class LocalNode(StartStopContext):
    """containerd, kubelet and kube-proxy joined to a ``LocalControlPlane``; one per machine.

    Needs root. Use as a context manager or call ``start()``/``stop()``. With ``detach=True``
    the components outlive this Python process (``make demo``); ``state()`` then holds what
    ``LocalNode.from_state(...).stop()`` needs in another process.
    """

    def __init__(
        self,
        *,
        server: str,
        pki: ControlPlanePKI,
        workdir: Path | None = None,
        binaries: node_build.NodeBinaries | None = None,
        build: bool = True,
        name: str = NODE_NAME,
        image_archives: Sequence[Path] = (),
        start_timeout: float = 180.0,
        detach: bool = False,
        log: TextIO | None = None,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(workdir)
            if workdir is not None
            else Path(tempfile.mkdtemp(prefix="sidecar-state-node-"))
        )
        self.layout = NodeLayout(workdir=self.workdir)
        self.server = server
        self.pki = pki
        self.name = name
        self._binaries = binaries
        self._build = build
        self._image_archives = list(image_archives)
        self._start_timeout = start_timeout
        self._detach = detach
        self._log = log if log is not None else sys.stderr
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.records: list[ProcessRecord] = []
        self._saved_sysctls: dict[str, str] = {}
        self._lock_fd: int | None = None
        self.kubelet_port = 0

    @classmethod
    def for_control_plane(cls, plane: Any, **kwargs: Any) -> LocalNode:
        """A node for a started ``LocalControlPlane`` (its server URL and PKI)."""
        return cls(server=plane.server, pki=plane.pki, **kwargs)

    # -- public API -----------------------------------------------------------------------

    @property
    def binaries(self) -> node_build.NodeBinaries:
        """The binaries in use, built (kubelet, kube-proxy, pause) on first access if allowed."""
        if self._binaries is None:
            self._binaries = (
                node_build.build(out=self._log)
                if self._build
                else node_build.NodeBinaries(
                    kubelet=node_build.node_dir() / "kubelet",
                    kube_proxy=node_build.node_dir() / "kube-proxy",
                    cni_bin_dir=node_build.CNI_BIN_DIR,
                    pause_archive=node_build.node_dir() / f"pause-{node_build.PAUSE_TAG}.oci.tar",
                    **node_build.host_binaries(),
                )
            )
        return self._binaries

    def start(self) -> Self:
        """Start everything and wait until the Node is Ready and Services are programmed."""
        if os.geteuid() != 0:
            raise NodeError("a local node needs root (containerd, mounts, iptables)")
        binaries = self.binaries
        missing = [str(p) for p in binaries.all() if not os.access(p, os.R_OK)]
        if missing:
            raise NodeError(f"missing node prerequisites: {missing}")
        started = time.monotonic()
        try:
            self._take_lock()
            self._prepare_workdir()
            self._setup_host_network()
            self._start_containerd()
            self._remove_all_containers()
            self.import_images([binaries.pause_archive, *self._image_archives])
            self._start_kubelet()
            self._start_kube_proxy()
        except BaseException as error:
            report = self.failure_report()
            self.stop()
            if isinstance(error, NodeError):
                raise NodeError(f"{error}\n{report}") from None
            raise
        self._say(f"node {self.name} ready in {time.monotonic() - started:.1f}s (IP {NODE_IP})")
        self._write_state()
        return self

    def stop(self) -> None:
        """Stop everything and clean up; idempotent, and safe after a partial start."""
        records = {r.name: r for r in self.records}
        reap = reaper(self._procs)
        if "kube-proxy" in records:
            terminate_process_groups([records["kube-proxy"]], reap=reap)
        self._kube_proxy_cleanup()
        if "kubelet" in records:
            terminate_process_groups([records["kubelet"]], reap=reap)
        self._kubelet_iptables_cleanup()
        if self.layout.containerd_socket.exists() and (
            "containerd" not in records or process_alive(records["containerd"])
        ):
            self._remove_all_containers()
        if "containerd" in records:
            terminate_process_groups([records["containerd"]], reap=reap)
        self._kill_shims()
        for cgroup in _kubepods_cgroups():
            _kill_cgroup_tree(cgroup)
        left = _unmount_all(self.layout.mount_roots())
        if left:
            self._say(f"warning: could not unmount {left}")
        self._remove_container_log_links()
        # containerd 1.6 hard-codes its shims' socket folder (/run/containerd/s); drop the
        # folders it made there once they are empty.
        for folder in ("s", "fifo", "runc", ""):
            with _suppress_os():
                (Path("/run/containerd") / folder).rmdir()
        self._teardown_host_network()
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        self.records.clear()
        self._release_lock()
        with _suppress_os():
            self.layout.state_file.unlink()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def state(self) -> dict[str, Any]:
        """What another process needs to stop this node (see ``from_state``)."""
        return {
            "workdir": str(self.workdir),
            "server": self.server,
            "name": self.name,
            "saved_sysctls": self._saved_sysctls,
            "processes": [dataclasses.asdict(r) for r in self.records],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, pki: ControlPlanePKI) -> LocalNode:
        """Rebuild a handle on a detached node, for ``stop()`` from another process."""
        node = cls(
            server=state["server"],
            pki=pki,
            workdir=Path(state["workdir"]),
            build=False,
            name=state["name"],
        )
        node._saved_sysctls = dict(state.get("saved_sysctls", {}))
        node.records = [ProcessRecord(**r) for r in state.get("processes", [])]
        return node

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> str:
        """Run ``ctr`` against this node's containerd in the CRI namespace; return stdout."""
        proc = subprocess.run(
            [
                str(self.binaries.ctr),
                f"--address={self.layout.containerd_socket}",
                f"--namespace={K8S_NAMESPACE}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def import_images(self, archives: Sequence[Path]) -> None:
        """Import OCI archives unless containerd already holds the same image under that name.

        The archive's manifest digest and name are read from its ``index.json``; when the
        name already points at that digest the import is skipped, so a warm start is quick.
        """
        present = self._image_digests()
        for archive in archives:
            name, digest = _archive_identity(archive)
            if present.get(name) == digest:
                continue
            started = time.monotonic()
            # Unpacked for the CRI's snapshotter now, so the first Pod does not pay for it.
            self.ctr("images", "import", "--snapshotter=overlayfs", str(archive))
            self._say(f"imported {name} in {time.monotonic() - started:.1f}s")

    def failure_report(self) -> str:
        """Tails of every component log plus hints, for a start failure or a failed test."""
        parts = [f"node logs are in {self.layout.logs}", *log_tails(self.records, LOG_TAIL_LINES)]
        parts.append(
            "hints: 'address already in use' or a lock error means another node runs on this "
            "machine (`python -m tests.e2e.cluster down`); a Pod stuck in ContainerCreating "
            "is explained by `kubectl describe pod` and the kubelet log."
        )
        return "\n".join(parts)

    # -- internals ------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        print(f"[node] {message}", file=self._log, flush=True)

    def _take_lock(self) -> None:
        """One node per machine: the bridge, the subnet and containerd's root are fixed."""
        path = containerd_root().parent / "node.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeError(
                f"another local node is running on this machine (lock {path} is held); "
                "stop it first (`python -m tests.e2e.cluster down` or `make demo-down`)"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _prepare_workdir(self) -> None:
        layout = self.layout
        for folder in (layout.logs, layout.run, layout.pki, layout.cni_ipam_dir):
            shutil.rmtree(folder, ignore_errors=True)
        for folder in (
            layout.logs,
            layout.run,
            layout.pki,
            layout.cni_conf_dir,
            layout.cni_ipam_dir,
            layout.kubelet_root,
            layout.pod_logs,
            containerd_root(),
        ):
            folder.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, binary: Path, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log_path = self.layout.logs / f"{name}.log"
        # Loopback and cluster traffic must never go through a proxy from the environment.
        env = env_bypassing_proxy(
            ["127.0.0.1", "localhost", NODE_IP, POD_CIDR, SERVICE_CLUSTER_IP_RANGE]
        )
        # The CNI plugins and kube-proxy shell out to iptables and conntrack from PATH.
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
        pass_fds = (self._lock_fd,) if name == "containerd" and self._lock_fd is not None else ()
        proc = spawn_logged(
            [str(binary), *args],
            log_path,
            cwd=self.workdir,
            env=env,
            # SIGTERM when this process dies, so a killed pytest leaks nothing.
            pdeathsig=None if self._detach else signal.SIGTERM,
            # containerd inherits the node lock: the lock lives exactly as long as it does,
            # also when detached and this process has exited.
            pass_fds=pass_fds,
            echo_command=True,
        )
        self._procs[name] = proc
        self.records.append(
            ProcessRecord(name=name, pid=proc.pid, binary=str(binary), log=str(log_path))
        )
        return proc

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float | None = None) -> None:
        """Poll ``ready`` until true; fail fast if a component exits, or at the timeout."""
        limit = timeout if timeout is not None else self._start_timeout
        started = time.monotonic()
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise NodeError(
                        f"{name} exited with code {proc.returncode} while waiting for {what}"
                    )
            with contextlib.suppress(OSError, ssl.SSLError, ValueError, subprocess.SubprocessError):
                if ready():
                    self._say(f"{what}: ready after {time.monotonic() - started:.1f}s")
                    return
            if time.monotonic() - started > limit:
                raise NodeError(f"timed out after {limit:.0f}s waiting for {what}")
            time.sleep(0.25)

    # host network -----------------------------------------------------------------------

    def _sysctl_path(self, key: str) -> Path:
        return Path("/proc/sys") / key

    def _setup_host_network(self) -> None:
        for key, value in _SYSCTLS.items():
            path = self._sysctl_path(key)
            current = path.read_text().strip()
            if current != value:
                self._saved_sysctls.setdefault(key, current)
                path.write_text(value)
        self._teardown_links()
        network = ipaddress.ip_network(POD_CIDR)
        self._ip("link", "add", BRIDGE, "type", "bridge")
        self._ip("addr", "add", f"{NODE_IP}/{network.prefixlen}", "dev", BRIDGE)
        self._ip("link", "set", BRIDGE, "up")
        # Traffic to a Service IP that kube-proxy did not translate must not follow the default
        # route off the machine.
        self._ip("route", "replace", "unreachable", SERVICE_CLUSTER_IP_RANGE)
        for rule in self._forward_rules():
            self._iptables("-I", "FORWARD", "1", *rule)

    def _forward_rules(self) -> list[list[str]]:
        comment = ["-m", "comment", "--comment", _IPTABLES_COMMENT]
        return [
            # Pods may talk to each other and to the host, never beyond it.
            ["-i", BRIDGE, "!", "-o", BRIDGE, *comment, "-j", "REJECT"],
            ["!", "-i", BRIDGE, "-o", BRIDGE, *comment, "-j", "REJECT"],
        ]

    def _teardown_host_network(self) -> None:
        for rule in self._forward_rules():
            while self._iptables("-C", "FORWARD", *rule, check=False) == 0:
                self._iptables("-D", "FORWARD", *rule, check=False)
        self._ip("route", "del", "unreachable", SERVICE_CLUSTER_IP_RANGE, check=False)
        self._teardown_links()
        for key, value in self._saved_sysctls.items():
            with _suppress_os():
                self._sysctl_path(key).write_text(value)
        self._saved_sysctls = {}

    def _teardown_links(self) -> None:
        self._ip("link", "del", BRIDGE, check=False)

    def _ip(self, *args: str, check: bool = True) -> int:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise NodeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.returncode

    def _iptables(self, *args: str, check: bool = True) -> int:
        proc = subprocess.run(
            [str(self.binaries.iptables), "-w", *args], capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise NodeError(f"iptables {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.returncode

    # containerd -------------------------------------------------------------------------

    def _containerd_config(self) -> str:
        layout = self.layout
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return "\n".join(
            [
                "version = 2",
                f'root = "{containerd_root()}"',
                f'state = "{layout.containerd_state}"',
                "disabled_plugins = ["
                + ", ".join(
                    f'"io.containerd.snapshotter.v1.{s}"'
                    for s in ("btrfs", "zfs", "aufs", "devmapper")
                )
                + "]",
                "[grpc]",
                f'  address = "{layout.containerd_socket}"',
                "[ttrpc]",
                f'  address = "{layout.containerd_socket}.ttrpc"',
                '[plugins."io.containerd.internal.v1.opt"]',
                f'  path = "{containerd_root().parent / "containerd-opt"}"',
                f"[{cri}]",
                f'  sandbox_image = "{SANDBOX_IMAGE}"',
                "  enable_unprivileged_ports = true",
                # Root here lacks CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj below
                # containerd's own (the kubelet asks -998 for sandboxes): clamp instead of fail.
                "  restrict_oom_score_adj = true",
                "  netns_mounts_under_state_dir = true",
                "  disable_tcp_service = true",
                '  stream_server_address = "127.0.0.1"',
                f"[{cri}.containerd]",
                '  snapshotter = "overlayfs"',
                '  default_runtime_name = "runc"',
                "  discard_unpacked_layers = false",
                f"[{cri}.containerd.runtimes.runc]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"[{cri}.containerd.runtimes.runc.options]",
                "  SystemdCgroup = false",
                f'  BinaryName = "{self.binaries.runc}"',
                # runc's own state (default /run/containerd/runc) stays in the work dir too.
                f'  Root = "{layout.run / "runc"}"',
                f"[{cri}.cni]",
                f'  bin_dir = "{self.binaries.cni_bin_dir}"',
                f'  conf_dir = "{layout.cni_conf_dir}"',
                "  max_conf_num = 1",
                "",
            ]
        )

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "sidecar-state",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # No masquerading: Pods only ever talk to the host and to each other.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.layout.cni_ipam_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _start_containerd(self) -> None:
        layout = self.layout
        config = self.workdir / "containerd.toml"
        config.write_text(self._containerd_config())
        (layout.cni_conf_dir / "10-sidecar-state.conflist").write_text(
            json.dumps(self._cni_config(), indent=2) + "\n"
        )
        self._say(f"starting containerd on {layout.containerd_socket}")
        self._spawn("containerd", self.binaries.containerd, ["--config", str(config)])
        self._wait(
            "containerd",
            lambda: layout.containerd_socket.exists() and bool(self.ctr("version", timeout=5)),
            timeout=60,
        )

    def _image_digests(self) -> dict[str, str]:
        digests = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                digests[fields[0]] = fields[2]
        return digests

    def _remove_all_containers(self) -> None:
        """Kill and delete every container (sandboxes included) in the CRI namespace.

        Used at start for what a crashed run left in the persistent root, and at stop after
        the kubelet is gone (it would only restart them).
        """
        with _suppress_os():
            containers = [
                line.split()[0] for line in self.ctr("containers", "ls", "-q").splitlines()
            ]
            for container in containers:
                self.ctr("tasks", "kill", "--signal", "SIGKILL", container, check=False)
            deadline = time.monotonic() + 10
            for container in containers:
                while (
                    self.ctr("tasks", "delete", container, check=False, timeout=30) != ""
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.1)
                self.ctr("tasks", "delete", "--force", container, check=False)
                self.ctr("containers", "delete", container, check=False)

    def _kill_shims(self) -> None:
        socket = str(self.layout.containerd_socket)

        def ours(_pid: int, args: list[str]) -> bool:
            return "containerd-shim" in args[0] and any(socket in a for a in args)

        for pid in _pids_with(ours):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # credentials ------------------------------------------------------------------------

    def _kubeconfig(self, name: str, certified: CertifiedKey, user: str) -> Path:
        cert, key = certified.write(self.layout.pki, name)
        return write_kubeconfig(
            self.layout.pki / f"{name}.kubeconfig",
            server=self.server,
            ca_cert=self.pki.ca_cert,
            client_cert=cert,
            client_key=key,
            user=user,
        )

    # kubelet ----------------------------------------------------------------------------

    def _kubelet_config(self, serving: tuple[Path, Path]) -> dict[str, Any]:
        layout = self.layout
        endpoint = f"unix://{layout.containerd_socket}"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self._kubelet_healthz_port,
            "tlsCertFile": str(serving[0]),
            "tlsPrivateKeyFile": str(serving[1]),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True, "cacheTTL": "10s"},
                "x509": {"clientCAFile": str(self.pki.ca_cert)},
            },
            "authorization": {
                "mode": "Webhook",
                "webhook": {"cacheAuthorizedTTL": "10s", "cacheUnauthorizedTTL": "10s"},
            },
            "containerRuntimeEndpoint": endpoint,
            "imageServiceEndpoint": endpoint,
            # No systemd on these machines; cgroup v1 is accepted by 1.34 with a warning, and
            # 1.35+ needs failCgroupV1: false to start at all.
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            # Images come from local archives, never from a registry: GC must not drop them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "resolvConf": str(self.workdir / "resolv.conf"),
            "clusterDomain": "cluster.local",
            "podLogsDir": str(layout.pod_logs),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "syncFrequency": "10s",
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            "maxPods": 110,
            "registerNode": True,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
        }

    def _start_kubelet(self) -> None:
        ca = _load_ca(self.pki)
        node_client = ca.issue(
            f"system:node:{self.name}", organizations=("system:nodes",), client=True
        )
        kubeconfig = self._kubeconfig("kubelet", node_client, f"system:node:{self.name}")
        serving = ca.issue(self.name, dns_names=(self.name,), ip_addresses=(NODE_IP,), server=True)
        serving_paths = serving.write(self.layout.pki, "kubelet-serving")
        self.kubelet_port = free_port()
        self._kubelet_healthz_port = free_port()
        # Name look-ups inside Pods fail at once (nothing listens on the Pod's own port 53)
        # rather than leaking to the host's resolver; tests and the demo use addresses.
        (self.workdir / "resolv.conf").write_text(
            "nameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n"
        )
        config = self.workdir / "kubelet-config.json"
        config.write_text(json.dumps(self._kubelet_config(serving_paths), indent=2) + "\n")
        self._say(f"starting kubelet (node {self.name}, port {self.kubelet_port})")
        self._spawn(
            "kubelet",
            self.binaries.kubelet,
            [
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.layout.kubelet_root}",
                f"--cert-dir={self.layout.pki / 'kubelet'}",
                f"--hostname-override={self.name}",
                f"--node-ip={NODE_IP}",
                "--v=2",
            ],
        )
        self._wait("the Node to be Ready", self._node_ready)

    def _api(self, path: str) -> tuple[int, Any]:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        try:
            with opener.open(f"{self.server}{path}", timeout=5) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, None

    def _node_ready(self) -> bool:
        status, node = self._api(f"/api/v1/nodes/{self.name}")
        if status != 200 or not node:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    # kube-proxy -------------------------------------------------------------------------

    def _kube_proxy_config(self, kubeconfig: Path) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{self._proxy_healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # NodePorts only on the bridge address, never on the machine's real interfaces.
            "nodePortAddresses": [f"{NODE_IP}/32"],
            # Leave the host's conntrack table size alone.
            "conntrack": {"maxPerCore": 0},
            "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
        }

    def _start_kube_proxy(self) -> None:
        ca = _load_ca(self.pki)
        client = ca.issue("system:kube-proxy", client=True)
        kubeconfig = self._kubeconfig("kube-proxy", client, "system:kube-proxy")
        self._proxy_healthz_port = free_port()
        config = self.workdir / "kube-proxy-config.json"
        config.write_text(json.dumps(self._kube_proxy_config(kubeconfig), indent=2) + "\n")
        self._say("starting kube-proxy (iptables mode)")
        self._spawn("kube-proxy", self.binaries.kube_proxy, [f"--config={config}", "--v=2"])

        def programmed() -> bool:
            rules = subprocess.run(
                [str(self.binaries.iptables), "-w", "-t", "nat", "-S", "KUBE-SERVICES"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            return "default/kubernetes:https" in rules

        self._wait("kube-proxy to program the kubernetes Service", programmed)

    def _kube_proxy_cleanup(self) -> None:
        """Remove every rule kube-proxy made (also after a crash, when no process is left)."""
        binary = (self._binaries.kube_proxy if self._binaries else None) or (
            node_build.node_dir() / "kube-proxy"
        )
        if os.access(binary, os.X_OK):
            subprocess.run(
                [str(binary), "--cleanup", "--v=0"], capture_output=True, check=False, timeout=60
            )

    def _kubelet_iptables_cleanup(self) -> None:
        """Remove the chains the kubelet makes for itself (kube-proxy --cleanup leaves them).

        ``KUBE-FIREWALL`` (jumped to from INPUT and OUTPUT) drops martian traffic to 127/8;
        the canary and hint chains only let it and kube-proxy detect rule flushes.
        """
        iptables = str(self._binaries.iptables if self._binaries else "iptables")
        for binary in (iptables, iptables.replace("iptables", "ip6tables")):
            if not shutil.which(binary):
                continue

            def run(*args: str, binary: str = binary) -> int:
                return subprocess.run(
                    [binary, "-w", *args], capture_output=True, check=False
                ).returncode

            for hook in ("INPUT", "OUTPUT"):
                while run("-t", "filter", "-C", hook, "-j", "KUBE-FIREWALL") == 0:
                    run("-t", "filter", "-D", hook, "-j", "KUBE-FIREWALL")
            for table in ("filter", "nat", "mangle"):
                for chain in _KUBELET_CHAINS:
                    if run("-t", table, "-F", chain) == 0:
                        run("-t", table, "-X", chain)

    def _remove_container_log_links(self) -> None:
        """The kubelet links container logs into /var/log/containers; drop links to ours."""
        links = Path("/var/log/containers")
        if not links.is_dir():
            return
        ours = str(self.layout.pod_logs)
        for link in links.iterdir():
            with _suppress_os():
                if link.is_symlink() and os.readlink(link).startswith(ours):
                    link.unlink()

    def _write_state(self) -> None:
        tmp = self.layout.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        os.replace(tmp, self.layout.state_file)


def _archive_identity(archive: Path) -> tuple[str, str]:
    """(image name, manifest digest) from an OCI archive's ``index.json``."""
    import tarfile

    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise NodeError(f"{archive} has no index.json")
        index = json.load(member)
    manifest = index["manifests"][0]
    return manifest["annotations"]["io.containerd.image.name"], manifest["digest"]
