"""common.loader: ELF loading and the initial stack, on real cross-built programs.

Programs are compiled here with Debian's cross compilers (static, dynamic PIE,
dynamic -no-pie) and loaded into the real GuestMemory; what landed in guest memory is
compared with what pyelftools reads from the same files. The stack layout is
compared with qemu-user's own by a guest that prints its argv/envp/auxv.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from pyqemu.common.cpu import get_arch
from pyqemu.common.loader.elf import (
    ElfError,
    LoadInfo,
    load_program,
    prefixed_path,
    read_elf_header,
)
from pyqemu.common.loader.stack import (
    AT,
    build_initial_stack,
    page_summary,
    read_initial_stack,
)
from pyqemu.common.memory import PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE, GuestMemory

from tests.guests.run import run_guest, tool_path

TRIPLET = {"arm": "arm-linux-gnueabihf", "aarch64": "aarch64-linux-gnu"}
PAGE = 4096

# data, rodata and a bss big enough to need pages of its own
LOADME_C = r"""
#include <stdio.h>
int table[300] = {1, 2, 3, 4, 5, 6, 7};
const char banner[] = "loader test rodata";
char zeros[70000];
int main(int argc, char **argv) {
    zeros[argc] = 1;
    printf("%s %d %d\n", banner, table[argc], zeros[1]);
    return 0;
}
"""

# prints the stack as offsets from the top of the strings (AT_EXECFN's end), so
# that two emulators with different stack addresses can be compared
STACKDUMP_C = r"""
#include <stdio.h>
#include <string.h>
#include <elf.h>
extern char **environ;
int main(int argc, char **argv) {
    char **e = environ;
    while (*e) e++;
    unsigned long *a = (unsigned long *)(e + 1), top = 0;
    for (unsigned long *p = a; p[0]; p += 2)
        if (p[0] == AT_EXECFN) top = p[1] + strlen((char *)p[1]) + 1;
    printf("argc %d at -%lu\n", argc, top - (unsigned long)(argv - 1));
    for (int i = 0; i < argc; i++) printf("argv %d -%lu %s\n", i, top - (unsigned long)argv[i], argv[i]);
    for (int i = 0; environ[i]; i++) printf("env %d -%lu %s\n", i, top - (unsigned long)environ[i], environ[i]);
    for (; a[0]; a += 2) {
        unsigned long v = a[1];
        switch (a[0]) {
        case AT_RANDOM: case AT_EXECFN: case AT_PLATFORM:
            printf("auxv %lu -%lu", a[0], top - v);
            if (a[0] != AT_RANDOM) printf(" %s", (char *)v);
            printf("\n");
            break;
        case AT_PHENT: case AT_PHNUM: case AT_PAGESZ: case AT_FLAGS: case AT_CLKTCK:
        case AT_SECURE: case AT_UID: case AT_EUID: case AT_GID: case AT_EGID:
            printf("auxv %lu %lu\n", a[0], v);
            break;
        default:   /* addresses and CPU features: only the tag */
            printf("auxv %lu\n", a[0]);
        }
    }
    printf("auxv end -%lu\n", top - (unsigned long)a);
    return 0;
}
"""


def _compile(tmp: Path, arch: str, source: str, name: str, flags: list[str]) -> Path:
    src = tmp / f"{name}.c"
    if not src.exists():
        src.write_text(source)
    out = tmp / f"{name}-{arch}-{'_'.join(f.strip('-') for f in flags) or 'default'}"
    subprocess.run([f"{TRIPLET[arch]}-gcc", "-O2", *flags, "-o", str(out), str(src)],
                   check=True, capture_output=True)
    return out


VARIANTS = [
    ("arm", ["-static"]),
    ("arm", ["-pie", "-fPIE"]),
    ("arm", ["-no-pie"]),
    ("aarch64", ["-static"]),
    ("aarch64", ["-pie", "-fPIE"]),
]


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    tmp = tmp_path_factory.mktemp("loader")
    return {(arch, " ".join(flags)): _compile(tmp, arch, LOADME_C, "loadme", flags)
            for arch, flags in VARIANTS}


@pytest.fixture
def memory():
    made: list[GuestMemory] = []

    def make(arch: str) -> GuestMemory:
        made.append(GuestMemory(get_arch(arch)))
        return made[-1]

    yield make
    for mem in made:
        mem.close()


def _expected_prot(flags: int) -> int:
    return ((PROT_READ if flags & 4 else 0) | (PROT_WRITE if flags & 2 else 0)
            | (PROT_EXEC if flags & 1 else 0))


def _check_image(mem: GuestMemory, path: str, bias: int) -> None:
    """Every PT_LOAD of ``path`` is in ``mem`` at ``bias``: file bytes, zeroed bss,
    protections; the holes of the reservation between segments are PROT_NONE."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD":
                continue
            vaddr = bias + seg["p_vaddr"]
            assert mem.read(vaddr, seg["p_filesz"]) == seg.data(), hex(vaddr)
            bss = seg["p_memsz"] - seg["p_filesz"]
            if bss:
                # the bss, and the rest of its last page, read as zeros
                end = -(-(vaddr + seg["p_memsz"]) // PAGE) * PAGE
                start = vaddr + seg["p_filesz"]
                assert mem.read(start, end - start) == bytes(end - start)
            want = _expected_prot(seg["p_flags"])
            for page in range(vaddr - vaddr % PAGE, vaddr + seg["p_memsz"], PAGE):
                vma = mem.find_vma(page)
                assert vma is not None and vma.prot == want, (hex(page), vma)
        # gaps between segments stay reserved, inaccessible (qemu shows them as ---p)
        spans = sorted((bias + s["p_vaddr"], bias + s["p_vaddr"] + s["p_memsz"])
                       for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
        for (_start, end), (nxt, _end) in zip(spans, spans[1:], strict=False):
            for page in range(-(-end // PAGE) * PAGE, nxt - nxt % PAGE, PAGE):
                vma = mem.find_vma(page)
                assert vma is not None and vma.prot == PROT_NONE, (hex(page), vma)


@pytest.mark.parametrize("arch,flags", VARIANTS, ids=[f"{a}{f[0]}" for a, f in VARIANTS])
def test_load_program_matches_pyelftools(programs, memory, arch: str, flags: list[str]) -> None:
    path = str(programs[(arch, " ".join(flags))])
    arch_info = get_arch(arch)
    mem = memory(arch)
    info = load_program(mem, path, arch_info, ld_prefix=f"/usr/{TRIPLET[arch]}")
    assert isinstance(info, LoadInfo)
    with open(path, "rb") as f:
        elf = ELFFile(f)
        header = elf.header
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        interp = [s.get_interp_name() for s in elf.iter_segments()
                  if s["p_type"] == "PT_INTERP"]
        gnu_stack = [s for s in elf.iter_segments() if s["p_type"] == "PT_GNU_STACK"]
        phdr_bytes = (f.seek(header["e_phoff"]), f.read(header["e_phnum"] * header["e_phentsize"]))[1]
    is_pie = header["e_type"] == "ET_DYN"
    if is_pie:
        assert info.load_bias and info.load_bias % PAGE == 0
    else:
        assert info.load_bias == 0
    bias = info.load_bias
    lowest = min(s["p_vaddr"] - s["p_offset"] for s in loads)
    assert info.load_addr == lowest + bias
    assert info.program_entry == header["e_entry"] + bias
    assert info.phdr == lowest + bias + header["e_phoff"]
    assert mem.read(info.phdr, len(phdr_bytes)) == phdr_bytes
    assert (info.phent, info.phnum) == (header["e_phentsize"], header["e_phnum"])
    end_bss = max(s["p_vaddr"] + s["p_memsz"] for s in loads) + bias
    assert info.end_bss == end_bss
    assert info.brk == -(-end_bss // PAGE) * PAGE
    code = [s for s in loads if s["p_flags"] & 1]
    data = [s for s in loads if s["p_flags"] & 2]
    assert info.start_code == min(s["p_vaddr"] for s in code) + bias
    assert info.end_code == max(s["p_vaddr"] + s["p_filesz"] for s in code) + bias
    assert info.start_data == min(s["p_vaddr"] for s in data) + bias
    assert info.end_data == max(s["p_vaddr"] + s["p_filesz"] for s in data) + bias
    assert info.exec_path == os.path.realpath(path)
    assert info.stack_flags == (gnu_stack[0]["p_flags"] if gnu_stack else None)
    assert info.exec_stack is False
    _check_image(mem, path, bias)
    # nothing left mapped above the program but what the interpreter took
    assert mem.find_vma(info.brk) is None or info.interp_path
    if not interp:
        assert info.interp_path is None and info.interp_base == 0
        assert info.entry == info.program_entry
    else:
        assert info.interp_path == interp[0]
        host = f"/usr/{TRIPLET[arch]}{info.interp_path}"
        assert info.interp_host_path == host
        with open(host, "rb") as f:
            ld = ELFFile(f)
            ld_entry = ld.header["e_entry"]
            ld_low = min(s["p_vaddr"] - s["p_offset"] for s in ld.iter_segments()
                         if s["p_type"] == "PT_LOAD")
        assert info.interp_base == ld_low + info.interp_bias
        assert info.entry == ld_entry + info.interp_bias
        _check_image(mem, host, info.interp_bias)
    if arch == "arm":
        # Debian armhf code is Thumb-2: the entry keeps bit 0 as in the ELF
        assert info.program_entry & 1 == header["e_entry"] & 1 == 1


def test_pie_at_mmap_base_and_ld_prefix_fallback(programs, memory, tmp_path: Path) -> None:
    path = str(programs[("arm", "-pie -fPIE")])
    arch = get_arch("arm")
    mem = memory("arm")
    # a prefix without the interpreter: the plain path is used, as qemu's path() does
    # (the host has no /lib/ld-linux-armhf.so.3, so that fails with qemu's message)
    with pytest.raises(ElfError) as err:
        load_program(mem, path, arch, ld_prefix=str(tmp_path))
    assert str(err.value) == "Could not open '/lib/ld-linux-armhf.so.3': No such file or directory"
    assert err.value.exit_status == 255 and err.value.errno is None
    assert err.value.format("pyqemu-arm") == f"pyqemu-arm: {err.value}"
    mem2 = memory("arm")
    info = load_program(mem2, path, arch, ld_prefix="/usr/arm-linux-gnueabihf")
    assert info.load_addr == arch.mmap_base           # qemu-arm: 0x40000000
    assert prefixed_path("/usr/arm-linux-gnueabihf", "/lib/ld-linux-armhf.so.3") == \
        "/usr/arm-linux-gnueabihf/lib/ld-linux-armhf.so.3"
    assert prefixed_path(str(tmp_path), "/etc/passwd") == "/etc/passwd"
    assert prefixed_path("/", "/etc/passwd") == "/etc/passwd"
    assert prefixed_path(str(tmp_path), "relative") == "relative"


def test_read_elf_header(programs, tmp_path: Path) -> None:
    assert read_elf_header(str(programs[("arm", "-static")])) == (40, 32)
    assert read_elf_header(str(programs[("aarch64", "-static")])) == (183, 64)
    text = tmp_path / "text"
    text.write_text("not an ELF file at all\n")
    with pytest.raises(ElfError) as err:
        read_elf_header(str(text))
    assert err.value.errno == 8 and err.value.exit_status == 1
    assert err.value.format("pyqemu-arm") == f"Error while loading {text}: Exec format error"
    with pytest.raises(ElfError) as err:
        read_elf_header(str(tmp_path / "missing"))
    assert str(err.value) == f"Error while loading {tmp_path}/missing: No such file or directory"


# --- the initial stack ----------------------------------------------------------------
@pytest.mark.parametrize("arch_name", ["arm", "aarch64"])
def test_initial_stack_layout(programs, memory, arch_name: str) -> None:
    arch = get_arch(arch_name)
    mem = memory(arch_name)
    info = load_program(mem, str(programs[(arch_name, "-static")]), arch, ld_prefix=None)
    size = 64 * 1024
    base = mem.mmap(0, size, PROT_READ | PROT_WRITE, name="[stack]")
    top = base + size
    argv = [b"prog", b"", b"second arg"]
    envp = [b"A=1", b"LONGER_NAME=some value", b"E="]
    rnd = bytes(range(100, 116))
    sp = build_initial_stack(
        mem, arch, top, argv, envp, info, hwcap=0x1234, hwcap2=0x56, platform=b"v7l",
        random16=rnd, execfn=b"/some/prog", uid=1, euid=2, gid=3, egid=4, clktck=100)
    assert sp % 16 == 0
    st = read_initial_stack(mem, arch, sp)
    assert (st.argc, st.argv, st.envp) == (3, argv, envp)
    tags = [tag for tag, _ in st.auxv]
    # qemu-user 7.2's order (see test_stack_matches_qemu for the measured one)
    assert tags == [AT[n] for n in (
        "AT_PHDR", "AT_PHENT", "AT_PHNUM", "AT_PAGESZ", "AT_BASE", "AT_FLAGS", "AT_ENTRY",
        "AT_UID", "AT_EUID", "AT_GID", "AT_EGID", "AT_HWCAP", "AT_CLKTCK", "AT_RANDOM",
        "AT_SECURE", "AT_EXECFN", "AT_HWCAP2", "AT_PLATFORM", "AT_NULL")]
    assert st.aux(3) == info.phdr and st.aux(5) == info.phnum and st.aux(9) == info.program_entry
    assert (st.aux(11), st.aux(12), st.aux(13), st.aux(14)) == (1, 2, 3, 4)
    assert (st.aux(16), st.aux(26), st.aux(6), st.aux(17), st.aux(7)) == (0x1234, 0x56, 4096, 100, 0)
    assert mem.read(st.aux(25), 16) == rnd
    execfn = st.aux(31)
    assert mem.read(execfn, 11) == b"/some/prog\0"
    assert execfn + 11 == top - 8          # qemu leaves one host pointer free on top
    assert mem.read(st.aux(15), 4) == b"v7l\0"
    # strings: arguments, then the environment, then AT_EXECFN, contiguous
    strings = b"".join(s + b"\0" for s in argv + envp) + b"/some/prog\0"
    assert mem.read(st.argv_addrs[0], len(strings)) == strings
    # the platform string right below, its length rounded up to the word size
    assert st.aux(15) + arch.word_size * -(-4 // arch.word_size) == st.argv_addrs[0]
    assert st.aux(25) % 16 == 0 and st.aux(25) + 16 <= st.aux(15)
    assert st.auxv_addr + 2 * arch.word_size * len(st.auxv) <= st.aux(25)


def test_initial_stack_too_big(programs, memory) -> None:
    arch = get_arch("arm")
    mem = memory("arm")
    info = load_program(mem, str(programs[("arm", "-static")]), arch, ld_prefix=None)
    base = mem.mmap(0, 8192, PROT_READ | PROT_WRITE, name="[stack]")
    kw = dict(hwcap=0, hwcap2=0, platform=b"v7l", random16=bytes(16), execfn=b"./prog",
              uid=0, euid=0, gid=0, egid=0, stack_limit=base)
    with pytest.raises(ElfError) as err:
        build_initial_stack(mem, arch, base + 8192, [b"y" * 100] * 90, [], info, **kw)
    # qemu-arm prints this one without its own name, exit status 255
    assert err.value.format("pyqemu-arm") == "./prog: Argument list too long"
    assert err.value.exit_status == 255
    assert mem.read(base, 8192) == bytes(8192)       # nothing written
    sp = build_initial_stack(mem, arch, base + 8192, [b"y" * 100] * 70, [], info, **kw)
    assert base <= sp < base + 8192


STACK_ENV = {"A": "1", "BB": "22", "PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize("arch_name,flags", [("arm", ["-static"]), ("aarch64", ["-pie", "-fPIE"])])
def test_stack_matches_qemu(tmp_path: Path, arch_name: str, flags: list[str]) -> None:
    """The same guest sees the same stack layout (offsets from the top, auxv order
    and the constant values) under qemu-user and pyqemu."""
    prog = _compile(tmp_path, arch_name, STACKDUMP_C, "stackdump", flags)
    args = ["one", "", "three three"]
    ref = run_guest("qemu", arch_name, prog, args, env=STACK_ENV)
    ours = run_guest("pyqemu", arch_name, prog, args, env=STACK_ENV)
    assert ref.returncode == 0, ref.describe()
    assert "auxv 25 -" in ref.stdout and "auxv 15 -" in ref.stdout
    # qemu-arm's default CPU is "max" (AT_PLATFORM "v8l"); pyqemu runs unicorn's
    # Cortex-A15 ("v7l"): same length, so every offset still matches
    assert ours.stdout.replace(" v7l\n", " v8l\n") == ref.stdout, \
        f"{ref.describe()}\n{ours.describe()}"
    assert ours.returncode == 0


@pytest.mark.parametrize("arch_name,flags", [("arm", ["-static"]), ("arm", ["-no-pie"]),
                                             ("aarch64", ["-static"]), ("arm", ["-pie", "-fPIE"])])
def test_load_info_equals_qemu_page_log(programs, memory, arch_name: str, flags: list[str]) -> None:
    """qemu's own ``-d page`` numbers for the program (code/data bounds, end of bss,
    entry of a static program) equal LoadInfo's, after the load bias."""
    path = programs[(arch_name, " ".join(flags))]
    proc = subprocess.run([tool_path("qemu", arch_name), "-d", "page", "-L",
                           f"/usr/{TRIPLET[arch_name]}", str(path)],
                          capture_output=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    qemu = {}
    for line in proc.stderr.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("end_code", "start_code", "start_data", "end_data", "brk", "entry",
                    "start_stack", "argv_start", "env_start", "auxv_start", "start_brk"):
            qemu[name] = int(value.strip(), 16)
    arch = get_arch(arch_name)
    info = load_program(memory(arch_name), str(path), arch, ld_prefix=f"/usr/{TRIPLET[arch_name]}")
    with open(path, "rb") as f:
        qemu_bias = qemu["start_code"] - min(
            s["p_vaddr"] for s in ELFFile(f).iter_segments()
            if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1)
    shift = info.load_bias - qemu_bias
    for name, ours in (("end_code", info.end_code), ("start_code", info.start_code),
                       ("start_data", info.start_data), ("end_data", info.end_data),
                       ("brk", info.end_bss)):
        assert ours == qemu[name] + shift, name
    if info.interp_path is None:
        assert info.entry == qemu["entry"] + shift
    # the summary lines are qemu's, given qemu's stack pointer and the stack's shape
    sp = qemu["start_stack"]
    argc = 1
    envc = (qemu["auxv_start"] - qemu["env_start"]) // arch.word_size - 1
    lines = page_summary(info, arch, sp, argc, envc)
    qemu_lines = [line for line in proc.stderr.decode().splitlines()
                  if line.split(" ")[0] in ("start_brk", "start_stack", "argv_start",
                                            "env_start", "auxv_start")]
    assert [line for line in lines if line.split(" ")[0] in
            ("start_brk", "start_stack", "argv_start", "env_start", "auxv_start")] == qemu_lines
    if shift == 0 and info.interp_path is None:
        assert lines == [line for line in proc.stderr.decode().splitlines()
                         if line.split(" ")[0] in qemu]


def _qemu_layout(arch_name: str, path: Path) -> list[tuple[int, int, str]]:
    """qemu's ``-d page`` mappings after the binary load: (start, end, prot)."""
    proc = subprocess.run([tool_path("qemu", arch_name), "-d", "page", "-L",
                           f"/usr/{TRIPLET[arch_name]}", str(path)],
                          capture_output=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    text = proc.stderr.decode().split("page layout changed following binary load\n")[1]
    rows = []
    for line in text.splitlines()[1:]:
        if line.startswith("start_brk"):
            break
        span, _size, prot = line.split()
        start, end = (int(x, 16) for x in span.split("-"))
        rows.append((start, end, prot))
    return rows


@pytest.mark.parametrize("arch_name,flags", [("arm", ["-pie", "-fPIE"]),
                                             ("aarch64", ["-pie", "-fPIE"]),
                                             ("aarch64", ["-static"])])
def test_layout_equals_qemu(programs, memory, arch_name: str, flags: list[str]) -> None:
    """Program, brk room, stack and interpreter land where qemu-user puts them (with
    the same 8 MiB stack; qemu's signal trampoline page is not the loader's)."""
    path = programs[(arch_name, " ".join(flags))]
    arch = get_arch(arch_name)
    mem = memory(arch_name)
    info = load_program(mem, str(path), arch, ld_prefix=f"/usr/{TRIPLET[arch_name]}",
                        stack_size=8 << 20)
    ours = [(v.start, v.end, "".join(c if v.prot & b else "-" for c, b in
                                     (("r", PROT_READ), ("w", PROT_WRITE), ("x", PROT_EXEC))))
            for v in mem.vmas]
    # not the loader's: arm's kuser helper page, and qemu's signal trampoline (one
    # anonymous r-x page it maps once the loader is done)
    qemu = [row for row in _qemu_layout(arch_name, path) if row[0] != 0xFFFF0000]
    trampoline = [row for row in qemu
                  if row[2] == "r-x" and row[1] - row[0] == PAGE and row not in ours]
    assert len(trampoline) == 1
    qemu.remove(trampoline[0])
    assert ours == qemu
    assert (info.stack_top - info.stack_limit, mem.find_vma(info.stack_limit - 1).prot) == \
        (8 << 20, PROT_NONE)
