"""Looking at data before training: the guard `train` runs, and the full `check-data` report."""
