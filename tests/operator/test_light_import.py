"""The operator only talks to the Kubernetes API: importing it (and the job spec it validates) must not
pull torch, transformers, megatron, vLLM or Ray (issue 16; bench/operator.py --startup measures the cost).

Each check runs in a fresh interpreter whose `sys.meta_path` refuses those packages, so a new eager import
anywhere under the operator or `forkrl.trainer.spec` fails here with the import chain in the traceback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "megatron", "vllm", "ray")

BLOCKER = textwrap.dedent(
    f"""
    import sys

    HEAVY = {HEAVY!r}


    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{{name}} is blocked: the operator must not import it")
            return None


    sys.meta_path.insert(0, Refuse())


    def assert_light():
        loaded = sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)
        assert not loaded, f"heavy modules imported: {{loaded}}"
    """
)


def run_blocked(body: str, *argv: str) -> subprocess.CompletedProcess[str]:
    code = BLOCKER + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_operator_and_spec_import_and_validate_without_heavy_packages() -> None:
    result = run_blocked(
        """
        import importlib
        import pkgutil

        import forkrl.operator
        import forkrl.operator.__main__  # its module body only: main() runs under `__name__ == "__main__"`
        import forkrl.operator.handlers
        import forkrl.operator.reconcile
        import forkrl.trainer.spec

        # Every other operator module too (the CRD generator, the child builders, ...).
        for module in pkgutil.iter_modules(forkrl.operator.__path__, "forkrl.operator."):
            importlib.import_module(module.name)

        from forkrl.operator.resource import RLVRJobResourceSpec
        from forkrl.trainer.spec import load_spec, parse_spec, spec_json_schema

        spec = load_spec("examples/local-arith.yaml")
        assert spec.model.tiny is not None, spec.model
        # The same experiment through the operator's model of the RLVRJob spec, as the handlers validate it
        # (a tiny model on a cluster needs a volume to be written to).
        resource = RLVRJobResourceSpec.model_validate(
            {**spec.model_dump(mode="json"), "cluster": {"storage": {"claim_name": "runs"}}}
        )
        assert parse_spec(resource.model_dump(mode="json", exclude={"suspend", "cluster"})) == spec
        assert spec_json_schema()["title"] == "RLVRJobSpec"
        assert_light()
        print("light")
        """
    )
    assert result.stdout.strip() == "light"


def test_operator_help_runs_without_heavy_packages() -> None:
    result = run_blocked(
        """
        import runpy

        sys.argv = ["forkrl.operator", "--help"]
        try:
            runpy.run_module("forkrl.operator", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        assert_light()
        """
    )
    assert "--kubeconfig" in result.stdout


def test_the_blocker_blocks() -> None:
    """The checks above mean something: the same preamble makes `import torch` fail."""
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER + "\nimport torch\n"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "torch is blocked" in result.stderr
