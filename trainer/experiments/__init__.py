"""`forkrl compare` and `forkrl sweep`: one spec trained under several objectives or settings and seeds,
with equal compute per arm, resumable, run in sequence or as Ray tasks, reported with seed bands."""
