"""`python -m pipeline --help` lists every command of the registry with its one-line description, and each
command parses its own arguments."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.jobs.cli import parse_args
from pipeline.jobs.registry import COMMANDS

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_command_with_its_description():
    done = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())        # argparse wraps the descriptions
    assert set(COMMANDS) == {"train", "compare", "eval", "predict", "export", "summary", "sample", "replay",
                             "explain", "report", "check-data", "prune", "tune", "lr-find"}
    for name, command in COMMANDS.items():
        assert f"{name} {command.help}" in text, name


def test_overrides_after_a_flag_still_reach_the_command():
    args = parse_args(["train", "c.yaml", "a=1", "--resume", "auto", "b=2"])
    assert (args.command, args.config, args.overrides, args.resume) == ("train", "c.yaml", ["a=1", "b=2"], "auto")


def test_a_stray_argument_is_refused_by_a_command_without_overrides():
    with pytest.raises(SystemExit):
        parse_args(["sample", "last.pt", "a=1"])
