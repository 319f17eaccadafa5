"""`python -m forkrl.rollout.verifier --host 0.0.0.0 --port 8000 [--workers N] [--config verifier.yaml]`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn
import yaml

from forkrl.rollout.lifeline import watch_from_env
from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.rollout.verifier.cgroup import remove_slot_cgroups
from forkrl.rollout.verifier.config import VerifierConfig
from forkrl.rollout.verifier.isolation import LIBRARY_UID_OFFSET, SandboxUnavailable, cgroup_name, derive_uid_base
from forkrl.rollout.verifier.probe import probe
from forkrl.rollout.verifier.server import create_app


def load_config(path: str | None, overrides: dict[str, object]) -> VerifierConfig:
    """A YAML/JSON VerifierConfig file (or the defaults) with command-line overrides applied."""
    data = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    if not isinstance(data, dict):
        raise SystemExit(f"--config {path}: expected a mapping at the top level")
    data.update({key: value for key, value in overrides.items() if value is not None})
    return VerifierConfig.model_validate(data)


def main(argv: list[str] | None = None) -> None:
    # Before the worker pool starts: its workers must not inherit the variable, and a controller that dies
    # from here on takes this service and its process group (workers, resource tracker) along.
    watch_from_env()
    parser = argparse.ArgumentParser(prog="python -m forkrl.rollout.verifier", description=__doc__)
    parser.add_argument("--host", default=LOCAL_BIND_HOST,
                        help=f"Address to bind (default {LOCAL_BIND_HOST}; 0.0.0.0 or the pod IP serves other hosts).")
    parser.add_argument("--port", type=int, default=8000, help="Port to bind (default 8000).")
    parser.add_argument("--workers", type=int, default=None, help="Worker processes (default: CPU count).")
    parser.add_argument("--run", default=None, help="`run` label on the metrics.")
    parser.add_argument("--config", default=None, help="YAML or JSON file with a VerifierConfig.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="Log every HTTP request.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, {"workers": args.workers, "run": args.run})
    probe_uid = (config.sandbox.uid_base or derive_uid_base(os.getpid())) + LIBRARY_UID_OFFSET
    try:  # required isolation is checked once here, so a host without it stops the service at start
        probe(config.sandbox, probe_uid)
    except SandboxUnavailable as error:
        raise SystemExit(f"forkrl verifier: refusing to start: {error}") from None
    finally:
        remove_slot_cgroups([cgroup_name(probe_uid)])
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=int(config.shutdown_grace_s) or None,
    )


if __name__ == "__main__":
    main()
