"""docker/: both Dockerfiles pass hadolint (the real binary, which does flag a bad Dockerfile), the lock pins
every dependency the package declares, the build context holds what the Dockerfiles copy, and the image
names are the charts' defaults."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from forkrl.operator.cluster_spec import DEFAULT_GPU_IMAGE, DEFAULT_IMAGE

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile.cpu", REPO / "docker" / "Dockerfile.cuda"]
HADOLINT = Path(sys.executable).with_name("hadolint")


def _hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HADOLINT), "--no-color", *map(str, paths)], capture_output=True, text=True, timeout=60)


def test_the_dockerfiles_pass_hadolint_which_flags_a_bad_one(tmp_path: Path) -> None:
    clean = _hadolint(*DOCKERFILES)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    flagged = _hadolint(bad)
    assert flagged.returncode != 0 and "DL3007" in flagged.stdout and "DL3008" in flagged.stdout


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_lock_pins_every_dependency_at_a_version_the_package_accepts() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    declared = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]]
    for requirement in declared:
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{requirement.name} is not in docker/constraints.txt (scripts/lock-images.sh)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_what_the_dockerfile_copies_is_in_the_build_context(dockerfile: Path) -> None:
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    sources = [part for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")
               for part in line.split()[1:-1]]
    assert sources, dockerfile
    for source in sources:
        assert (REPO / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is excluded by .dockerignore"


def test_the_image_names_are_the_charts_defaults() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"ghcr.io/forkrl/forkrl:{version}" == DEFAULT_IMAGE
    assert f"ghcr.io/forkrl/forkrl-cuda:{version}" == DEFAULT_GPU_IMAGE
    operator_values = yaml.safe_load((REPO / "helm" / "forkrl" / "values.yaml").read_text())
    operator_chart = yaml.safe_load((REPO / "helm" / "forkrl" / "Chart.yaml").read_text())
    assert f"{operator_values['image']['repository']}:{operator_chart['appVersion']}" == DEFAULT_IMAGE
    job_values = yaml.safe_load((REPO / "helm" / "rlvrjob" / "values.yaml").read_text())
    assert (job_values["cluster"]["image"], job_values["cluster"]["gpu_image"]) == (DEFAULT_IMAGE, DEFAULT_GPU_IMAGE)
    readme = (REPO / "docker" / "README.md").read_text()
    assert f"`{DEFAULT_IMAGE}` | `Dockerfile.cpu`" in readme and f"`{DEFAULT_GPU_IMAGE}` | `Dockerfile.cuda`" in readme
