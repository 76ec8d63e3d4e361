"""Assemble tiny x86 guests with nasm (flat binaries) for the CPU tests.

Results are cached by source text in the user's cache directory, so a test run
assembles each guest once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "pyqemu-tests" / "nasm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def assemble(source: str) -> bytes:
    """The flat binary nasm makes of ``source`` (which sets its own ``bits``/``org``)."""
    nasm = shutil.which("nasm")
    if nasm is None:
        pytest.fail("required peer tool 'nasm' is not installed (run the README's test command)")
    key = hashlib.sha256(source.encode()).hexdigest()[:24]
    out = _cache_dir() / f"{key}.bin"
    if out.exists():
        return out.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "guest.asm"
        src.write_text(source)
        dst = Path(tmp) / "guest.bin"
        proc = subprocess.run([nasm, "-f", "bin", "-o", str(dst), str(src)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"nasm failed:\n{proc.stderr}")
        data = dst.read_bytes()
    tmp_out = out.with_suffix(f".{os.getpid()}.tmp")
    tmp_out.write_bytes(data)
    os.replace(tmp_out, out)
    return data


ROM_PRELUDE = """
; a 64 KiB BIOS image: mapped at 0xF0000 and at 0xFFFF0000 (as qemu's -bios does)
bits 16
org 0
"""

ROM_EPILOGUE = """
times 0xFFF0 - ($ - $$) db 0
reset_vector:
    jmp 0xF000:start
times 0x10000 - ($ - $$) db 0
"""


def rom(body: str) -> bytes:
    """A 64 KiB ROM whose reset vector jumps to ``start`` (F000:start) in ``body``."""
    data = assemble(ROM_PRELUDE + body + ROM_EPILOGUE)
    assert len(data) == 0x10000, "guest code does not fit below the reset vector"
    return data
