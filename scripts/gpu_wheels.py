"""Build `.gpu-wheels/`: the wheels `scripts/gpu-check.sh` installs on a bare CUDA machine with no network.

That machine brings Python 3.12 and its own torch + CUDA; everything else the GPU check imports (megatron-core,
transformers, pytest and the suite's plugins, ...) is carried in as wheels. The set is the dependency closure of
ROOTS as installed in this project's environment (same versions as the CPU suite ran), minus torch and the
CUDA/Triton wheels that come with torch there, downloaded from PyPI for CPython 3.12 on manylinux x86-64.

    python scripts/gpu_wheels.py            # writes .gpu-wheels/ (git-ignored), prints its size
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("megatron-core", "transformers", "safetensors", "pydantic", "pyyaml", "numpy", "pytest", "pytest-timeout",
         "pytest-xdist", "hypothesis", "httpx", "prometheus-client", "psutil")
# Shipped with the machine's torch (or only its dependencies): never carried, whatever the closure says.
PROVIDED = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|setuptools|sympy|mpmath|networkx|jinja2|markupsafe)$")
LIMIT_MIB = 56  # the device tool carries at most 64 MiB of working tree in all


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...]) -> dict[str, str]:
    """{distribution: installed version} of `roots` and everything they require (markers for this Python)."""
    found: dict[str, str] = {}
    pending = [canonical(r) for r in roots]
    while pending:
        name = pending.pop()
        if name in found or PROVIDED.match(name):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here is not needed there either
        found[name] = dist.version
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            if "extra ==" in marker:
                continue
            pending.append(canonical(re.split(r"[\s\[<>=!~(]", spec.strip(), maxsplit=1)[0]))
    return found


def download(pins: dict[str, str], target: Path) -> None:
    target.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(target),
               "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
               "--abi", "none", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
               "--platform", "manylinux_2_17_x86_64", "--platform", "any", "--quiet",
               *[f"{name}=={version}" for name, version in sorted(pins.items())]]
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=REPO / ".gpu-wheels")
    args = parser.parse_args()
    pins = closure(ROOTS)
    download(pins, args.dest)
    wheels = sorted(args.dest.glob("*.whl"))
    size_mib = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels for {len(pins)} distributions in {args.dest}: {size_mib:.1f} MiB")
    if size_mib > LIMIT_MIB:
        print(f"gpu_wheels: {size_mib:.1f} MiB is over the {LIMIT_MIB} MiB the device tool can carry", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
