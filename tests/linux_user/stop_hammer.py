"""Run pyqemu-<arch> with an emu_stop on the running engine every ~0.5 ms (a stress
harness for tests/linux_user/test_stop_exact.py, not a test).

    python3 tests/linux_user/stop_hammer.py arm|aarch64 program [args...]

Besides the watchdog, a host thread stops whichever guest thread runs at random
intervals (0-1 ms), as an asynchronous interrupt would; the run loop then restarts
the engine at its PC (or hands the lock over). The number of stops is printed on
stderr as ``stops: N`` when the process ends.
"""

from __future__ import annotations

import random
import sys
import threading
import time

from pyqemu.linux_user import loop, process
from pyqemu.linux_user.main import main_aarch64, main_arm

SLICE = 0.0005
_stops = [0]


def _hammer(proc: process.GuestProcess) -> None:
    while proc.exit is None:
        time.sleep(random.uniform(0, 2 * SLICE))
        running = proc.running
        if running is not None:
            running.uc.emu_stop()
            _stops[0] += 1


_start_watchdog = process.GuestProcess.start_watchdog
_end_process = loop.end_process


def start_watchdog(self: process.GuestProcess) -> None:
    if self.watchdog is None:
        _start_watchdog(self)
        threading.Thread(target=_hammer, args=(self,), daemon=True).start()


def end_process(proc: process.GuestProcess) -> None:
    sys.stderr.write(f"stops: {_stops[0]}\n")
    sys.stderr.flush()
    _end_process(proc)


def main() -> None:
    process.GuestProcess.start_watchdog = start_watchdog      # type: ignore[method-assign]
    loop.end_process = end_process                            # type: ignore[assignment]
    arch = sys.argv.pop(1)
    sys.argv[0] = f"pyqemu-{arch}"
    (main_arm if arch == "arm" else main_aarch64)()


if __name__ == "__main__":
    main()
