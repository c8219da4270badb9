"""The run's local copy of everything tracked: one JSON object per line in `<run folder>/metrics.jsonl`.

Written as the run goes (the tracker appends every metric before it tries to send it), read back by
`python -m pipeline replay`, which sends the server whatever it does not have yet. Events:

    {"event": "run", "run_id", "uri", "experiment", "run_name", "params": {...}, "tags": {...}}
    {"event": "metrics", "step": 12, "timestamp": <ms>, "values": {"train/loss": 0.5, ...}}
    {"event": "artifact_not_uploaded", "path": "/abs/last.pt", "folder": "checkpoints"}
    {"event": "model_not_logged", "reason": "..."}
    {"event": "end", "status": "FINISHED"}
    {"event": "replayed", "run_id": "<server run id>", "uri": "<store>"}   (replay of a local-only run)

NaN and infinities are written as JSON's common extension tokens (NaN, Infinity), which json reads back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

FILE_NAME = "metrics.jsonl"


@dataclass
class MetricRecord:
    key: str
    value: float
    step: int
    timestamp: int                      # ms since the epoch; with key and step, what identifies a value


@dataclass
class RunRecord:
    """What a run log holds, in the order it was written."""
    run_id: str
    uri: str
    experiment: str
    run_name: str | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: list[MetricRecord] = field(default_factory=list)
    artifacts_not_uploaded: list[tuple[str, str | None]] = field(default_factory=list)  # (path, folder)
    model_not_logged: bool = False
    status: str | None = None          # set by the end event
    replayed: dict[str, str] = field(default_factory=dict)  # uri -> run id created on that store by replay


class RunLog:
    """Appends events to the run's JSONL file; until `open` names the file, events wait in memory."""

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] = []
        self._file: TextIO | None = None
        self.path: Path | None = None

    def open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        cut_short = _ends_mid_line(path)
        self._file = path.open("a", encoding="utf-8")
        if cut_short:  # a crash cut the last line; start ours on a line of their own
            self._file.write("\n")
        self._file.writelines(_line(event) for event in self._pending)
        self._file.flush()
        self._pending.clear()

    def append(self, event: dict[str, Any]) -> None:
        if self._file is None:
            self._pending.append(event)
            return
        self._file.write(_line(event))
        # Flushed at once so a crash loses nothing the OS has not got; no fsync, which would cost milliseconds.
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def append_event(path: Path, event: dict[str, Any]) -> None:
    """One event added to an existing run log (replay records what it did)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(_line(event))


def _ends_mid_line(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def _line(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"


def read_run_log(path: Path) -> RunRecord:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run log here (the tracker writes {FILE_NAME} in the run's folder)")
    record: RunRecord | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            # A crash can cut the last line short; everything before it is still good.
            continue
        kind = event.get("event")
        if kind == "run":
            if record is None:  # a resumed run appends another header; the first one created the run
                record = RunRecord(event["run_id"], event["uri"], event["experiment"], event.get("run_name"),
                                   event.get("params", {}), event.get("tags", {}))
            continue
        if record is None:
            raise ValueError(f"{path}:{number}: expected the 'run' event first, got {kind!r}")
        _apply(record, event)
    if record is None:
        raise ValueError(f"{path}: no 'run' event; not a run log")
    return record


def last_logged_steps(path: Path) -> dict[str, int]:
    """Each metric key's last logged step."""
    last: dict[str, int] = {}
    for metric in read_run_log(path).metrics:
        last[metric.key] = max(metric.step, last.get(metric.key, metric.step))
    return last


def _apply(record: RunRecord, event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "metrics":
        record.metrics += [MetricRecord(key, float(value), int(event["step"]), int(event["timestamp"]))
                           for key, value in event["values"].items()]
    elif kind == "artifact_not_uploaded":
        record.artifacts_not_uploaded.append((event["path"], event.get("folder")))
    elif kind == "model_not_logged":
        record.model_not_logged = True
    elif kind == "end":
        record.status = event["status"]
    elif kind == "replayed":
        record.replayed[event["uri"]] = event["run_id"]
