"""The commands of `python -m pipeline`, one file each, and the command line that dispatches to them."""
