"""Plain-text tables of metrics for the terminal."""
from __future__ import annotations


def metrics_table(metrics: dict[str, float], title: str = "metrics") -> str:
    """One row per task/metric, aligned; per-class entries (".../AP/3") are left to MLflow."""
    rows = [(key, value) for key, value in sorted(metrics.items()) if key.count("/") == 1]
    width = max([len(key) for key, _ in rows] + [len(title)])
    lines = [f"{title:<{width}}  value", f"{'-' * width}  ---------"]
    lines += [f"{key:<{width}}  {value:9.4f}" for key, value in rows]
    return "\n".join(lines)
