"""`forkrl analyze`: entropy analyses of a checkpoint's responses (the 80/20 paper's measurements).

- `histogram.py`: a streaming log-scale histogram of per-token entropies (percentiles, share below 1e-2).
- `positions.py`: the top/bottom-rho entropy positions of one response.
- `token_table.py`: which tokens most often sit at the highest / lowest entropy positions.
- `overlap.py`: how far two checkpoints agree on where the high-entropy positions of the same responses are.
- `scoring.py`: per-token entropies of given responses under a checkpoint, one response at a time.
- `cli.py`: the subcommands, each writing JSON and a PNG.
"""
