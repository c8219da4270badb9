"""The training loop and what it steps: optimiser step, hooks, checkpoints, schedules, validation, loaders."""
