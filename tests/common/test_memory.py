"""common.memory: GuestMemory over real unicorn engines with the guest MMU on.

Guest code here is a few instructions, assembled once with binutils
(arm-linux-gnueabihf-as / aarch64-linux-gnu-as) and written as their encodings.
"""

from __future__ import annotations

import struct

import pytest
from pyqemu.common import cpu
from pyqemu.common.cpu import get_arch
from pyqemu.common.cpu.engine import new_engine
from pyqemu.common.memory import (
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    GuestMemory,
    GuestMemoryError,
)

CODE = 0x10000
# arm:     ldr r1, [r0]; add r1, r1, #1; str r1, [r0]; svc 0
ARM_INC = bytes.fromhex("001090e5011081e2001080e5000000ef")
# aarch64: ldr x1, [x0]; add x1, x1, #1; str x1, [x0]; svc 0
A64_INC = bytes.fromhex("010040f921040091010000f9010000d4")


def _engine(arch_name: str) -> tuple[GuestMemory, object, list[int]]:
    import unicorn

    arch = get_arch(arch_name)
    mem = GuestMemory(arch)
    uc = new_engine(arch)
    mem.attach(uc)
    mem.mmap(CODE, 4096, PROT_READ | PROT_EXEC, fixed=True)
    mem.write(CODE, ARM_INC if arch_name == "arm" else A64_INC)
    seen: list[int] = []

    def on_intr(uc_: object, intno: int, _: object) -> None:
        seen.append(intno)
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, on_intr)
    return mem, uc, seen


def _run_inc(mem: GuestMemory, uc: object, seen: list[int], addr: int) -> int:
    arch = mem.arch
    uc.reg_write(arch.reg_args[0], addr)
    seen.clear()
    uc.emu_start(CODE, 0)
    return seen[0]


@pytest.mark.parametrize("arch_name", ["arm", "aarch64"])
def test_guest_sees_mappings_protections_and_unmaps(arch_name: str) -> None:
    mem, uc, seen = _engine(arch_name)
    data = mem.mmap(0, 8192, PROT_READ | PROT_WRITE, name="data")
    assert data % 4096 == 0
    if mem.arch.mmap_topdown:                    # qemu-arm: just below 0x40000000
        assert data == mem.arch.mmap_base - 8192
    else:                                        # qemu-aarch64: from 0x5500000000 up
        assert data == mem.arch.mmap_base
    mem.write(data + 8, struct.pack("<I", 41))
    assert _run_inc(mem, uc, seen, data + 8) == 2            # svc reached: store worked
    assert struct.unpack("<I", mem.read(data + 8, 4))[0] == 42
    mem.mprotect(data, 4096, PROT_READ)
    assert _run_inc(mem, uc, seen, data + 8) == 4            # data abort: read-only
    assert struct.unpack("<I", mem.read(data + 8, 4))[0] == 42
    mem.mprotect(data, 4096, PROT_READ | PROT_WRITE)
    assert _run_inc(mem, uc, seen, data + 8) == 2
    assert struct.unpack("<I", mem.read(data + 8, 4))[0] == 43
    mem.munmap(data, 4096)
    assert _run_inc(mem, uc, seen, data + 8) == 4            # unmapped (TLB was flushed)
    assert _run_inc(mem, uc, seen, data + 4096) == 2         # the other page stays
    with pytest.raises(GuestMemoryError) as err:
        mem.read(data, 4)
    assert err.value.errno == 14


@pytest.mark.parametrize("arch_name", ["arm", "aarch64"])
def test_data_pages_are_not_executable(arch_name: str) -> None:
    mem, uc, seen = _engine(arch_name)
    data = mem.mmap(0, 4096, PROT_READ | PROT_WRITE)
    mem.write(data, ARM_INC if arch_name == "arm" else A64_INC)
    seen.clear()
    uc.emu_start(data, 0)
    assert seen == [3]                                         # prefetch abort
    mem.mprotect(data, 4096, PROT_READ | PROT_EXEC)
    uc.reg_write(mem.arch.reg_args[0], mem.mmap(0, 4096, PROT_READ | PROT_WRITE))
    seen.clear()
    uc.emu_start(data, 0)
    assert seen == [2]


def test_aarch64_uses_the_whole_39_bit_address_space() -> None:
    mem, uc, seen = _engine("aarch64")
    for addr in (0x80000000, 0x100010000, (1 << 39) - 4096):
        mem.mmap(addr, 4096, PROT_READ | PROT_WRITE, fixed=True)
        mem.write(addr, struct.pack("<Q", addr))
        assert _run_inc(mem, uc, seen, addr) == 2
        assert struct.unpack("<Q", mem.read(addr, 8))[0] == addr + 1
    assert mem.read(CODE, 16) == A64_INC                  # no aliasing of low pages
    with pytest.raises(GuestMemoryError):
        mem.mmap(1 << 39, 4096, PROT_READ, fixed=True)


def test_aarch64_physical_memory_above_4_gib() -> None:
    mem, uc, seen = _engine("aarch64")
    size = (4 << 30) + (64 << 20)
    big = mem.mmap(0, size, PROT_READ | PROT_WRITE)
    top = big + size - 4096
    assert mem.find_vma(top).pa + top - big >= 4 << 30
    mem.write(top, struct.pack("<Q", 7))
    assert _run_inc(mem, uc, seen, top) == 2
    assert struct.unpack("<Q", mem.read(top, 8))[0] == 8


def test_non_fixed_mappings_follow_qemus_layout() -> None:
    arm = GuestMemory(get_arch("arm"))
    first = arm.mmap(0, 65536, PROT_READ)
    second = arm.mmap(0, 4096, PROT_READ)
    assert (first, second) == (0x40000000 - 65536, 0x40000000 - 65536 - 4096)
    assert arm.mmap(0x20000000, 4096, PROT_READ) == 0x20000000      # a free hint is kept
    a64 = GuestMemory(get_arch("aarch64"))
    assert a64.mmap(0, 65536, PROT_READ) == 0x5500000000
    assert a64.mmap(0, 4096, PROT_READ) == 0x5500000000 + 65536


def test_fresh_pages_are_zero_after_reuse() -> None:
    mem = GuestMemory(get_arch("arm"))
    a = mem.mmap(0, 65536, PROT_READ | PROT_WRITE)
    mem.write(a, b"\xff" * 65536)
    mem.munmap(a, 65536)
    b = mem.mmap(0, 65536, PROT_READ | PROT_WRITE)
    assert mem.read(b, 65536) == bytes(65536)


def test_fixed_mapping_replaces_and_splits() -> None:
    mem = GuestMemory(get_arch("aarch64"))
    a = mem.mmap(0x400000, 5 * 4096, PROT_READ | PROT_WRITE, fixed=True, name="x")
    mem.write(a, b"A" * 5 * 4096)
    mem.mmap(a + 4096, 4096, PROT_READ, fixed=True, name="y")
    assert [(v.start - a, v.end - a, v.prot, v.name) for v in mem.vmas] == [
        (0, 4096, 3, "x"), (4096, 8192, 1, "y"), (8192, 20480, 3, "x")]
    assert mem.read(a + 4095, 3) == b"A\0\0"
    with pytest.raises(GuestMemoryError) as err:
        mem.mmap(a, 4096, PROT_READ, noreplace=True)
    assert err.value.errno == 17
    with pytest.raises(GuestMemoryError) as err:
        mem.mprotect(a, 0x100000, PROT_READ)
    assert err.value.errno == 12
    assert mem.maps_lines()[1].startswith(f"{a + 4096:08x}-{a + 8192:08x} r--p 00000000 00:00 0")


def test_mremap_grows_in_place_or_moves_without_losing_data() -> None:
    mem = GuestMemory(get_arch("arm"))
    a = mem.mmap(0, 8192, PROT_READ | PROT_WRITE)
    mem.write(a, b"0123456789" * 800)
    assert mem.mremap(a, 8192, 16384, may_move=False) == a
    assert mem.read(a, 8000) == b"0123456789" * 800
    mem.mmap(a + 16384, 4096, PROT_READ, fixed=True)     # block growth in place
    with pytest.raises(GuestMemoryError):
        mem.mremap(a, 16384, 32768, may_move=False)
    b = mem.mremap(a, 16384, 32768, may_move=True)
    assert b != a and mem.find_vma(a) is None
    assert mem.read(b, 8000) == b"0123456789" * 800
    assert mem.read(b + 16384, 16384) == bytes(16384)
    assert mem.mremap(b, 32768, 4096, may_move=True) == b
    assert mem.find_vma(b + 4096) is None


def test_file_mapping_reads_file_and_zero_past_eof(tmp_path: object) -> None:
    path = tmp_path / "f"                                  # type: ignore[operator]
    path.write_bytes(b"x" * 5000 + b"END")
    mem = GuestMemory(get_arch("arm"))
    with open(path, "rb") as f:
        a = mem.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, fd=f.fileno(), offset=4096)
    assert mem.read(a, 907) == b"x" * 904 + b"END"
    assert mem.read(a + 907, 3 * 4096) == bytes(3 * 4096)
    mem.write(a, b"private")                               # MAP_PRIVATE: file unchanged
    assert path.read_bytes()[4096:4103] == b"x" * 7
    assert mem.find_vma(a).inode == path.stat().st_ino


def test_views_check_protections() -> None:
    mem = GuestMemory(get_arch("arm"))
    a = mem.mmap(0, 8192, PROT_READ | PROT_WRITE)
    mem.mprotect(a + 4096, 4096, PROT_NONE)
    assert [len(v) for v in mem.views(a + 4000, 96, PROT_WRITE)] == [96]
    with pytest.raises(GuestMemoryError):
        mem.views(a + 4000, 200, PROT_READ)
    assert len(mem.read(a + 4000, 200)) == 200                 # read ignores protections
    mem.write(a + 100, b"abc\0def")
    assert mem.read_cstring(a + 100) == b"abc"


def test_arch_constants_match_the_libraries() -> None:
    import capstone
    import unicorn

    assert (cpu.UC_ARCH_ARM, cpu.UC_ARCH_ARM64) == (unicorn.UC_ARCH_ARM, unicorn.UC_ARCH_ARM64)
    assert (cpu.UC_MODE_ARM, cpu.UC_MODE_THUMB) == (unicorn.UC_MODE_ARM, unicorn.UC_MODE_THUMB)
    assert (cpu.CS_ARCH_ARM, cpu.CS_ARCH_ARM64) == (capstone.CS_ARCH_ARM, capstone.CS_ARCH_ARM64)
    assert (cpu.CS_MODE_ARM, cpu.CS_MODE_THUMB) == (capstone.CS_MODE_ARM, capstone.CS_MODE_THUMB)
    assert get_arch("arm").elf_machine == 40 and get_arch("aarch64").elf_machine == 183


def test_discard_reads_zero_for_anonymous_and_file_for_private_file(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"F" * 8192)
    mem = GuestMemory(get_arch("aarch64"))
    anon = mem.mmap(0, 8192, PROT_READ | PROT_WRITE)
    with open(path, "rb") as f:
        filed = mem.mmap(0, 8192, PROT_READ | PROT_WRITE, fd=f.fileno())
    mem.write(anon, b"x" * 8192)
    mem.write(filed, b"y" * 8192)
    mem.discard(anon, 4096)
    mem.discard(filed + 4096, 4096)
    assert mem.read(anon, 8192) == bytes(4096) + b"x" * 4096
    assert mem.read(filed, 8192) == b"y" * 4096 + b"F" * 4096


@pytest.mark.parametrize("arch_name", ["arm", "aarch64"])
def test_engines_share_memory_and_tlb_flushes(arch_name: str) -> None:
    import unicorn

    mem, uc1, seen = _engine(arch_name)
    uc2 = new_engine(mem.arch)
    mem.attach(uc2)
    uc2.hook_add(unicorn.UC_HOOK_INTR, lambda u, intno, _: (seen.append(intno), u.emu_stop()))
    data = mem.mmap(0, 4096, PROT_READ | PROT_WRITE)
    for uc in (uc1, uc2, uc1):
        assert _run_inc(mem, uc, seen, data) == 2
    assert struct.unpack("<I", mem.read(data, 4))[0] == 3
    mem.mprotect(data, 4096, PROT_READ)               # both engines' TLBs are flushed
    assert _run_inc(mem, uc2, seen, data) == 4
    assert _run_inc(mem, uc1, seen, data) == 4
    mem.detach(uc2)
    assert mem.engines == [uc1]
