"""MLflow: the run tracker, its background sender and local run log, replay, tags, figures and model logging."""
