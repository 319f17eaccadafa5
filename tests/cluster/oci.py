"""Write a directory tree as a single-layer OCI image-layout tar archive (what `ctr images import` reads).

No registry and no image tool: the archive is built here with tarfile, gzip, hashlib and json, so the
test cluster's nodes can import images the project made itself. The layer keeps modes, owners, symlinks
and hard links; device nodes, FIFOs and sockets are left out (runc creates /dev in every container).
Given the same tree, the layer bytes are the same: entries are sorted and the gzip header has no time.
A change to what this writes needs tests/cluster/image.py's RECIPE bumped, so cached archives are rebuilt.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LAYOUT_VERSION = "1.0.0"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# ctr names an imported image after io.containerd.image.name; the OCI key is there for other readers.
REF_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an OCI image config (`config` in the config blob). Empty fields are left out."""

    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",)
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    working_dir: str = "/"
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "User": self.user,
            "Env": list(self.env),
            "Entrypoint": list(self.entrypoint),
            "Cmd": list(self.cmd),
            "WorkingDir": self.working_dir,
            "Labels": dict(self.labels),
        }
        return {key: value for key, value in fields.items() if value}


def oci_architecture() -> str:
    """This machine's architecture in OCI spelling (the image runs on the machine that built it)."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class _HashingWriter:
    """Passes bytes through to `target` while counting them and hashing them with sha256."""

    def __init__(self, target: IO[bytes] | gzip.GzipFile) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.target.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()


def _skip(relative: str, mode: int) -> bool:
    """Device nodes, FIFOs and sockets are not image content; under /dev only directories are kept
    (debootstrap bind-mounts the host's device nodes onto plain files there)."""
    if relative == "dev" or relative.startswith("dev/"):
        return not stat.S_ISDIR(mode)
    return not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode))


def _sorted_depth_first(root: Path) -> list[str]:
    """Every path under `root`, relative: siblings by name, each directory's subtree right after it.

    A fixed order makes the layer reproducible; directories before their contents is what tar expects.
    """
    ordered: list[str] = []

    def visit(directory: str) -> None:
        with os.scandir(root / directory if directory else root) as entries:
            items = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries)
        for name, is_dir in items:
            child = f"{directory}/{name}" if directory else name
            ordered.append(child)
            if is_dir:
                visit(child)

    visit("")
    return ordered


def write_layer(rootfs: Path, out: IO[bytes]) -> tuple[str, str, int]:
    """Write `rootfs` as a gzipped tar to `out`; return (diff_id, digest, size) as OCI wants them.

    diff_id hashes the uncompressed tar (the image config lists it), digest and size describe the gzip
    blob (the manifest lists them).
    """
    compressed = _HashingWriter(out)
    # mtime=0 and no file name keep the gzip header free of build-time details; level 6 is much faster
    # than 9 on a few hundred MB for a few percent of size.
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6) as gz:
        uncompressed = _HashingWriter(gz)
        with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            first_path_of_inode: dict[tuple[int, int], str] = {}
            for relative in _sorted_depth_first(rootfs):
                source = rootfs / relative
                st = os.lstat(source)
                if _skip(relative, st.st_mode):
                    continue
                info = tarfile.TarInfo(relative)
                info.mode = stat.S_IMODE(st.st_mode)
                info.uid, info.gid = st.st_uid, st.st_gid
                info.mtime = int(st.st_mtime)  # whole seconds, so PAX needs no extra time header
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(source)
                    tar.addfile(info)
                else:
                    inode = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and inode in first_path_of_inode:
                        # A second name of a file already written: a hard link, not a second copy.
                        info.type = tarfile.LNKTYPE
                        info.linkname = first_path_of_inode[inode]
                        tar.addfile(info)
                        continue
                    if st.st_nlink > 1:
                        first_path_of_inode[inode] = relative
                    info.size = st.st_size
                    with open(source, "rb") as data:
                        tar.addfile(info, data)
    return f"sha256:{uncompressed.sha256.hexdigest()}", f"sha256:{compressed.sha256.hexdigest()}", compressed.size


def _descriptor(media_type: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(blob).hexdigest()}", "size": len(blob)}


def _json_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _add_blob(tar: tarfile.TarFile, name: str, data: IO[bytes], size: int) -> None:
    """Add a plain 0644 root-owned member with mtime 0, so the archive depends only on the content."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    tar.addfile(info, data)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    _add_blob(tar, name, io.BytesIO(data), len(data))


def write_oci_archive(rootfs: Path, archive: Path, ref: str, config: ImageConfig, history: str = "") -> str:
    """Write `rootfs` as a one-layer image named `ref` into the OCI image-layout tar `archive`.

    Returns the manifest digest. The gzip layer is first written next to `archive` (it is needed whole
    before its digest, and so its tar member name, is known), then copied in and removed.
    """
    layer_path = archive.with_name(archive.name + ".layer")
    try:
        with open(layer_path, "wb") as layer_file:
            diff_id, layer_digest, layer_size = write_layer(rootfs, layer_file)
        arch = oci_architecture()
        config_blob = _json_bytes(
            {
                "architecture": arch,
                "os": "linux",
                "config": config.as_json(),
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created_by": history or "tests/cluster/oci.py"}],
            }
        )
        manifest_blob = _json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": _descriptor(CONFIG_TYPE, config_blob),
                "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer_size}],
            }
        )
        manifest = _descriptor(MANIFEST_TYPE, manifest_blob)
        manifest["platform"] = {"architecture": arch, "os": "linux"}
        manifest["annotations"] = dict.fromkeys(REF_ANNOTATIONS, ref)
        index_blob = _json_bytes({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [manifest]})
        with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", _json_bytes({"imageLayoutVersion": LAYOUT_VERSION}))
            _add_bytes(tar, "index.json", index_blob)
            for blob in (config_blob, manifest_blob):
                _add_bytes(tar, f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
            with open(layer_path, "rb") as layer_file:
                _add_blob(tar, f"blobs/sha256/{layer_digest.removeprefix('sha256:')}", layer_file, layer_size)
        return str(manifest["digest"])
    finally:
        layer_path.unlink(missing_ok=True)
