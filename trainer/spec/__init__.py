"""The experiment spec (`RLVRJobSpec`) and its parts."""

from forkrl.trainer.spec.job import RLVRJobSpec, SpecError, load_spec, parse_spec, spec_json_schema

__all__ = ["RLVRJobSpec", "SpecError", "load_spec", "parse_spec", "spec_json_schema"]
