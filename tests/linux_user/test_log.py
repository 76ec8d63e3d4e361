"""pyqemu-arm/-aarch64 -d items, -D, -singlestep and -seed against qemu-arm/-aarch64 7.2.

Both tools log the same static program; the parts that are deterministic and that
unicorn knows the same way must be equal: the first in_asm block (disassembly text,
byte for byte), the pcs and symbols of the first executed blocks, the register dump
layout (aarch64's first dump entirely: its stack lands where qemu's does), the page
dump's layout and the values that come from the ELF file, and AT_RANDOM under -seed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.guests.build import build_guest
from tests.guests.run import run_guest

ARCHES = ("arm", "aarch64")


def _logs(arch: str, items: str, tmp_path: Path, *extra: str, name: str = "hello"
          ) -> tuple[str, str]:
    binary = build_guest(name, arch, static=True)
    out = []
    for tool in ("qemu", "pyqemu"):
        log = tmp_path / f"{tool}-{arch}-{items}-{len(extra)}.log"
        r = run_guest(tool, arch, binary, options=(*extra, "-d", items, "-D", str(log)))
        assert r.returncode == 0, r.describe()
        assert r.stderr == "", r.describe()
        out.append(log.read_text())
    return out[0], out[1]


def _blocks(text: str) -> list[list[str]]:
    """The in_asm blocks: lines from ``IN:`` to the blank line."""
    blocks, cur = [], None
    for line in text.splitlines():
        if line.startswith("IN:"):
            cur = [line]
        elif cur is not None:
            if line == "":
                blocks.append(cur)
                cur = None
            else:
                cur.append(line)
    return blocks


TRACE = re.compile(r"^Trace (\d+): 0x[0-9a-f]+ \[([0-9a-f]+)/([0-9a-f]+)/([0-9a-f]{8})/"
                   r"([0-9a-f]{8})\] (.*)$")


def _trace(text: str) -> list[tuple[str, str]]:
    return [(m.group(3), m.group(6)) for m in map(TRACE.match, text.splitlines()) if m]


@pytest.mark.parametrize("arch", ARCHES)
def test_in_asm_first_blocks_identical(arch: str, tmp_path: Path) -> None:
    q, p = _logs(arch, "in_asm", tmp_path)
    qb, pb = _blocks(q), _blocks(p)
    assert len(qb) > 50 and len(pb) > 50
    # the entry block and the next ones, text and symbols byte for byte
    assert pb[:3] == qb[:3]
    # each block is announced by qemu's separator line
    assert p.count("----------------\nIN: ") == len(pb)


@pytest.mark.parametrize("arch", ARCHES)
def test_exec_trace_first_blocks(arch: str, tmp_path: Path) -> None:
    q, p = _logs(arch, "exec,nochain", tmp_path)
    qt, pt = _trace(q), _trace(p)
    assert len(pt) > 500
    assert all(TRACE.match(line) for line in p.splitlines())
    # unicorn also ends blocks at its 1 KiB page boundaries: the first 100 agree
    assert pt[:100] == qt[:100]
    width = 16 if arch == "aarch64" else 8
    assert all(len(m.group(3)) == width for m in map(TRACE.match, p.splitlines()) if m)


def test_cpu_dump_layout(tmp_path: Path) -> None:
    q, p = _logs("aarch64", "cpu", tmp_path)
    # aarch64: the stack is where qemu puts it, so the first dump is identical
    assert p.splitlines()[:12] == q.splitlines()[:12]
    q, p = _logs("arm", "cpu", tmp_path)
    ql, pl = q.splitlines()[:5], p.splitlines()[:5]
    # arm: same registers, values equal but the stack addresses (R01, R02, R13)
    mask = re.compile(r"(R01|R02|R13)=[0-9a-f]{8}")
    assert [mask.sub(r"\1=*", x) for x in pl] == [mask.sub(r"\1=*", x) for x in ql]
    assert pl[4] == "PSR=00000030 ---- T usr32"


@pytest.mark.parametrize("arch", ARCHES)
def test_page_dump(arch: str, tmp_path: Path) -> None:
    q, p = _logs(arch, "page", tmp_path)
    assert p.splitlines()[0] == q.splitlines()[0]          # host mmap_min_addr=...
    head = "start            end              size             prot" if arch == "aarch64" \
        else "start    end      size     prot"
    assert head in p.splitlines()

    def values(text: str) -> dict[str, str]:
        start = text.index("page layout changed following binary load")
        tail = text[start:text.index("----------------", start)] if "-----" in text[start:] \
            else text[start:]
        return dict(re.findall(r"^(\w+) +(0x[0-9a-f]+)$", tail, re.M))

    qv, pv = values(q), values(p)
    assert list(pv) == list(qv)
    for key in ("start_brk", "end_code", "start_code", "start_data", "end_data", "brk",
                "entry"):
        assert pv[key] == qv[key], key
    # the program's own mappings (below the stack) are laid out the same
    rows = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) [0-9a-f]+ ([r-][w-][x-])$", re.M)

    def table(text: str) -> list[tuple[str, str, str]]:
        start = text.index("following binary load")
        part = text[start:text.index("start_brk", start)]
        return [r for r in rows.findall(part) if int(r[0], 16) < 0x1000000]

    q_rows, p_rows = table(q), table(p)
    assert p_rows == q_rows and p_rows


@pytest.mark.parametrize("arch", ARCHES)
def test_singlestep_one_instruction_per_block(arch: str, tmp_path: Path) -> None:
    q, p = _logs(arch, "exec,nochain", tmp_path, "-singlestep")
    qt, pt = _trace(q), _trace(p)
    # (further on, unicorn's code hook skips some Thumb IT-block instructions qemu
    # translates as blocks of their own)
    assert pt[:400] == qt[:400]
    step = {int(b[0], 16) - int(a[0], 16) for a, b in zip(pt[:40], pt[1:40], strict=False)}
    assert step & {2, 4}


def test_log_env_variables_and_unknown_items(tmp_path: Path) -> None:
    binary = build_guest("hello", "arm", static=True)
    log = tmp_path / "env.log"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "QEMU_LOG": "in_asm,int,unimp,guest_errors",
           "QEMU_LOG_FILENAME": str(log)}
    r = run_guest("pyqemu", "arm", binary, env=env)
    assert r.returncode == 0 and r.stdout == "hello from the guest\n"
    assert log.read_text().startswith("----------------\nIN: \n0x00010354:  f04f 0b00  ")


SEED_SRC = r"""
#include <stdio.h>
#include <sys/auxv.h>
int main(void) {
    const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
    for (int i = 0; i < 16; i++) printf("%02x", r[i]);
    printf("\n");
    return 0;
}
"""


@pytest.mark.parametrize("arch", ARCHES)
def test_seed_gives_qemus_at_random(arch: str, tmp_path: Path) -> None:
    src = tmp_path / "rnd.c"
    src.write_text(SEED_SRC)
    exe = tmp_path / "rnd"
    cc = "arm-linux-gnueabihf-gcc" if arch == "arm" else "aarch64-linux-gnu-gcc"
    subprocess.run([cc, "-O2", "-static", "-o", str(exe), str(src)], check=True)
    for seed in ("1", "0x123456789abcdef0"):
        q = run_guest("qemu", arch, exe, options=("-seed", seed), static=True)
        p = run_guest("pyqemu", arch, exe, options=("-seed", seed), static=True)
        p2 = run_guest("pyqemu", arch, exe, options=("-seed", seed), static=True)
        assert re.fullmatch(r"[0-9a-f]{32}\n", q.stdout)
        assert p.stdout == q.stdout == p2.stdout
    env = {"PATH": "/usr/bin:/bin", "QEMU_RAND_SEED": "7"}
    q = run_guest("qemu", arch, exe, env=env, static=True)
    p = run_guest("pyqemu", arch, exe, env=env, static=True)
    assert p.stdout == q.stdout
    # without a seed, two runs differ
    a = run_guest("pyqemu", arch, exe, static=True)
    b = run_guest("pyqemu", arch, exe, static=True)
    assert a.stdout != b.stdout


def test_seeded_random_unit() -> None:
    from pyqemu.linux_user.log import seeded_random

    # qemu-arm -seed 1 gives these AT_RANDOM bytes (glib MT19937, key [1, 0])
    assert seeded_random(1).hex() == "f5b165224a58b791df6af1d8303e61cd"
    assert len(seeded_random(5, 7)) == 7


@pytest.mark.parametrize("options", [("-p", "65536"), ("-B", "0x10000000"),
                                     ("-R", "0x20000000")])
def test_accepted_options_run_the_guest(options: tuple[str, str]) -> None:
    """-p (ignored by qemu-user 7.2 for the guest: AT_PAGESZ stays 4096), -B and -R
    are accepted; the guest runs as without them."""
    binary = build_guest("hello", "arm", static=True)
    r = run_guest("pyqemu", "arm", binary, options=options)
    assert r.returncode == 0 and r.stdout == "hello from the guest\n", r.describe()
