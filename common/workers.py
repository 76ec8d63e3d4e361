"""A minimal FIFO thread pool for the bulk-copy paths (convert, commit, rebase).

``concurrent.futures`` (and the ``logging`` it imports) costs about 10 ms of
start-up, a tenth of a small conversion; this is the part of it those paths use.
File I/O and zlib release the GIL, so a few threads overlap reads, compression
and writes.
"""

from __future__ import annotations

import threading
from _queue import SimpleQueue  # the C queue: no import of queue/heapq
from typing import Any


class Job:
    """One task of :class:`Workers`; ``result()`` waits for it."""

    __slots__ = ("fn", "args", "done", "value", "error")

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None

    def result(self) -> Any:
        """Wait for the job; return its value or raise its exception."""
        with self.done:
            pass
        if self.error is not None:
            raise self.error
        return self.value

    def wait(self) -> None:
        """Wait for the job without looking at its outcome."""
        with self.done:
            pass

    def cancel(self) -> None:
        """Skip the job if no worker has taken it yet."""
        self.fn = None


class Workers:
    """``count`` daemon threads taking jobs in submission order."""

    def __init__(self, count: int) -> None:
        self._queue: SimpleQueue[Job | None] = SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Any, *args: Any) -> Job:
        """Queue ``fn(*args)``; return its :class:`Job`."""
        job = Job(fn, args)
        self._queue.put(job)
        return job

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            fn = job.fn
            if fn is not None:
                try:
                    job.value = fn(*job.args)
                except BaseException as exc:
                    job.error = exc
            job.done.release()

    def shutdown(self) -> None:
        """Let the queued jobs finish, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
