"""Where a process runs: device and precision, torchrun ranks and collectives, random seeds."""
