"""Every command of `python -m pipeline`, in the order --help lists them. A new command is one file in
pipeline/jobs/ ending with a COMMAND (pipeline/jobs/command.py) plus one line here."""
from __future__ import annotations

from pipeline.jobs import (check_data, compare, evaluate, explain, export, lr_find, predict, prune, replay, report,
                           sample, summary, train, tune)
from pipeline.jobs.command import Command

COMMANDS: dict[str, Command] = {command.name: command for command in (
    train.COMMAND,
    compare.COMMAND,
    evaluate.COMMAND,
    export.COMMAND,
    predict.COMMAND,
    summary.COMMAND,
    prune.COMMAND,
    sample.COMMAND,
    replay.COMMAND,
    explain.COMMAND,
    report.COMMAND,
    check_data.COMMAND,
    tune.COMMAND,
    lr_find.COMMAND,
)}
