"""Hyperparameter search (`python -m pipeline tune`) and the learning-rate range test (`lr-find`): the search
space file, the pruning hook and the range test's arithmetic. The commands are in pipeline/jobs/."""
