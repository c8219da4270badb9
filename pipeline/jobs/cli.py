"""The command line: `python -m pipeline COMMAND ...`, dispatched to the commands pipeline/jobs/registry.py lists.
`python -m pipeline --help` lists them; `python -m pipeline COMMAND --help` gives each one's arguments."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.jobs.registry import COMMANDS


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_arguments(subparsers.add_parser(command.name, help=command.help, description=command.help))
    args, rest = parser.parse_known_args(argv)
    # `train CONFIG --resume auto a=1`: argparse stops collecting overrides at the flag; take the ones after it.
    if COMMANDS[args.command].takes_overrides and all("=" in item and not item.startswith("-") for item in rest):
        args.overrides += rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s {'' if rank == '0' else f'[rank {rank}] '}%(name)s: %(message)s")
    command = COMMANDS[args.command]
    try:
        result = command.run(args)
    except command.user_errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report, status = result if isinstance(result, tuple) else (result, 0)
    if report:
        print(report)
    return status
