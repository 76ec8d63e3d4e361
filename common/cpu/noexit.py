"""Exits only at translation-block starts: no exit-request check after every access.

unicorn 2.1.4 asks its translators to emit, after every guest load and store
(``tcg_gen_qemu_ld/st_*``) and after every instruction of the arm, Thumb and AArch64
translators, a call to ``check_exit_request_<arch>``. That function is a TCG
*generator* (it runs at translation time): unless ``uc_struct.no_exit_request`` is set
it emits a run-time call of ``helper_check_exit_request``, which leaves the block when
``emu_stop()`` was called. A helper call per memory access is expensive (TCG spills
its globals around it: without them, host instructions -6% to -27% on the CPU-bound
benchmarks, docs/benchmarks.md), and an exit taken there
puts the PC back to the start of the accessing instruction, whose store may already
have happened: a read-modify-write instruction then runs twice.

The check at the start of every translation block is emitted by ``translator_loop``
itself and stays, so ``emu_stop()`` still stops the engine, at a block start, where the
PC is exact. Two ways to drop the per-access checks, both found and verified at run
time, never assumed:

- AArch64 and x86: set the engine's ``no_exit_request`` flag (per engine). Its offset
  in ``uc_struct`` is read from the code of ``check_exit_request_<arch>``, whose first
  instructions are ``mov disp32(%rdi),%rsi`` (tcg_ctx->uc) and ``cmpb $0,disp32(%rsi)``
  (uc->no_exit_request); nothing else in those translators writes it.
- arm (32-bit): ``thumb_tr_translate_insn`` rewrites that flag at every instruction
  (unicorn uses it to keep Thumb IT blocks whole), so setting it does not stick.
  Every caller of the generator (``tcg_gen_qemu_ld/st_i32/i64_arm``,
  ``arm_tr_translate_insn``, ``thumb_tr_translate_insn``) reaches it through the PLT,
  i.e. through one GOT slot (the ``.rela.plt`` JUMP_SLOT of ``check_exit_request_arm``).
  Pointing that slot at the generator's own ``ret`` (the return it takes when the flag
  is set) makes every translation behave as with the flag set, whatever the Thumb
  code writes. This is safe: the slot holds only that one function's address, it is
  read only by those PLT jumps (translation time, under the engine's lock), the
  function is a pure generator with no other effect than appending the helper call,
  and the block-start check (emitted by ``translator_loop``, not through this slot)
  is untouched. The slot is written once per process, through ``/proc/self/mem`` (the
  GOT may be read-only after relocation: full RELRO); a forked child inherits it.

Anything unexpected (another unicorn build: other code bytes, no such symbol, not
exactly one slot, an unreadable ``/proc/self/mem``) leaves the engine as it is: slower,
still correct. :data:`STATUS` says what was done.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from typing import Any

#: per arch: "flag", "got", or why neither was applied (for -d and the tests)
STATUS: dict[str, str] = {}

_ARCH_SYMBOLS = {1: "arm", 2: "aarch64", 4: "x86_64"}    # UC_ARCH_ARM/ARM64/X86
_PC_REG = {"aarch64": 260, "x86_64": 41}                 # UC_ARM64_REG_PC, UC_X86_REG_RIP
# check_exit_request_<arch> in unicorn 2.1.4 (x86-64 host):
#   mov disp32(%rdi),%rsi ; cmpb $0x0,disp32(%rsi) ; je +8 ; ret
_HEAD = bytes.fromhex("488bb7")
_CMPB = bytes.fromhex("80be")
_TAIL = bytes.fromhex("007408c3")
_CODE_LEN = 3 + 4 + 2 + 4 + 4       # the ret is the last byte
R_X86_64_JUMP_SLOT = 7

_got_done: dict[str, bool] = {}
#: per arch: the uc_struct offset of no_exit_request read from the generator's code
#: (None: not the code this module knows); the same for every engine of the library
_flag_offsets: dict[str, int | None] = {}


def _peek(fd: int, addr: int, size: int) -> bytes:
    try:
        return os.pread(fd, size, addr)
    except (OSError, OverflowError):
        return b""


_RAW: list[ctypes.CDLL] = []


def raw_lib() -> ctypes.CDLL:
    """The unicorn library the binding loaded, opened again without prototypes (once
    per process)."""
    if not _RAW:
        from unicorn.unicorn_py3.unicorn import uclib

        _RAW.append(ctypes.CDLL(uclib._name))
    return _RAW[0]


def _library() -> tuple[ctypes.CDLL, str]:
    lib = raw_lib()
    return lib, os.path.realpath(lib._name)


def _generator(lib: ctypes.CDLL, fd: int, arch: str) -> tuple[int, int] | None:
    """(address of check_exit_request_<arch>, uc_struct offset of no_exit_request), if
    its code is exactly the sequence this module knows."""
    try:
        func = ctypes.cast(getattr(lib, f"check_exit_request_{arch}"), ctypes.c_void_p).value
    except AttributeError:
        return None
    if not func:
        return None
    code = _peek(fd, func, _CODE_LEN)
    if (len(code) != _CODE_LEN or code[:3] != _HEAD or code[7:9] != _CMPB
            or code[13:] != _TAIL):
        return None
    flag_off = struct.unpack_from("<i", code, 9)[0]
    if not 0 < flag_off < 0x10000:
        return None
    return func, flag_off


def _load_base(path: str) -> int | None:
    """Start of the library's first mapping (file offset 0) in this process."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                f = line.split()
                if len(f) >= 6 and int(f[2], 16) == 0 and os.path.realpath(f[5]) == path:
                    return int(f[0].split("-")[0], 16)
    except (OSError, ValueError):
        return None
    return None


def _jump_slots(path: str, name: str) -> tuple[list[int], int] | None:
    """(.rela.plt JUMP_SLOT offsets naming ``name``, the symbol's st_value) from the
    ELF file (64-bit little-endian), or None. The file is mapped, not read, and
    searched with bytes searches (this runs at every start-up: about 0.1 ms)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:
                return None
            shoff, = struct.unpack_from("<Q", m, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from("<HHH", m, 0x3A)
            # (sh_name, sh_link, start, end) of every section
            secs = []
            for i in range(shnum):
                sh = struct.unpack_from("<IIQQQQIIQQ", m, shoff + i * shentsize)
                secs.append((sh[0], sh[6], sh[4], sh[4] + sh[5]))
            names = secs[shstrndx][2]
            rela = next((sec for sec in secs
                         if m[names + sec[0]:names + sec[0] + 10] == b".rela.plt\0"), None)
            if rela is None:
                return None
            dynsym = secs[rela[1]]                # sh_link: the symbol table
            dynstr = secs[dynsym[1]]              # and its string table
            # the name in the string table (possibly the tail of a longer string), the
            # symbols naming it, the JUMP_SLOT relocations of those
            slots: list[int] = []
            value = 0
            want = name.encode() + b"\0"
            at = m.find(want, dynstr[2], dynstr[3])
            while at >= 0:
                st_name = struct.pack("<I", at - dynstr[2])
                sym_at = m.find(st_name, dynsym[2], dynsym[3])
                while sym_at >= 0:
                    if (sym_at - dynsym[2]) % 24 == 0:
                        sym = (sym_at - dynsym[2]) // 24
                        info = struct.pack("<Q", sym << 32 | R_X86_64_JUMP_SLOT)
                        r_at = m.find(info, rela[2], rela[3])
                        while r_at >= 0:
                            if (r_at - rela[2]) % 24 == 8:
                                slots.append(struct.unpack_from("<Q", m, r_at - 8)[0])
                                value = struct.unpack_from("<Q", m, sym_at + 8)[0]
                            r_at = m.find(info, r_at + 1, rela[3])
                    sym_at = m.find(st_name, sym_at + 1, dynsym[3])
                at = m.find(want, at + 1, dynstr[3])
            return slots, value
    except (OSError, ValueError, IndexError, struct.error):
        return None


def _redirect_got(arch: str) -> str:
    """Point the GOT slot of check_exit_request_<arch> at its ``ret``; a status."""
    try:
        lib, path = _library()
        fd = os.open("/proc/self/mem", os.O_RDWR)
    except (OSError, ImportError) as e:
        return f"not applied: {e}"
    try:
        gen = _generator(lib, fd, arch)
        if gen is None:
            return "not applied: unknown check_exit_request code"
        func, _ = gen
        ret = func + _CODE_LEN - 1
        base = _load_base(path)
        found = _jump_slots(path, f"check_exit_request_{arch}")
        if base is None or found is None:
            return "not applied: library mapping or relocations not found"
        slots, value = found
        if len(slots) != 1 or base + value != func:
            return f"not applied: {len(slots)} jump slots, symbol at {value:#x}"
        slot = base + slots[0]
        raw = _peek(fd, slot, 8)
        if len(raw) != 8:
            return "not applied: GOT slot unreadable"
        cur, = struct.unpack("<Q", raw)
        # resolved (the function) or still lazy (into the library's PLT stubs)
        if cur != func and cur != ret and not base <= cur < func:
            return f"not applied: GOT slot holds {cur:#x}"
        if cur != ret:
            os.pwrite(fd, struct.pack("<Q", ret), slot)
            if _peek(fd, slot, 8) != struct.pack("<Q", ret):
                return "not applied: GOT slot write did not stick"
        return "got"
    except OSError as e:
        return f"not applied: {e}"
    finally:
        os.close(fd)


def flag_address(uc: Any) -> int | None:
    """Address of ``uc``'s ``no_exit_request`` flag, verified, or None. The engine is
    initialised first (a register read), so ``init_done`` (the next byte) is set."""
    arch = _ARCH_SYMBOLS.get(getattr(uc, "_arch", None))    # type: ignore[arg-type]
    if arch is None:
        return None
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        if arch not in _flag_offsets:
            try:
                gen = _generator(raw_lib(), fd, arch)
            except (OSError, ImportError):
                return None
            _flag_offsets[arch] = None if gen is None else gen[1]
        offset = _flag_offsets[arch]
        if offset is None:
            return None
        addr = (ctypes.cast(uc._uch, ctypes.c_void_p).value or 0) + offset
        pair = _peek(fd, addr, 2)
    finally:
        os.close(fd)
    # flag is a bool, init_done (the next field) true once the engine is initialised
    if len(pair) != 2 or pair[0] not in (0, 1) or pair[1] != 1:
        return None
    return addr


def exits_at_block_starts(uc: Any) -> str:
    """Make ``uc`` leave emulation only at translation-block starts (see the module
    doc); returns "flag", "got" or why nothing was changed. Never raises."""
    arch = _ARCH_SYMBOLS.get(getattr(uc, "_arch", None))    # type: ignore[arg-type]
    if arch is None:
        return "not applied: unknown architecture"
    if arch == "arm":
        if arch not in _got_done:
            _got_done[arch] = True
            STATUS[arch] = _redirect_got(arch)
        return STATUS[arch]
    try:
        uc.reg_read(_PC_REG[arch])          # initialises the engine (init_done)
    except Exception:  # noqa: BLE001 - any binding failure: leave the engine alone
        STATUS[arch] = "not applied: engine not initialised"
        return STATUS[arch]
    addr = flag_address(uc)
    if addr is None:
        STATUS[arch] = "not applied: no_exit_request not found"
        return STATUS[arch]
    ctypes.c_uint8.from_address(addr).value = 1
    STATUS[arch] = "flag"
    return "flag"
