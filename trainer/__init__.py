"""forkrl.trainer."""
