"""forkrl.operator."""
