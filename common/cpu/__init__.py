"""One record per guest CPU architecture (unicorn + capstone + ELF + Linux ABI facts).

:func:`get_arch` returns a frozen :class:`ArchInfo`. The numbers are the libraries'
own constants (unicorn 2.1.4, capstone 5) written out, so that importing this module
does not load either library; :mod:`.engine` creates the unicorn engines.
"""

from __future__ import annotations

from dataclasses import dataclass

# unicorn_const / capstone constants (checked against unicorn 2.1.4 and capstone 5 by
# tests/common/test_memory.py)
UC_ARCH_ARM, UC_ARCH_ARM64 = 1, 2
UC_MODE_ARM, UC_MODE_THUMB = 0, 16
CS_ARCH_ARM, CS_ARCH_ARM64 = 0, 1
CS_MODE_ARM, CS_MODE_THUMB = 0, 16

# Linux's HWCAP bits (arch/arm/include/uapi/asm/hwcap.h, arch/arm64/include/uapi/asm/hwcap.h)
ARM_HWCAP = {
    "swp": 1 << 0, "half": 1 << 1, "thumb": 1 << 2, "fast_mult": 1 << 4, "vfp": 1 << 6,
    "edsp": 1 << 7, "neon": 1 << 12, "vfpv3": 1 << 13, "tls": 1 << 15, "vfpv4": 1 << 16,
    "idiva": 1 << 17, "idivt": 1 << 18, "vfpd32": 1 << 19, "lpae": 1 << 20,
}
AARCH64_HWCAP = {
    "fp": 1 << 0, "asimd": 1 << 1, "aes": 1 << 3, "pmull": 1 << 4, "sha1": 1 << 5,
    "sha2": 1 << 6, "crc32": 1 << 7, "cpuid": 1 << 11,
}


@dataclass(frozen=True)
class ArchInfo:
    """What pyqemu needs to know about one guest architecture."""

    name: str                   # "arm", "aarch64"
    uc_arch: int
    uc_mode: int
    cs_arch: int
    cs_mode: int                # the default (ARM) mode
    cs_mode_thumb: int | None   # Thumb, for arm only
    elf_machine: int            # EM_ARM = 40, EM_AARCH64 = 183
    elf_class: int              # 32 or 64
    byteorder: str              # "little"
    word_size: int              # bytes
    page_size: int
    reg_pc: int
    reg_sp: int
    reg_lr: int
    reg_syscall_nr: int         # r7 / x8
    reg_args: tuple[int, ...]   # syscall arguments r0-r6 / x0-x5
    reg_ret: int                # r0 / x0
    reg_tls: int                # TPIDRURO / TPIDR_EL0
    reg_flags: int              # CPSR / NZCV
    uname_machine: str          # "armv7l", "aarch64"
    platform: bytes             # AT_PLATFORM
    hwcap: int
    hwcap2: int
    mmap_base: int              # where non-fixed mmaps start looking (qemu's TASK_UNMAPPED_BASE)
    va_limit: int               # end of the guest virtual address space
    mmap_topdown: bool = False  # non-fixed mmaps search down from mmap_base first

    @property
    def mask(self) -> int:
        """All-ones of the word size (for register values)."""
        return (1 << (8 * self.word_size)) - 1


def _arm() -> ArchInfo:
    from unicorn import arm_const as c

    hw = ARM_HWCAP
    return ArchInfo(
        name="arm", uc_arch=UC_ARCH_ARM, uc_mode=UC_MODE_ARM, cs_arch=CS_ARCH_ARM,
        cs_mode=CS_MODE_ARM, cs_mode_thumb=CS_MODE_THUMB, elf_machine=40, elf_class=32,
        byteorder="little", word_size=4, page_size=4096, reg_pc=c.UC_ARM_REG_PC,
        reg_sp=c.UC_ARM_REG_SP, reg_lr=c.UC_ARM_REG_LR, reg_syscall_nr=c.UC_ARM_REG_R7,
        reg_args=tuple(c.UC_ARM_REG_R0 + i for i in range(7)), reg_ret=c.UC_ARM_REG_R0,
        reg_tls=c.UC_ARM_REG_C13_C0_3, reg_flags=c.UC_ARM_REG_CPSR, uname_machine="armv7l",
        platform=b"v7l",
        # what unicorn's default CPU (Cortex-A15) implements: glibc picks ifuncs from it.
        # qemu-arm -cpu cortex-a15 reports the same plus thumbee, which unicorn 2.1.4
        # refuses (ENTERX is an invalid instruction); v8 AArch32 (lda, crc32, aese,
        # vrint...) also needs unicorn's "max", hence v7l and no AT_HWCAP2 bits
        hwcap=(hw["swp"] | hw["half"] | hw["thumb"] | hw["fast_mult"] | hw["vfp"] | hw["edsp"]
               | hw["neon"] | hw["vfpv3"] | hw["tls"] | hw["vfpv4"] | hw["idiva"] | hw["idivt"]
               | hw["vfpd32"] | hw["lpae"]),
        # qemu-arm 7.2 on a 64-bit host: mmaps (and the stack) go down from 0x40000000,
        # PIE programs start there
        hwcap2=0, mmap_base=0x40000000, va_limit=1 << 32, mmap_topdown=True,
    )


def _aarch64() -> ArchInfo:
    from unicorn import arm64_const as c

    hw = AARCH64_HWCAP
    return ArchInfo(
        name="aarch64", uc_arch=UC_ARCH_ARM64, uc_mode=UC_MODE_ARM, cs_arch=CS_ARCH_ARM64,
        cs_mode=CS_MODE_ARM, cs_mode_thumb=None, elf_machine=183, elf_class=64,
        byteorder="little", word_size=8, page_size=4096, reg_pc=c.UC_ARM64_REG_PC,
        reg_sp=c.UC_ARM64_REG_SP, reg_lr=c.UC_ARM64_REG_LR, reg_syscall_nr=c.UC_ARM64_REG_X8,
        reg_args=tuple(c.UC_ARM64_REG_X0 + i for i in range(6)), reg_ret=c.UC_ARM64_REG_X0,
        reg_tls=c.UC_ARM64_REG_TPIDR_EL0, reg_flags=c.UC_ARM64_REG_NZCV,
        uname_machine="aarch64", platform=b"aarch64",
        # unicorn's default CPU (Cortex-A72): what qemu-aarch64 -cpu cortex-a72 reports
        # (cpuid: EL0 reads of MIDR_EL1/ID_* registers work, with the A72's values).
        # Measured: no LSE (ldadd/cas), LRCPC, dot product, FP16, JSCVT... on this CPU
        # (they need unicorn's "max"), so qemu's default-CPU bits are not advertised
        hwcap=(hw["fp"] | hw["asimd"] | hw["aes"] | hw["pmull"] | hw["sha1"] | hw["sha2"]
               | hw["crc32"] | hw["cpuid"]),
        hwcap2=0,
        # T0SZ=25: 39-bit VA (see common/memory.py); mmaps from where qemu-aarch64 7.2 on
        # a 64-bit host puts them (and PIE programs), upwards
        mmap_base=0x5500000000, va_limit=1 << 39,
    )


_FACTORIES = {"arm": _arm, "aarch64": _aarch64}
_CACHE: dict[str, ArchInfo] = {}


def get_arch(name: str) -> ArchInfo:
    """The record of ``name`` ("arm" or "aarch64"); KeyError for others."""
    info = _CACHE.get(name)
    if info is None:
        info = _CACHE[name] = _FACTORIES[name]()
    return info


ARCH_NAMES = tuple(_FACTORIES)
