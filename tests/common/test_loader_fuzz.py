"""Garbage in, only ElfError out: mutated ELF and program headers of real programs.

Every mutated file either loads (LoadInfo) or is refused with a one-line ElfError;
no other exception, no traceback. The real GuestMemory is used, fresh per example.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyqemu.common.cpu import get_arch
from pyqemu.common.loader.elf import ElfError, LoadInfo, load_program
from pyqemu.common.memory import GuestMemory

TRIPLET = {"arm": "arm-linux-gnueabihf", "aarch64": "aarch64-linux-gnu"}
SOURCE = "int v = 1; char b[9000]; int main(void) { return v + b[1]; }\n"
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x1000, 0xFFF, 0x7FFF_FFFF, 0x8000_0000,
               0xFFFF_FFFF, 0xFFFF_F000, 1 << 40, (1 << 63) - 1, (1 << 64) - 1]


class _Originals(dict):
    def __repr__(self) -> str:      # keep hypothesis' reports short
        return f"<{len(self)} programs>"


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], bytes]:
    tmp = tmp_path_factory.mktemp("fuzz")
    src = tmp / "tiny.c"
    src.write_text(SOURCE)
    out = _Originals()
    for arch in TRIPLET:
        for kind, flags in (("static", ["-static"]), ("dyn", ["-pie", "-fPIE"])):
            exe = tmp / f"tiny-{arch}-{kind}"
            subprocess.run([f"{TRIPLET[arch]}-gcc", "-O2", *flags, "-o", str(exe), str(src)],
                           check=True, capture_output=True)
            out[(arch, kind)] = exe.read_bytes()
    return out


def _header_span(data: bytes) -> int:
    """Bytes of the ELF header and program header table of an (unmutated) file."""
    if data[4] == 1:
        (phoff,) = struct.unpack_from("<I", data, 28)
        phentsize, phnum = struct.unpack_from("<HH", data, 42)
    else:
        (phoff,) = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
    return phoff + phentsize * phnum


mutation = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("word"), st.integers(0, 1 << 16), st.sampled_from(INTERESTING)),
)


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from([("arm", "static"), ("arm", "dyn"), ("aarch64", "static"),
                               ("aarch64", "dyn")]),
       mutations=st.lists(mutation, min_size=1, max_size=6),
       truncate=st.one_of(st.none(), st.integers(0, 4096)))
def test_mutated_headers_give_one_line_errors(originals, tmp_path: Path, target, mutations,
                                              truncate) -> None:
    arch_name, _kind = target
    data = bytearray(originals[target])
    span = _header_span(bytes(data))
    bits = 32 if data[4] == 1 else 64
    for kind, where, value in mutations:
        pos = where % span
        if kind == "byte":
            data[pos] = value
        else:
            size = 4 if bits == 32 or value < 1 << 32 else 8
            pos -= pos % size
            data[pos:pos + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    if truncate is not None:
        del data[truncate:]
    path = tmp_path / "mutant"
    path.write_bytes(bytes(data))
    os.chmod(path, 0o755)
    arch = get_arch(arch_name)
    mem = GuestMemory(arch)
    try:
        info = load_program(mem, str(path), arch, ld_prefix=f"/usr/{TRIPLET[arch_name]}")
    except ElfError as e:
        message = str(e)
        assert message and "\n" not in message
        assert e.exit_status in (1, 255)
        if e.errno:
            assert message.startswith(f"Error while loading {path}: ")
    else:
        assert isinstance(info, LoadInfo)
        assert info.brk % 4096 == 0 and info.phnum >= 1
    finally:
        mem.close()
