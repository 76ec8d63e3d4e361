"""Build the x86 system guests of tests/guests/x86/ for pyqemu-system-x86_64.

- ``bootsect.asm``: a 512-byte boot sector (``nasm -f bin``), see its header.
- ``mbkernel/``: a 32-bit Multiboot kernel, ``entry.asm`` (nasm -f elf32) and
  ``kernel.c`` compiled freestanding with the host gcc in -m32 mode (no
  multilib needed: -c only, no libgcc), linked with ``ld -m elf_i386`` and
  ``link.ld``.

Outputs go to the cache of tests/guests/build.py, named by a hash of the
sources, flags and tool versions, and are installed atomically (same helpers).

    python3 -m tests.guests.build_x86          # build both, print the paths
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.guests.build import (
    GUESTS_DIR,
    GuestBuildError,
    _digest,
    _install,
    _run_build,
    _tool_version,
    cache_dir,
)

X86_DIR = GUESTS_DIR / "x86"
BOOTSECT = X86_DIR / "bootsect.asm"
MBKERNEL_DIR = X86_DIR / "mbkernel"

KERNEL_CFLAGS = (
    "-m32",
    "-ffreestanding",
    "-fno-pic",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-nostdlib",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
)


def build_bootsector() -> Path:
    """Assemble tests/guests/x86/bootsect.asm; return the 512-byte image's path."""
    key = _digest([BOOTSECT.read_bytes(), _tool_version("nasm", "-v").encode()])
    target = cache_dir() / f"x86-bootsect-{key}.bin"
    if target.exists():
        return target

    def build(out: Path) -> None:
        _run_build(["nasm", "-f", "bin", "-o", str(out), str(BOOTSECT)], "assembling bootsect")
        size = out.stat().st_size
        if size != 512:
            raise GuestBuildError(f"bootsect.asm assembled to {size} bytes, not 512")

    return _install(target, build)


def build_mbkernel() -> Path:
    """Build the Multiboot kernel of tests/guests/x86/mbkernel/; return the ELF's path."""
    sources = [MBKERNEL_DIR / n for n in ("entry.asm", "kernel.c", "link.ld")]
    key = _digest(
        [
            *(p.name.encode() + b"\0" + p.read_bytes() for p in sources),
            " ".join(KERNEL_CFLAGS).encode(),
            _tool_version("nasm", "-v").encode(),
            _tool_version("gcc", "--version").encode(),
            _tool_version("ld", "--version").encode(),
        ]
    )
    target = cache_dir() / f"x86-mbkernel-{key}.elf"
    if target.exists():
        return target

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            entry_o = Path(tmp, "entry.o")
            kernel_o = Path(tmp, "kernel.o")
            _run_build(
                ["nasm", "-f", "elf32", "-o", str(entry_o), str(sources[0])],
                "assembling mbkernel/entry.asm",
            )
            _run_build(
                ["gcc", *KERNEL_CFLAGS, "-c", "-o", str(kernel_o), str(sources[1])],
                "compiling mbkernel/kernel.c",
            )
            _run_build(
                [
                    "ld",
                    "-m",
                    "elf_i386",
                    "-T",
                    str(sources[2]),
                    "-o",
                    str(out),
                    str(entry_o),
                    str(kernel_o),
                ],
                "linking mbkernel",
            )

    return _install(target, build)


def main() -> int:
    try:
        print(build_bootsector())
        print(build_mbkernel())
    except GuestBuildError as exc:
        print(f"build_x86.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
