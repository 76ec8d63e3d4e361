"""libcapstone 4 through ctypes, as Debian's qemu links it (the capstone wheel is the
fallback of the callers: linux_user/log.py for -d in_asm, system/monitor/hmp.py for
``x /i``). Only the loading and the cs_insn layout live here; each caller opens its own
handles with its arch, mode and options."""

from __future__ import annotations

import ctypes
from typing import Any


class CsInsn4(ctypes.Structure):
    """libcapstone 4's cs_insn."""

    _fields_ = [("id", ctypes.c_uint), ("address", ctypes.c_uint64),
                ("size", ctypes.c_uint16), ("bytes", ctypes.c_uint8 * 16),
                ("mnemonic", ctypes.c_char * 32), ("op_str", ctypes.c_char * 160),
                ("detail", ctypes.c_void_p)]


def load_libcapstone4() -> Any:
    """libcapstone.so.4 with the prototypes of cs_open, cs_option, cs_disasm and cs_free
    set, or None when the library is not installed."""
    try:
        lib = ctypes.CDLL("libcapstone.so.4")
    except OSError:
        return None
    lib.cs_open.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)]
    lib.cs_option.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t]
    lib.cs_disasm.restype = ctypes.c_size_t
    lib.cs_disasm.argtypes = [ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                              ctypes.c_uint64, ctypes.c_size_t,
                              ctypes.POINTER(ctypes.POINTER(CsInsn4))]
    lib.cs_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return lib
