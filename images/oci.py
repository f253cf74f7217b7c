"""Write OCI image archives without a daemon, so containerd can import what we build here.

Why our own writer: these machines have no Docker engine and no registry, and the image format
is small: a layer is a tar, an image is a JSON config plus a manifest naming the layers by
digest, and an archive is an ``oci-layout`` folder packed as a tar. ``ctr images import`` reads
that directly. Writing it ourselves keeps the build to Python's standard library plus
``mmdebstrap`` for the Debian base, and makes every digest deterministic (sorted entries, fixed
mtimes), so an unchanged input gives the same layer and containerd stores it once.

Layers are left uncompressed: they never leave this machine, and gzip would cost more time than
the copy it saves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
#: Fixed mtime for files we add, so identical inputs give identical layer digests.
EPOCH = 0
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class Blob:
    """A content-addressed file on disk: its digest (``sha256:...``) and size."""

    path: Path
    digest: str
    size: int

    @property
    def hex(self) -> str:
        """The bare hex digest, the file name inside ``blobs/sha256``."""
        return self.digest.split(":", 1)[1]


def hash_file(path: Path) -> Blob:
    """Digest a file in chunks (layers are hundreds of MB; never read them whole)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return Blob(path=path, digest=f"sha256:{digest.hexdigest()}", size=size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileEntry:
    """One file to put in a layer from memory (scripts, configs, the pause binary)."""

    path: str
    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class DirEntry:
    """One directory to create in a layer with an owner, e.g. a non-root user's home."""

    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


def _tar_info(
    name: str, *, kind: bytes, mode: int, uid: int, gid: int, size: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = EPOCH
    info.size = size
    return info


def write_layer_from_entries(target: Path, entries: Iterable[FileEntry | DirEntry]) -> Blob:
    """Write a layer tar from in-memory entries, parents before children, sorted by path."""
    items = sorted(entries, key=lambda e: e.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in items:
            if isinstance(entry, DirEntry):
                info = _tar_info(
                    entry.path, kind=tarfile.DIRTYPE, mode=entry.mode, uid=entry.uid, gid=entry.gid
                )
                tar.addfile(info)
            else:
                info = _tar_info(
                    entry.path,
                    kind=tarfile.REGTYPE,
                    mode=entry.mode,
                    uid=entry.uid,
                    gid=entry.gid,
                    size=len(entry.data),
                )
                tar.addfile(info, io.BytesIO(entry.data))
    return hash_file(target)


def write_layer_from_tree(
    target: Path,
    root: Path,
    *,
    prefix: str,
    owners: Mapping[str, tuple[int, int]] | None = None,
) -> Blob:
    """Pack a host directory into a layer under ``prefix`` (e.g. ``opt/sidecar-state``).

    Everything is owned by root and read-only for others unless ``owners`` maps a relative
    path to (uid, gid): application code must not be writable by the user that runs it.
    Entries are sorted and mtimes fixed so a rebuild of unchanged files keeps its digest.
    """
    owners = owners or {}
    prefix = prefix.strip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        parts = prefix.split("/") if prefix else []
        for depth in range(1, len(parts) + 1):
            tar.addfile(
                _tar_info("/".join(parts[:depth]), kind=tarfile.DIRTYPE, mode=0o755, uid=0, gid=0)
            )
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            for name in sorted(dirnames) + sorted(filenames):
                full = Path(dirpath) / name
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                uid, gid = owners.get(rel, (0, 0))
                st = full.lstat()
                arcname = f"{prefix}/{rel}" if prefix else rel
                perm = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    info = _tar_info(arcname, kind=tarfile.SYMTYPE, mode=0o777, uid=uid, gid=gid)
                    info.linkname = os.readlink(full)
                    tar.addfile(info)
                elif stat.S_ISDIR(st.st_mode):
                    tar.addfile(
                        _tar_info(arcname, kind=tarfile.DIRTYPE, mode=perm, uid=uid, gid=gid)
                    )
                elif stat.S_ISREG(st.st_mode):
                    info = _tar_info(
                        arcname,
                        kind=tarfile.REGTYPE,
                        mode=perm,
                        uid=uid,
                        gid=gid,
                        size=st.st_size,
                    )
                    with full.open("rb") as handle:
                        tar.addfile(info, handle)
    return hash_file(target)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """The runtime parts of an image config that Dockerfiles set (USER, ENTRYPOINT, ...)."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    user: str = ""
    workdir: str = ""
    exposed_ports: Sequence[str] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        """The ``config`` object of the OCI image config, leaving out empty fields."""
        out: dict[str, object] = {"Env": list(self.env)}
        if self.entrypoint:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            out["Cmd"] = list(self.cmd)
        if self.user:
            out["User"] = self.user
        if self.workdir:
            out["WorkingDir"] = self.workdir
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out


def normalize_image_name(name: str) -> str:
    """The fully qualified name the kubelet and the CRI look up (``docker.io/...:tag``).

    A Pod's ``image: sidecar-state/hydrator:dev`` is resolved by the CRI as
    ``docker.io/sidecar-state/hydrator:dev``; an image imported under the short name is not
    found (``ErrImageNeverPull``), so archives always carry the normalized name.
    """
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if rest else f"docker.io/library/{name}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_archive(
    target: Path,
    *,
    name: str,
    layers: Sequence[Blob],
    config: ImageConfig,
) -> str:
    """Write an OCI archive (a tar of an ``oci-layout``) naming the image ``name``.

    ``name`` is normalized first (``normalize_image_name``). Layers are streamed from their
    files, never read whole into memory.
    Both the OCI ``ref.name`` and containerd's ``io.containerd.image.name`` annotations carry
    the full name, so ``ctr images import`` tags it exactly as given. Returns the manifest
    digest, which identifies the image content.
    """
    name = normalize_image_name(name)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config.as_json(),
        "rootfs": {"type": "layers", "diff_ids": [blob.digest for blob in layers]},
        "history": [{"created_by": "sidecar-state images/build.py"} for _ in layers],
    }
    config_bytes = _json_bytes(image_config)
    config_digest = f"sha256:{hashlib.sha256(config_bytes).hexdigest()}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": blob.digest, "size": blob.size}
            for blob in layers
        ],
    }
    manifest_bytes = _json_bytes(manifest)
    manifest_digest = f"sha256:{hashlib.sha256(manifest_bytes).hexdigest()}"
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name,
                },
            }
        ],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w") as tar:

        def add_bytes(arcname: str, data: bytes) -> None:
            info = _tar_info(
                arcname, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, size=len(data)
            )
            tar.addfile(info, io.BytesIO(data))

        tar.addfile(_tar_info("blobs", kind=tarfile.DIRTYPE, mode=0o755, uid=0, gid=0))
        tar.addfile(_tar_info("blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755, uid=0, gid=0))
        add_bytes("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
        add_bytes("index.json", _json_bytes(index))
        add_bytes(f"blobs/sha256/{manifest_digest.split(':')[1]}", manifest_bytes)
        add_bytes(f"blobs/sha256/{config_digest.split(':')[1]}", config_bytes)
        seen: set[str] = set()
        for blob in layers:
            if blob.digest in seen:
                continue
            seen.add(blob.digest)
            info = _tar_info(
                f"blobs/sha256/{blob.hex}", kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0,
                size=blob.size,
            )  # fmt: skip
            with blob.path.open("rb") as handle:
                tar.addfile(info, handle)
    os.replace(partial, target)
    return manifest_digest


def copy_blob(blob: Blob, directory: Path) -> Blob:
    """Store a layer under its digest in a cache folder (idempotent) and return the copy."""
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / f"{blob.hex}.tar"
    if not dest.exists():
        partial = dest.with_name(dest.name + ".partial")
        shutil.copyfile(blob.path, partial)
        os.replace(partial, dest)
    return dataclasses.replace(blob, path=dest)
