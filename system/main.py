"""pyqemu-system-x86_64: entry point (filled in by system/cli.py as it grows)."""

from __future__ import annotations

import sys


def main() -> None:
    """Run pyqemu-system-x86_64 with the command line in sys.argv."""
    from pyqemu.system.cli import run

    sys.exit(run(sys.argv[1:]))
