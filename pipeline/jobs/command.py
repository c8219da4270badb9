"""What one subcommand of `python -m pipeline` is: a file in pipeline/jobs/ ends with a COMMAND of this type, and
pipeline/jobs/registry.py lists it."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

# A command returns its report, or (report, exit status) when what it found decides the status.
Result = str | tuple[str, int]


@dataclass(frozen=True)
class Command:
    name: str                                                  # as typed: `python -m pipeline <name>`
    help: str                                                  # one line, for --help
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Result]
    # Errors a user causes (bad config, missing file, unknown name): one line on stderr and exit status 2.
    user_errors: tuple[type[BaseException], ...] = ()
    takes_overrides: bool = False                              # key.path=value arguments, also after --flags
