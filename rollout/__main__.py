"""`python -m forkrl.rollout --engine hf|vllm --model PATH`: one rollout replica over HTTP."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from forkrl.rollout.control_token import CONTROL_TOKEN_ENV, control_token_from_env
from forkrl.rollout.lifeline import watch_from_env
from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.rollout.text_only import skip_vision_packages

if TYPE_CHECKING:
    from forkrl.rollout.config import RolloutServerConfig


def parse_args(argv: list[str] | None = None) -> tuple[RolloutServerConfig, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m forkrl.rollout", description=__doc__)
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--model", required=True, help="Hugging Face model directory")
    parser.add_argument("--host", default=LOCAL_BIND_HOST,
                        help=f"Address to bind (default {LOCAL_BIND_HOST}; 0.0.0.0 or the pod IP serves other hosts).")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (see --port-file)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    parser.add_argument("--run", default="")
    parser.add_argument("--replica", default="")
    parser.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-batch-size", type=int, default=512, help="hf: rows decoded together")
    parser.add_argument("--max-context", type=int, default=None)
    parser.add_argument("--num-threads", type=int, default=None, help="hf: torch intra-op threads")
    parser.add_argument("--in-flight-policy", choices=["finish", "abort_retry", "abort"], default="finish")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vllm")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="vllm")
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir():
        parser.error(f"--model: {args.model} is not a model directory")
    if args.engine == "hf":
        skip_vision_packages()  # before transformers is imported (the configs below import it)
    # Heavy imports only once the arguments are known to be usable.
    from forkrl.rollout.config import RolloutServerConfig
    from forkrl.rollout.hf_engine import HFEngineConfig
    from forkrl.rollout.service import ServiceConfig
    from forkrl.rollout.vllm_engine import VLLMEngineConfig

    hf = HFEngineConfig(
        max_batch_size=args.max_batch_size,
        max_context=args.max_context,
        dtype=args.dtype,
        seed=args.seed,
        load_format=args.load_format,
        num_threads=args.num_threads,
    )
    vllm = VLLMEngineConfig(
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_context,
        max_num_seqs=args.max_num_seqs,
        dtype=args.dtype,
        seed=args.seed or 0,
        load_format=args.load_format,
    )
    config = RolloutServerConfig(
        engine=args.engine,
        model=args.model,
        host=args.host,
        port=args.port,
        run=args.run,
        replica=args.replica,
        hf=hf,
        vllm=vllm,
        service=ServiceConfig(in_flight_policy=args.in_flight_policy),
    )
    return config, args.port_file


def main(argv: list[str] | None = None) -> None:
    # Before the heavy imports and the model load: a controller that dies meanwhile takes this replica along.
    watch_from_env()
    try:  # before the heavy imports: a bad token stops the replica at once
        token = control_token_from_env()
    except ValueError as exc:
        sys.exit(f"forkrl rollout: {exc}")
    config, port_file = parse_args(argv)
    import uvicorn

    from forkrl.rollout.config import build_engine
    from forkrl.rollout.metrics import RolloutMetrics
    from forkrl.rollout.server import create_app

    if token is None and config.host != LOCAL_BIND_HOST:
        print(f"forkrl rollout: WARNING: {CONTROL_TOKEN_ENV} is unset: anyone who reaches {config.host} may push "
              "weights to this replica or put it to sleep", file=sys.stderr)
    engine = build_engine(config)
    app = create_app(engine, service_config=config.service, metrics=RolloutMetrics(config.run, config.replica),
                     control_token=token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    port = sock.getsockname()[1]
    if port_file is not None:
        temp = port_file.with_suffix(".tmp")
        temp.write_text(str(port))
        os.replace(temp, port_file)
    print(f"forkrl rollout: {config.engine} engine serving {config.model} on {config.host}:{port}", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    try:
        server.run(sockets=[sock])
    finally:
        engine.close()


if __name__ == "__main__":
    main()
