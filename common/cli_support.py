"""Command-line plumbing the tools share (library code: no typer, no argparse)."""

from __future__ import annotations

import os
import sys

__all__ = ["silence_stdout"]


def silence_stdout() -> None:
    """After a broken pipe on stdout (``| head``): point it at /dev/null, so
    that the flush at exit does not fail again and the tool stops quietly, as
    a C tool would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
