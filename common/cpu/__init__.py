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
ARM_HWCAP2 = {"aes": 1 << 0, "pmull": 1 << 1, "sha1": 1 << 2, "sha2": 1 << 3, "crc32": 1 << 4}
AARCH64_HWCAP = {
    "fp": 1 << 0, "asimd": 1 << 1, "aes": 1 << 3, "pmull": 1 << 4, "sha1": 1 << 5,
    "sha2": 1 << 6, "crc32": 1 << 7, "atomics": 1 << 8, "fphp": 1 << 9, "asimdhp": 1 << 10,
    "cpuid": 1 << 11, "asimdrdm": 1 << 12, "jscvt": 1 << 13, "fcma": 1 << 14, "lrcpc": 1 << 15,
    "dcpop": 1 << 16, "sha3": 1 << 17, "sm3": 1 << 18, "sm4": 1 << 19, "asimddp": 1 << 20,
    "sha512": 1 << 21, "sve": 1 << 22, "asimdfhm": 1 << 23, "ilrcpc": 1 << 26, "flagm": 1 << 27,
    "sb": 1 << 29, "paca": 1 << 30, "pacg": 1 << 31,
}
AARCH64_HWCAP2 = {"dcpodp": 1 << 0, "flagm2": 1 << 7, "frint": 1 << 8, "rng": 1 << 16,
                  "bti": 1 << 17}

#: the -cpu model each emulator runs without -cpu: qemu-user 7.2's default ("max")
DEFAULT_CPU = "max"


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
    cpu: str = DEFAULT_CPU      # the -cpu model name this record describes
    uc_cpu: int | None = None   # unicorn's CPU model (UC_CPU_ARM_* / UC_CPU_ARM64_*)
    midr: int = 0               # MIDR of that model (/proc/cpuinfo's implementer, part...)

    @property
    def mask(self) -> int:
        """All-ones of the word size (for register values)."""
        return (1 << (8 * self.word_size)) - 1


def _arm(cpu: str) -> ArchInfo:
    from unicorn import arm_const as c

    hw, hw2 = ARM_HWCAP, ARM_HWCAP2
    # what unicorn's Cortex-A15 implements: glibc picks ifuncs from it. qemu-arm -cpu
    # cortex-a15 reports the same plus thumbee, which unicorn 2.1.4 refuses (ENTERX is
    # an invalid instruction)
    v7 = (hw["swp"] | hw["half"] | hw["thumb"] | hw["fast_mult"] | hw["vfp"] | hw["edsp"]
          | hw["neon"] | hw["vfpv3"] | hw["tls"] | hw["vfpv4"] | hw["idiva"] | hw["idivt"]
          | hw["vfpd32"] | hw["lpae"])
    if cpu in ("max", "any"):
        # unicorn's "max" (a Cortex-A15 with the ARMv8 AArch32 features): executes lda,
        # crc32b, aese, vmull.p64, sha1h, sha256h and vrint (measured, see
        # tests/linux_user/test_proc.py), which is exactly qemu-arm 7.2's default: v8l,
        # AT_HWCAP 0x1fb0d7, AT_HWCAP2 aes pmull sha1 sha2 crc32
        platform, hwcap, hwcap2 = b"v8l", v7, (hw2["aes"] | hw2["pmull"] | hw2["sha1"]
                                                | hw2["sha2"] | hw2["crc32"])
        uc_cpu, midr = c.UC_CPU_ARM_MAX, 0x412FC0F1   # unicorn's max keeps the A15's MIDR
    elif cpu in ("cortex-a8", "cortex-a9"):
        # no sdiv/udiv, no vfma (measured): qemu's bits for them less thumbee
        platform, hwcap, hwcap2 = b"v7l", v7 & ~(hw["vfpv4"] | hw["idiva"] | hw["idivt"]
                                                 | hw["lpae"]), 0
        uc_cpu, midr = ((c.UC_CPU_ARM_CORTEX_A8, 0x410FC080) if cpu == "cortex-a8"
                        else (c.UC_CPU_ARM_CORTEX_A9, 0x410FC090))
    else:
        # -cpu cortex-a15 / cortex-a7 (the same bits), and the models whose features
        # were not measured (pre-v7 and M/R profiles, which Debian's armhf glibc cannot
        # run anyway): unicorn's Cortex-A15, v7l, no AT_HWCAP2 bits
        platform, hwcap, hwcap2 = b"v7l", v7, 0
        uc_cpu, midr = ((c.UC_CPU_ARM_CORTEX_A7, 0x410FC075) if cpu == "cortex-a7"
                        else (c.UC_CPU_ARM_CORTEX_A15, 0x412FC0F1))
    return ArchInfo(
        name="arm", uc_arch=UC_ARCH_ARM, uc_mode=UC_MODE_ARM, cs_arch=CS_ARCH_ARM,
        cs_mode=CS_MODE_ARM, cs_mode_thumb=CS_MODE_THUMB, elf_machine=40, elf_class=32,
        byteorder="little", word_size=4, page_size=4096, reg_pc=c.UC_ARM_REG_PC,
        reg_sp=c.UC_ARM_REG_SP, reg_lr=c.UC_ARM_REG_LR, reg_syscall_nr=c.UC_ARM_REG_R7,
        reg_args=tuple(c.UC_ARM_REG_R0 + i for i in range(7)), reg_ret=c.UC_ARM_REG_R0,
        reg_tls=c.UC_ARM_REG_C13_C0_3, reg_flags=c.UC_ARM_REG_CPSR, uname_machine="armv7l",
        platform=platform, hwcap=hwcap, hwcap2=hwcap2,
        # qemu-arm 7.2 on a 64-bit host: mmaps (and the stack) go down from 0x40000000,
        # PIE programs start there
        mmap_base=0x40000000, va_limit=1 << 32, mmap_topdown=True,
        cpu=cpu, uc_cpu=uc_cpu, midr=midr,
    )


def _aarch64(cpu: str) -> ArchInfo:
    from unicorn import arm64_const as c

    hw, hw2 = AARCH64_HWCAP, AARCH64_HWCAP2
    # unicorn's Cortex-A72 (and -A53/-A57: same features): what qemu-aarch64 -cpu
    # cortex-a72 reports (cpuid: EL0 reads of MIDR_EL1/ID_* registers work)
    a72 = (hw["fp"] | hw["asimd"] | hw["aes"] | hw["pmull"] | hw["sha1"] | hw["sha2"]
           | hw["crc32"] | hw["cpuid"])
    if cpu in ("max", "any"):
        # unicorn's "max" (qemu 5.0's): each bit below was measured by executing a
        # representative instruction (tests/linux_user/test_proc.py). qemu-aarch64 7.2's
        # max also has, and pyqemu does not advertise: sve/sve2 and SVE matrix bits
        # (unicorn traps SVE at EL3 and its vector length is 128 bits, qemu-user's 512),
        # paca/pacg (pacga traps in unicorn; no keys are set up), i8mm, bf16 (undefined
        # in unicorn), bti (pages are never guarded), mte, sme (undefined in unicorn)
        hwcap = a72 | (hw["atomics"] | hw["fphp"] | hw["asimdhp"] | hw["asimdrdm"]
                       | hw["jscvt"] | hw["fcma"] | hw["lrcpc"] | hw["dcpop"] | hw["sha3"]
                       | hw["sm3"] | hw["sm4"] | hw["asimddp"] | hw["sha512"]
                       | hw["asimdfhm"] | hw["ilrcpc"] | hw["flagm"] | hw["sb"])
        hwcap2 = hw2["dcpodp"] | hw2["flagm2"] | hw2["frint"] | hw2["rng"]
        uc_cpu, midr = c.UC_CPU_ARM64_MAX, 0x000F0510
    else:
        uc_cpu = {"cortex-a53": c.UC_CPU_ARM64_A53,
                  "cortex-a57": c.UC_CPU_ARM64_A57}.get(cpu, c.UC_CPU_ARM64_A72)
        midr = {"cortex-a53": 0x410FD034, "cortex-a57": 0x411FD070}.get(cpu, 0x410FD083)
        hwcap, hwcap2 = a72, 0
    return ArchInfo(
        name="aarch64", uc_arch=UC_ARCH_ARM64, uc_mode=UC_MODE_ARM, cs_arch=CS_ARCH_ARM64,
        cs_mode=CS_MODE_ARM, cs_mode_thumb=None, elf_machine=183, elf_class=64,
        byteorder="little", word_size=8, page_size=4096, reg_pc=c.UC_ARM64_REG_PC,
        reg_sp=c.UC_ARM64_REG_SP, reg_lr=c.UC_ARM64_REG_LR, reg_syscall_nr=c.UC_ARM64_REG_X8,
        reg_args=tuple(c.UC_ARM64_REG_X0 + i for i in range(6)), reg_ret=c.UC_ARM64_REG_X0,
        reg_tls=c.UC_ARM64_REG_TPIDR_EL0, reg_flags=c.UC_ARM64_REG_NZCV,
        uname_machine="aarch64", platform=b"aarch64", hwcap=hwcap, hwcap2=hwcap2,
        # T0SZ=25: 39-bit VA (see common/memory.py); mmaps from where qemu-aarch64 7.2 on
        # a 64-bit host puts them (and PIE programs), upwards
        mmap_base=0x5500000000, va_limit=1 << 39, cpu=cpu, uc_cpu=uc_cpu, midr=midr,
    )


_FACTORIES = {"arm": _arm, "aarch64": _aarch64}
_CACHE: dict[tuple[str, str], ArchInfo] = {}


def get_arch(name: str, cpu: str | None = None) -> ArchInfo:
    """The record of ``name`` ("arm" or "aarch64"; KeyError for others) running the
    ``-cpu`` model ``cpu`` (qemu's default, "max", when None)."""
    key = (name, cpu or DEFAULT_CPU)
    info = _CACHE.get(key)
    if info is None:
        info = _CACHE[key] = _FACTORIES[name](key[1])
    return info


ARCH_NAMES = tuple(_FACTORIES)
