"""The machine's virtual clock (QEMU's QEMU_CLOCK_VIRTUAL) and its timer list.

Virtual time starts at 0, follows the host's monotonic clock while the machine runs and
is frozen while it is stopped. Devices never poll: they compute counters from
``now_ns()`` on demand and ask for a callback at the next instant their output changes.

All timers fire on the CPU thread, from ``run_expired()`` (the run loop calls it before
each entry into the engine) or from ``step()`` (a stopped clock moved forward by hand,
the way qtest's ``clock_step`` does; the tests drive devices with it).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

NS_PER_SEC = 1_000_000_000


class Timer:
    """One pending callback; ``cancel()`` removes it (harmless if it already fired)."""

    __slots__ = ("deadline_ns", "callback", "_clock", "_live")

    def __init__(self, clock: VirtualClock, deadline_ns: int, callback: Callable[[], None]):
        self.deadline_ns = deadline_ns
        self.callback = callback
        self._clock = clock
        self._live = True

    @property
    def active(self) -> bool:
        """True until the timer fires or is cancelled."""
        return self._live

    def cancel(self) -> None:
        """Forget the timer; the heap entry is dropped lazily."""
        if self._live:
            self._live = False
            self._clock._cancelled(self)

    def __repr__(self) -> str:
        state = "pending" if self._live else "done"
        return f"<Timer {state} at {self.deadline_ns} ns {self.callback!r}>"


class VirtualClock:
    """Virtual nanoseconds since the machine was created, plus a deadline heap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frozen_ns = 0            # virtual time when last stopped
        self._host_base: int | None = None   # host monotonic ns at start(), None: stopped
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = 0
        self._live = 0
        self.fired = 0                 # callbacks run so far (a cost measure for tests)
        self.on_new_deadline: Callable[[], None] | None = None

    # -- time ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while virtual time follows the host clock."""
        return self._host_base is not None

    def now_ns(self) -> int:
        """Current virtual time in nanoseconds."""
        base = self._host_base
        if base is None:
            return self._frozen_ns
        return self._frozen_ns + time.monotonic_ns() - base

    def start(self) -> None:
        """Let virtual time run (no-op if it already does)."""
        with self._lock:
            if self._host_base is None:
                self._host_base = time.monotonic_ns()

    def stop(self) -> None:
        """Freeze virtual time (no-op if already stopped)."""
        with self._lock:
            if self._host_base is not None:
                self._frozen_ns += time.monotonic_ns() - self._host_base
                self._host_base = None

    def set_ns(self, ns: int) -> None:
        """Put a stopped clock at ``ns`` without firing anything (loading a snapshot:
        the devices' set_state() re-arms their timers afterwards)."""
        if self.running:
            raise RuntimeError("set_ns() needs a stopped clock")
        self._frozen_ns = ns

    def step(self, delta_ns: int) -> int:
        """Move a stopped clock forward by ``delta_ns``, firing every timer on the way at
        its own deadline (as qtest's clock_step). Returns the new virtual time."""
        if delta_ns < 0:
            raise ValueError("the virtual clock cannot go backwards")
        if self.running:
            raise RuntimeError("step() needs a stopped clock")
        target = self._frozen_ns + delta_ns
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > target:
                break
            if deadline > self._frozen_ns:
                self._frozen_ns = deadline
            self.run_expired()
        self._frozen_ns = target
        self.run_expired()
        return target

    # -- timers ----------------------------------------------------------------------

    def add_timer(self, deadline_ns: int, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` on the CPU thread once virtual time reaches ``deadline_ns``."""
        timer = Timer(self, deadline_ns, callback)
        with self._lock:
            earliest = self._earliest_locked()
            self._seq += 1
            heapq.heappush(self._heap, (deadline_ns, self._seq, timer))
            self._live += 1
        if (earliest is None or deadline_ns < earliest) and self.on_new_deadline is not None:
            self.on_new_deadline()
        return timer

    def _earliest_locked(self) -> int | None:
        heap = self._heap
        while heap and not heap[0][2]._live:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _cancelled(self, timer: Timer) -> None:
        with self._lock:
            self._live -= 1
            # keep the heap from filling with dead entries when devices re-arm often
            if len(self._heap) > 64 and len(self._heap) > 4 * self._live:
                self._heap = [e for e in self._heap if e[2]._live]
                heapq.heapify(self._heap)

    def next_deadline(self) -> int | None:
        """The earliest pending deadline, or None when no timer is armed."""
        with self._lock:
            return self._earliest_locked()

    def pending(self) -> int:
        """Number of armed timers."""
        return self._live

    def run_expired(self) -> None:
        """Fire, in deadline order, every timer whose deadline is <= now_ns() (read once,
        as QEMU's timerlist_run_timers does).

        A callback may arm new timers; one due by that same instant fires in this call
        too, so a device must always move its deadline forward. A timer armed for later
        waits for the next call even if the host clock has passed it meanwhile, so a
        very fast periodic device cannot keep the CPU thread here forever."""
        now = self.now_ns()
        while True:
            with self._lock:
                heap = self._heap
                while heap and not heap[0][2]._live:
                    heapq.heappop(heap)
                if not heap or heap[0][0] > now:
                    return
                _, _, timer = heapq.heappop(heap)
                timer._live = False
                self._live -= 1
                self.fired += 1
            timer.callback()
