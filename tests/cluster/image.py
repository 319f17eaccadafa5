"""Container images for the test cluster's real nodes, built here and imported into containerd without a registry.

Two images, each a single-layer OCI image-layout tar (written by tests/cluster/oci.py):

- base: a `debootstrap --variant=minbase` Debian rootfs with python3 and a few tools. Pods mount the host's
  interpreter (/root/.pyenv/versions/...) and venv (/root/.cache/forkrl/venv) into it and run as a non-root
  user, so the image carries the shared libraries the interpreter's lib-dynload modules link against.
- pause: the pod sandbox image containerd's CRI starts first in every pod: Debian's static `catatonit` in
  pause mode, alone in the rootfs.

Archives are cached in ${FORKRL_IMAGE_CACHE:-~/.cache/forkrl/images}, named by a digest of the recipe's inputs,
so a warm call is one stat and a changed recipe builds a new image next to the old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.oci import ImageConfig, oci_architecture, write_oci_archive

# Bump when the build steps below, or the archive tests/cluster/oci.py writes, change in a way the other
# inputs of the cache key do not show; a new value builds new archives under new tags.
RECIPE = 1
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# On top of minbase: python3 (its libpython3.11-stdlib dependency brings libssl3, libffi8, libsqlite3-0,
# libbz2-1.0, liblzma5, libncursesw6, libreadline8, libnsl2, libuuid1 ... which the mounted pyenv
# interpreter's lib-dynload needs too), iproute2 (`ip`, `ss` for debugging pod networking), procps (`ps`,
# `pkill` for Ray's process handling), ca-certificates (TLS to the API server and elsewhere) and wget
# (KubeRay's default liveness and readiness probes of Ray pods run `wget`, as Ray's own images have it).
BASE_PACKAGES = ("python3", "iproute2", "procps", "ca-certificates", "wget")
PAUSE_PACKAGE = "catatonit"
PAUSE_ENTRYPOINT = ("/catatonit", "-P")  # -P: pause mode, no child, just reap and wait for a signal
REGISTRY = "forkrl.test"  # a name no real registry answers to, so containerd never tries to pull these
USER, UID, GID = "forkrl", 1000, 1000
# Removed from the base rootfs to shrink it: nothing in a pod reads docs or apt's package lists.
BASE_PRUNE = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*/",  # translations; the C.UTF-8 locale lives in /usr/lib/locale and stays
    "var/lib/apt/lists/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/debconf/*-old",
    "var/log/*.log",
    "var/log/apt/*",
)
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(RuntimeError):
    """Building an image failed; the message quotes the failing tool's output."""


class ImageImportError(RuntimeError):
    """`ctr images import` failed; the message quotes ctr's stderr."""


@dataclass(frozen=True)
class ImageArchive:
    """An OCI image-layout tar and the reference containerd knows the image by once it is imported."""

    path: Path  # the OCI layout tar
    ref: str  # e.g. "forkrl.test/base:<digest12>"; the tag is the digest of the recipe's inputs


def image_cache_dir(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return cache_dir
    return Path(os.environ.get("FORKRL_IMAGE_CACHE") or Path.home() / ".cache/forkrl/images")


def _log(message: str, started: float) -> None:
    print(f"[forkrl image] {message} ({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)


def _run(args: list[str], what: str, cwd: Path | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PATH": SBIN_PATH})
    if result.returncode != 0:
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): {' '.join(args)}\n{result.stderr.strip()}")
    return result.stdout


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve())
    # /proc/mounts escapes spaces and the like as octal (\040); unicode_escape undoes that for ASCII paths.
    points = {
        line.split()[1].encode().decode("unicode_escape") for line in Path("/proc/mounts").read_text().splitlines()
    }
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


def unmount_under(path: Path) -> None:
    """Unmount everything mounted at or below `path` (debootstrap mounts /proc, /sys and host device nodes
    into its target and leaves them when it is killed; containerd leaves rootfs and shm mounts)."""
    for point in mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True)


def remove_tree(path: Path) -> None:
    """Unmount what is mounted below `path`, then delete it; refuse to delete through a mount that stayed
    (rmtree would otherwise reach into whatever is mounted there, such as the host's /dev)."""
    if not path.exists():
        return
    unmount_under(path)
    if left := mounts_under(path):
        raise ImageBuildError(f"cannot remove {path}: still mounted there: {', '.join(left)}")
    shutil.rmtree(path)


def _input_key(kind: str, *inputs: object) -> str:
    """12 hex digits naming one recipe: changing any input gives a new archive file and image tag."""
    payload = json.dumps([RECIPE, kind, SUITE, MIRROR, oci_architecture(), *inputs], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _cached_image(
    kind: str, key: str, cache_dir: Path | None, build: Callable[[Path, Path, float], ImageConfig]
) -> ImageArchive:
    """Return the cached archive for (kind, key), building it first under an exclusive lock.

    `build(rootfs, staging, started)` fills `rootfs` and returns the image config; the archive is written in
    the staging dir and renamed into place, so a reader never sees a partial file.
    """
    directory = image_cache_dir(cache_dir)
    archive = ImageArchive(directory / f"{kind}-{key}.tar", f"{REGISTRY}/{kind}:{key}")
    if archive.path.exists():
        return archive
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f".{kind}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the archive built
        if archive.path.exists():
            return archive
        # Left by a build that was killed; only the lock holder builds this kind, so none is in use.
        for stale in directory.glob(f".build-{kind}-*"):
            remove_tree(stale)
        started = time.monotonic()
        _log(f"building {archive.ref} into {archive.path}", started)
        staging = Path(tempfile.mkdtemp(prefix=f".build-{kind}-", dir=directory))
        try:
            rootfs = staging / "rootfs"
            config = build(rootfs, staging, started)
            _log("writing the OCI archive", started)
            partial = staging / "image.tar"
            write_oci_archive(rootfs, partial, archive.ref, config, history=f"forkrl {kind} image, recipe {RECIPE}")
            os.replace(partial, archive.path)
        finally:
            remove_tree(staging)
        _log(f"built {archive.path.name}, {archive.path.stat().st_size / 2**20:.1f} MiB", started)
    return archive


def _debootstrap(rootfs: Path, started: float) -> None:
    """Run debootstrap, relaying its phase lines (not one per package) and a line at least every 15 s."""
    args = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        f"--keyring={KEYRING}",
        SUITE,
        str(rootfs),
        MIRROR,
    ]
    _log(f"debootstrap: {' '.join(args)}", started)
    per_package = ("I: Retrieving ", "I: Validating ", "I: Extracting ", "I: Unpacking ", "I: Configuring ")
    recent: deque[str] = deque(maxlen=40)
    last_shown = time.monotonic()
    env = {**os.environ, "PATH": SBIN_PATH, "DEBIAN_FRONTEND": "noninteractive"}
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            recent.append(line)
            if (line.startswith(("I: ", "W: ", "E: ")) and not line.startswith(per_package)) or (
                time.monotonic() - last_shown >= 15
            ):
                _log(f"debootstrap {line}", started)
                last_shown = time.monotonic()
    if process.returncode != 0:
        log = rootfs / "debootstrap/debootstrap.log"
        details = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
        raise ImageBuildError(
            f"debootstrap failed (exit {process.returncode}):\n" + "\n".join(recent) + f"\n{log}:\n{details}"
        )


def _build_base(rootfs: Path, staging: Path, started: float) -> ImageConfig:
    _debootstrap(rootfs, started)
    # Pods bind-mount the venv and interpreter below /root and run as a non-root user, who must be able
    # to traverse /root to reach them.
    (rootfs / "root").chmod(0o755)
    # --no-log-init: no lastlog/faillog entries (lastlog is a sparse file indexed by uid).
    _run(["chroot", str(rootfs), "groupadd", "--gid", str(GID), USER], "groupadd")
    _run(
        ["chroot", str(rootfs), "useradd", "--uid", str(UID), "--gid", str(GID), "--create-home",
         "--home-dir", f"/home/{USER}", "--shell", "/bin/bash", "--no-log-init", USER],
        "useradd",
    )  # fmt: skip
    for pattern in BASE_PRUNE:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # debootstrap copies the build host's resolv.conf and hostname; the runtime provides both in a pod.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).unlink(missing_ok=True)
    _log(f"debootstrap done, rootfs {_tree_size(rootfs) / 2**20:.0f} MiB", started)
    # The config's user stays empty: pods choose theirs with runAsUser.
    return ImageConfig(cmd=("python3",))


def _tree_size(root: Path) -> int:
    return sum(os.lstat(Path(d) / f).st_size for d, _, files in os.walk(root) for f in files)


def _build_pause(rootfs: Path, staging: Path, started: float) -> ImageConfig:
    download = staging / "deb"
    download.mkdir()
    # The download goes into our 0700 temp dir, which apt's sandbox user `_apt` cannot write; run it as root.
    apt_download = ["apt-get", "download", "-o", "APT::Sandbox::User=root", PAUSE_PACKAGE]
    try:
        _run(apt_download, "apt-get download", cwd=download)
    except ImageBuildError:
        _run(["apt-get", "update", "-qq"], "apt-get update")  # the package lists may be absent or stale
        _run(apt_download, "apt-get download", cwd=download)
    (deb,) = download.glob(f"{PAUSE_PACKAGE}_*.deb")
    _log(f"extracting {deb.name}", started)
    _run(["dpkg-deb", "-x", str(deb), str(staging / "extracted")], "dpkg-deb -x")
    binary = staging / "extracted/usr/bin/catatonit"
    rootfs.mkdir()
    shutil.copy2(binary, rootfs / "catatonit")
    (rootfs / "catatonit").chmod(0o755)
    # Debian builds catatonit static; should a later build not be, copy the libraries ldd names.
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if ldd.returncode == 0:
        for line in ldd.stdout.splitlines():
            library = next((word for word in line.split() if word.startswith("/")), None)
            if library is not None:
                target = rootfs / library.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(library, target)  # follows symlinks: the soname path gets the real file
    return ImageConfig(entrypoint=PAUSE_ENTRYPOINT)


def base_image(cache_dir: Path | None = None) -> ImageArchive:
    """The base image for pods (python3 on Debian minbase, user forkrl 1000:1000), built on first use.

    A cold build runs debootstrap (minutes, network to the Debian mirror, root) and prints progress to
    stderr; a warm call is a stat of the cached archive.
    """
    return _cached_image("base", _input_key("base", BASE_PACKAGES, BASE_PRUNE, USER, UID, GID), cache_dir, _build_base)


def pause_image(cache_dir: Path | None = None) -> ImageArchive:
    """The pod sandbox ("pause") image: /catatonit from Debian's package, run as `catatonit -P`."""
    return _cached_image("pause", _input_key("pause", PAUSE_PACKAGE, PAUSE_ENTRYPOINT), cache_dir, _build_pause)


def import_image(archive: ImageArchive, ctr_address: Path) -> None:
    """Import `archive` into the k8s.io namespace (the one CRI uses) of the containerd at `ctr_address`
    and unpack it for the default snapshotter; raise ImageImportError quoting ctr's stderr on failure."""
    base = ["ctr", "--address", str(ctr_address), "--namespace", "k8s.io"]
    command = [*base, "images", "import", str(archive.path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise ImageImportError(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    listed = subprocess.run([*base, "images", "list", "--quiet"], capture_output=True, text=True, timeout=60)
    if archive.ref not in listed.stdout.split():
        # ctr names OCI imports from the index annotations; a different name would leave pods without the image.
        raise ImageImportError(
            f"{' '.join(command)} did not create {archive.ref}; images now: {listed.stdout.split()}\n{listed.stderr}"
        )


if __name__ == "__main__":  # `python -m tests.cluster.image` builds both ahead of a test run
    for image in (pause_image(), base_image()):
        print(image.ref, image.path)
