"""Byte-rate limiting as QEMU does it, in two flavours.

:class:`RateLimit` is ``include/qemu/ratelimit.h`` (block jobs such as
commit: ``qemu-img commit -r``). :class:`LeakyBucket` is the I/O throttle of
``util/throttle.c`` with only an average set (``qemu-img convert -r`` limits
the target's write bandwidth, ``bps-write``).

RateLimit: time is cut into slices (100 ms for block jobs); each slice may carry
``speed * slice`` bytes. Bytes beyond a slice's quota push the end of the
slice forward in proportion to the excess, and the caller sleeps until then;
after a slice ends, accounting starts afresh. A speed of 0 means no limit.

:class:`RateLimit` is pure: callers give it the clock (``now_ns``), so the
delays it computes are tested without sleeping. :meth:`RateLimit.throttle`
is the blocking form for tools (monotonic clock, ``time.sleep``), safe to
call from several threads.

LeakyBucket: each request adds its bytes to a bucket that leaks at the average
rate. A request may start while the bucket holds at most a tenth of a
second's worth (the burst qemu allows when no maximum is set); otherwise it
waits until the bucket has leaked down to that level.
"""

from __future__ import annotations

import threading
import time

#: BLOCK_JOB_SLICE_TIME: 100 ms
SLICE_NS = 100_000_000
NS_PER_S = 1_000_000_000


class RateLimit:
    """Slice accounting of bytes against a speed in bytes per second."""

    def __init__(self, speed: int, slice_ns: int = SLICE_NS) -> None:
        if speed < 0 or slice_ns <= 0:
            raise ValueError("speed must be >= 0 and the slice > 0")
        self.slice_ns = slice_ns
        # the bytes one slice may carry: at least one, 0 disables the limit
        self.slice_quota = max(int(speed * slice_ns / NS_PER_S), 1) if speed else 0
        self.slice_start = 0
        self.slice_end = -1
        self.dispatched = 0
        self._lock = threading.Lock()

    def delay_ns(self, nbytes: int, now_ns: int) -> int:
        """Account ``nbytes`` sent at ``now_ns``; return how long to wait (ns)."""
        if not self.slice_quota:
            return 0
        if self.slice_end < now_ns:
            # the previous (possibly stretched) slice is over: start a new one
            self.slice_start = now_ns
            self.slice_end = now_ns + self.slice_ns
            self.dispatched = 0
        self.dispatched += nbytes
        if self.dispatched < self.slice_quota:
            return 0
        # over quota: stretch the slice by the excess, then wait for its end
        slices = self.dispatched / self.slice_quota
        self.slice_end = self.slice_start + int(slices * self.slice_ns)
        return self.slice_end - now_ns

    def throttle(self, nbytes: int) -> None:
        """Account ``nbytes`` now and sleep as long as the limit requires."""
        if not self.slice_quota:
            return
        with self._lock:
            delay = self.delay_ns(nbytes, time.monotonic_ns())
        if delay > 0:
            time.sleep(delay / NS_PER_S)


class LeakyBucket:
    """util/throttle.c's bucket with ``avg`` bytes per second and no ``max``."""

    def __init__(self, avg: int) -> None:
        if avg < 0:
            raise ValueError("avg must be >= 0")
        self.avg = avg
        self.level = 0.0
        self.previous_leak = -1
        self._lock = threading.Lock()

    def leak(self, now_ns: int) -> None:
        """Drain the bytes the time since the last call lets through."""
        if self.previous_leak >= 0 and now_ns > self.previous_leak:
            drained = self.avg * (now_ns - self.previous_leak) / NS_PER_S
            self.level = max(self.level - drained, 0.0)
        if now_ns > self.previous_leak:
            self.previous_leak = now_ns

    def wait_ns(self, now_ns: int) -> int:
        """How long a new request must wait at ``now_ns`` (0: it may start)."""
        if not self.avg:
            return 0
        self.leak(now_ns)
        extra = self.level - self.avg / 10
        if extra <= 0:
            return 0
        return int(extra * NS_PER_S / self.avg)

    def account(self, nbytes: int, now_ns: int) -> None:
        """A request of ``nbytes`` starts at ``now_ns``."""
        if not self.avg:
            return
        self.leak(now_ns)
        self.level += nbytes

    def throttle(self, nbytes: int) -> None:
        """Wait until a request of ``nbytes`` may start, then account it."""
        if not self.avg:
            return
        while True:
            with self._lock:
                now = time.monotonic_ns()
                delay = self.wait_ns(now)
                if delay <= 0:
                    self.account(nbytes, now)
                    return
            time.sleep(delay / NS_PER_S)
