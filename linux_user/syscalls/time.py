"""Time syscalls: clock_gettime(64), clock_getres(64), gettimeofday, nanosleep,
clock_nanosleep(64)."""

from __future__ import annotations

import errno
import os
import struct
import time
from typing import TYPE_CHECKING

from . import syscall
from .structs import s32, timespec_struct

if TYPE_CHECKING:
    from ..process import GuestThread

TIMER_ABSTIME = 1
_NS = 1_000_000_000


def _put_ts(t: GuestThread, addr: int, ns: int, time64: bool) -> None:
    t.mem.write(addr, timespec_struct(t, time64).pack(ns // _NS, ns % _NS))


def _get_ts(t: GuestThread, addr: int, time64: bool) -> int:
    st = timespec_struct(t, time64)
    sec, nsec = st.unpack(t.mem.read(addr, st.size))
    if nsec < 0 or nsec >= _NS or sec < 0:
        raise OSError(errno.EINVAL, "timespec")
    return sec * _NS + nsec


@syscall("clock_gettime")
def sys_clock_gettime(t: GuestThread, clk: int, tp: int) -> int:
    _put_ts(t, tp, time.clock_gettime_ns(s32(clk)), False)
    return 0


@syscall("clock_gettime64")
def sys_clock_gettime64(t: GuestThread, clk: int, tp: int) -> int:
    _put_ts(t, tp, time.clock_gettime_ns(s32(clk)), True)
    return 0


@syscall("clock_getres")
def sys_clock_getres(t: GuestThread, clk: int, tp: int) -> int:
    res = int(time.clock_getres(s32(clk)) * _NS)
    if tp:
        _put_ts(t, tp, res, False)
    return 0


@syscall("clock_getres_time64")
def sys_clock_getres64(t: GuestThread, clk: int, tp: int) -> int:
    res = int(time.clock_getres(s32(clk)) * _NS)
    if tp:
        _put_ts(t, tp, res, True)
    return 0


@syscall("gettimeofday")
def sys_gettimeofday(t: GuestThread, tv: int, tz: int) -> int:
    ns = time.time_ns()
    if tv:
        t.mem.write(tv, timespec_struct(t).pack(ns // _NS, ns % _NS // 1000))
    if tz:
        t.mem.write(tz, bytes(8))
    return 0


def _sleep(t: GuestThread, clk: int, flags: int, req: int, time64: bool) -> int:
    ns = _get_ts(t, req, time64)
    if flags & TIMER_ABSTIME:
        ns -= time.clock_gettime_ns(clk)
    if ns > 0:
        with t.blocking():
            time.sleep(ns / _NS)
    return 0


@syscall("nanosleep")
def sys_nanosleep(t: GuestThread, req: int, rem: int) -> int:
    return _sleep(t, time.CLOCK_MONOTONIC, 0, req, False)


@syscall("clock_nanosleep")
def sys_clock_nanosleep(t: GuestThread, clk: int, flags: int, req: int, rem: int) -> int:
    return _sleep(t, s32(clk), flags, req, False)


@syscall("clock_nanosleep_time64")
def sys_clock_nanosleep64(t: GuestThread, clk: int, flags: int, req: int, rem: int) -> int:
    return _sleep(t, s32(clk), flags, req, True)


@syscall("times")
def sys_times(t: GuestThread, buf: int) -> int:
    tm = os.times()
    hz = 100                                    # USER_HZ, what AT_CLKTCK says
    if buf:
        fmt = "<4i" if t.arch.word_size == 4 else "<4q"
        t.mem.write(buf, struct.pack(fmt, *(int(v * hz) for v in tm[:4])))
    return int(tm.elapsed * hz) & t.arch.mask
