"""The three fixed top-level folders install as forkrl.operator / forkrl.trainer / forkrl.rollout, both as
the editable install the suite runs on and as a normal (wheel) install; neither shadows stdlib `operator`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import forkrl.operator
import forkrl.rollout
import forkrl.trainer

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_the_folders() -> None:
    assert Path(forkrl.operator.__file__).resolve() == ROOT / "operator" / "__init__.py"
    assert Path(forkrl.trainer.__file__).resolve() == ROOT / "trainer" / "__init__.py"
    assert Path(forkrl.rollout.__file__).resolve() == ROOT / "rollout" / "__init__.py"
    import operator

    assert operator.add(2, 3) == 5
    assert Path(operator.__file__).name == "operator.py"  # the standard library's module, not ./operator/


def test_wheel_install_imports(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("forkrl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("forkrl/operator/__init__.py", "forkrl/trainer/objectives/loss.py",
                   "forkrl/rollout/verifier/server.py", "forkrl/trainer/learner/learner.py"):
        assert module in names, module
    assert not any(n.startswith(("operator/", "trainer/", "rollout/")) for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    probe = ("import forkrl.operator, forkrl.trainer.objectives, forkrl.rollout.types, operator; "
             "print(forkrl.operator.__file__); print(operator.__name__, operator.add(1, 1))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, check=True)
    first, second = result.stdout.splitlines()[:2]
    assert Path(first).resolve().is_relative_to(target.resolve())
    assert second == "operator 2"
