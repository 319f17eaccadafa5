"""The node images (tests/cluster/image.py) and their OCI writer (tests/cluster/oci.py).

The fast test checks the archive format on a tiny tree. The slow one builds (or reuses) the real base and
pause images, imports them into a throwaway containerd with `ctr` and runs a container from each.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.image import ImageArchive, base_image, import_image, pause_image, remove_tree
from tests.cluster.oci import DEFAULT_PATH, REF_ANNOTATIONS, ImageConfig, write_oci_archive
from tests.cluster.processes import ManagedProcess, wait_until

TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "debootstrap", "apt-get", "dpkg-deb", "chroot")


def _tiny_tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin/tool").chmod(0o4755)  # setuid survives
    os.link(root / "bin/tool", root / "bin/tool-again")
    (root / "bin/sh").symlink_to("tool")
    (root / "etc").mkdir()
    (root / "etc/secret").write_text("x")
    (root / "etc/secret").chmod(0o640)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "dev/pts").mkdir(parents=True)
    (root / "dev/null").write_text("")  # stands in for a device node: under /dev only directories are kept
    os.mkfifo(root / "etc/fifo")  # not image content
    if os.geteuid() == 0:
        os.chown(root / "etc/secret", 1000, 1000)


def _blob_named(outer: tarfile.TarFile, name: str) -> bytes:
    member = outer.extractfile(name)
    assert member is not None, name
    return member.read()


def _blob(outer: tarfile.TarFile, digest: str) -> bytes:
    return _blob_named(outer, f"blobs/sha256/{digest.removeprefix('sha256:')}")


def test_oci_archive_layout(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    _tiny_tree(root)
    ref = "forkrl.test/tiny:0123456789ab"
    archive = tmp_path / "tiny.tar"
    manifest_digest = write_oci_archive(root, archive, ref, ImageConfig(cmd=("sh",)))

    with tarfile.open(archive) as outer:
        names = set(outer.getnames())
        assert {"oci-layout", "index.json"} <= names
        for name in names - {"oci-layout", "index.json"}:
            assert name.startswith("blobs/sha256/")
            assert hashlib.sha256(_blob(outer, name.rsplit("/", 1)[1])).hexdigest() == name.rsplit("/", 1)[1]
        assert json.loads(_blob_named(outer, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads(_blob_named(outer, "index.json"))
        (descriptor,) = index["manifests"]
        assert descriptor["digest"] == manifest_digest
        assert all(descriptor["annotations"][key] == ref for key in REF_ANNOTATIONS)
        manifest_blob = _blob(outer, manifest_digest)
        assert descriptor["size"] == len(manifest_blob)
        manifest = json.loads(manifest_blob)
        config_blob = _blob(outer, manifest["config"]["digest"])
        assert manifest["config"]["size"] == len(config_blob)
        config = json.loads(config_blob)
        (layer_descriptor,) = manifest["layers"]
        layer_blob = _blob(outer, layer_descriptor["digest"])
        assert layer_descriptor["size"] == len(layer_blob)

    assert descriptor["platform"] == {"architecture": config["architecture"], "os": "linux"}
    assert config["config"] == {"Cmd": ["sh"], "Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"}
    layer_tar = gzip.decompress(layer_blob)
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"]
    assert layer_blob[4:8] == b"\0\0\0\0"  # gzip header mtime: no build time in the blob

    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as layer:
        members = {member.name: member for member in layer.getmembers()}
    assert list(members) == sorted(members, key=lambda name: name.split("/"))  # parents first, by name
    assert set(members) == {"bin", "bin/sh", "bin/tool", "bin/tool-again", "dev", "dev/pts", "etc", "etc/secret", "tmp"}
    assert members["bin/tool"].isfile() and members["bin/tool"].mode == 0o4755
    assert members["bin/tool-again"].islnk() and members["bin/tool-again"].linkname == "bin/tool"
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "tool"
    assert members["etc/secret"].mode == 0o640
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    if os.geteuid() == 0:
        assert (members["etc/secret"].uid, members["etc/secret"].gid) == (1000, 1000)

    again = tmp_path / "again.tar"
    write_oci_archive(root, again, ref, ImageConfig(cmd=("sh",)))
    assert again.read_bytes() == archive.read_bytes()  # same tree, same bytes


# ---- the real images in a real containerd ----


def _ctr(socket: Path, *args: str, timeout: float = 120) -> str:
    command = ["ctr", "--address", str(socket), "--namespace", "k8s.io", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def node_images(pytestconfig: pytest.Config) -> tuple[ImageArchive, ImageArchive]:
    if os.geteuid() != 0:
        pytest.skip("building and running node images needs root (debootstrap, chroot, containerd)")
    if missing := [tool for tool in TOOLS if shutil.which(tool) is None]:
        pytest.skip(f"missing {', '.join(missing)}; scripts/setup.sh installs them from Debian")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    # A cold base build takes minutes; let its progress lines reach the terminal.
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        started = time.monotonic()
        images = base_image(), pause_image()
        print(f"[forkrl image] images ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return images


@pytest.fixture
def scratch_containerd() -> Iterator[tuple[Path, str]]:
    """A containerd of our own (root, state, socket in a short temp dir); yields (socket, cgroup parent).

    CRI is disabled: this check needs only images and tasks. restrict_oom_score_adj is set as the nodes
    set it (this machine has no CAP_SYS_RESOURCE). Containers go under their own cgroup parent, removed after.
    """
    workdir = Path(tempfile.mkdtemp(prefix="forkrl-ctrd-"))
    socket = workdir / "containerd.sock"
    (workdir / "config.toml").write_text(
        f"""version = 2
root = "{workdir}/root"
state = "{workdir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
"""
    )
    containerd_bin = shutil.which("containerd")
    assert containerd_bin is not None
    process = ManagedProcess("containerd", [containerd_bin, "--config", str(workdir / "config.toml")], workdir / "log")
    cgroup_parent = f"forkrl-image-test-{os.getpid()}"
    try:
        process.start()
        version = ["ctr", "--address", str(socket), "version"]
        wait_until(lambda: subprocess.run(version, capture_output=True).returncode == 0, "containerd", 30, [process])
        yield socket, cgroup_parent
    finally:
        process.stop()
        remove_tree(workdir)  # unmounts leftover rootfs mounts first
        for cgroup in [*Path("/sys/fs/cgroup").glob(f"*/{cgroup_parent}"), Path("/sys/fs/cgroup") / cgroup_parent]:
            with contextlib.suppress(OSError):
                cgroup.rmdir()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a cold debootstrap is minutes over the network
def test_images_run_in_containerd(
    node_images: tuple[ImageArchive, ImageArchive], scratch_containerd: tuple[Path, str]
) -> None:
    base, pause = node_images
    socket, cgroup_parent = scratch_containerd
    for archive in (base, pause):
        import_image(archive, socket)
    assert {base.ref, pause.ref} <= set(_ctr(socket, "images", "list", "--quiet").split())

    def run(name: str, *args: str) -> str:
        return _ctr(socket, "run", "--rm", "--cgroup", f"/{cgroup_parent}/{name}", base.ref, name, *args)

    assert run("forkrl-python", "python3", "-c", "print(1+1)").strip() == "2"

    # What a pod does: the host's interpreter and venv mounted at their own paths, run as non-root.
    # Needs /root traversable and the image's libraries for every lib-dynload module imported here.
    interpreter = Path(sys.base_prefix).resolve()
    if not interpreter.is_relative_to("/usr"):  # mounting a system /usr over the image's would test nothing
        mounts = {interpreter, Path(sys.prefix)}
        options = [f"--mount=type=bind,src={path},dst={path},options=rbind:ro" for path in sorted(mounts)]
        probe = (
            "import os, pwd, ssl, sqlite3, ctypes, bz2, lzma, readline, curses, uuid, hashlib, zlib, decimal;"
            "print(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name, pwd.getpwuid(1000).pw_dir)"
        )
        output = _ctr(
            socket, "run", "--rm", "--cgroup", f"/{cgroup_parent}/forkrl-mounted", *options, base.ref,
            "forkrl-mounted", "setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", sys.executable, "-c", probe,
        )  # fmt: skip
        assert output.split() == ["1000", "1000", "forkrl", "/home/forkrl"]

    # The sandbox image: catatonit in pause mode stays up until it is signalled.
    _ctr(socket, "run", "--detach", "--cgroup", f"/{cgroup_parent}/forkrl-pause", pause.ref, "forkrl-pause")
    try:
        status: dict[str, tuple[str, str]] = {}

        def task_running() -> bool:
            rows = [line.split() for line in _ctr(socket, "tasks", "list").splitlines()[1:]]
            status.update({row[0]: (row[1], row[2]) for row in rows if len(row) == 3})
            return status.get("forkrl-pause", ("", ""))[1] == "RUNNING"

        wait_until(task_running, "the pause container's task to run", 30)
        time.sleep(1)  # still running a moment later: it did not exit straight away
        assert task_running()
        pid = status["forkrl-pause"][0]
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"/catatonit\0-P\0"
        _ctr(socket, "tasks", "kill", "--signal", "SIGTERM", "forkrl-pause")
        wait_until(lambda: not task_running() and status["forkrl-pause"][1] == "STOPPED", "catatonit to stop", 30)
    finally:
        with contextlib.suppress(AssertionError):
            _ctr(socket, "tasks", "kill", "--signal", "SIGKILL", "forkrl-pause")
        with contextlib.suppress(AssertionError):
            _ctr(socket, "tasks", "delete", "forkrl-pause")
        _ctr(socket, "containers", "delete", "forkrl-pause")
