"""The interpreter: the open image, the command loop and its exit status.

``Session.run_line`` is ``qemuio_command``: split on spaces, find the command,
check the open file, the argument count and write permission, then call it.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .report import err, out

if TYPE_CHECKING:
    from .backend import Backend

__all__ = ["Session"]


#: commands whose request polls the AioContext, so that aio completions print first
POLLING = {"read", "readv", "write", "writev", "discard", "flush", "truncate", "alloc", "map"}


class _Request(threading.Thread):
    """One aio request running in the background."""

    def __init__(self, work: Callable[[], str]) -> None:
        super().__init__(name="qemu-io-aio", daemon=True)
        self.work = work
        self.text = ""

    def run(self) -> None:
        self.text = self.work()


class Session:
    """State shared by the commands of one qemu-io run."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.blk: Backend | None = None
        self.image_opts = False
        self.quit = False
        self.aio_threads: list[_Request] = []

    def error_report(self, message: str) -> None:
        """``error_report``: ``prog: message`` on stderr."""
        err(f"{self.prog}: {message}\n")

    def submit(self, work: Callable[[], str]) -> None:
        """Start an aio request; ``work`` returns the text of its completion, which
        is printed at the next point where qemu-io's main loop would run it."""
        request = _Request(work)
        self.aio_threads.append(request)
        request.start()
        # QEMU enters the request's coroutine at once and it runs until it first
        # yields: a blkdebug breakpoint reports the suspension within the command
        request.join(0.05)

    def poll(self, timeout: float = 0.05) -> None:
        """Print the completions of finished requests, as one ``aio_poll``: a request
        finishing within ``timeout`` counts as finished."""
        deadline = time.monotonic() + timeout
        for request in list(self.aio_threads):
            request.join(max(0.0, deadline - time.monotonic()))
            if not request.is_alive():
                self.aio_threads.remove(request)
                out(request.text)

    def drain(self) -> None:
        """``bdrv_drain_all``: wait for every aio request and print its completion."""
        while self.aio_threads:
            request = self.aio_threads.pop(0)
            request.join()
            out(request.text)

    def run_line(self, line: str) -> int:
        """Run one command line; 0 or a negative errno."""
        from .commands import CMD_FLAG_GLOBAL, CMD_NOFILE_OK, find_command

        argv = [word for word in line.split(" ") if word]
        if not argv:
            return 0
        ct = find_command(argv[0])
        if ct is None:
            err(f'command "{argv[0]}" not found\n')
            return -errno.EINVAL
        if not ct.flags & CMD_FLAG_GLOBAL and not ct.flags & CMD_NOFILE_OK and self.blk is None:
            err("no file open, try 'help open'\n")
            return -errno.EINVAL
        nargs = len(argv) - 1
        if nargs < ct.argmin or (ct.argmax != -1 and nargs > ct.argmax):
            if ct.argmax == -1:
                err(
                    "bad argument count %d to %s, expected at least %d arguments\n"
                    % (nargs, argv[0], ct.argmin)
                )
            elif ct.argmin == ct.argmax:
                err(
                    "bad argument count %d to %s, expected %d arguments\n"
                    % (nargs, argv[0], ct.argmin)
                )
            else:
                err(
                    "bad argument count %d to %s, expected between %d and %d arguments\n"
                    % (nargs, argv[0], ct.argmin, ct.argmax)
                )
            return -errno.EINVAL
        if ct.write and self.blk is not None:
            if self.blk.read_only:
                self.error_report("Block node is read-only")
                return -errno.EPERM
            self.blk.write_perm = True
        if self.aio_threads and ct.name in POLLING:
            self.poll()
        try:
            return ct.func(self, argv)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - never a traceback in front of the user
            self.error_report(f"internal error: {type(exc).__name__}: {exc}")
            return -errno.EIO

    def out(self, text: str) -> None:
        out(text)
