"""pyqemu-arm / pyqemu-aarch64 command line against qemu-arm / qemu-aarch64 7.2.

The help text is qemu's with the binary named pyqemu-<arch>; -version names pyqemu's
own version; everything else (errors, exit statuses, -d help, the environment and
argv the guest gets) is compared with the real tools.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyqemu.linux_user.cli import cpu_models, parse_command_line

from tests.guests.build import build_guest
from tests.guests.run import GUEST_ENV, assert_same_as_qemu, tool_path

ARCHES = ["arm", "aarch64"]
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


def run(tool: str, arch: str, args: list[str], env: dict[str, str] | None = None,
        cwd: Path | None = None) -> tuple[int, str, str]:
    proc = subprocess.run([tool_path(tool, arch), *args], capture_output=True,
                          stdin=subprocess.DEVNULL, env={**ENV, **(env or {})},
                          timeout=60, cwd=cwd)
    return (proc.returncode, proc.stdout.decode("utf-8", "surrogateescape"),
            proc.stderr.decode("utf-8", "surrogateescape"))


def compare(arch: str, args: list[str], env: dict[str, str] | None = None,
            cwd: Path | None = None) -> tuple[int, str, str]:
    """Run both; assert the same status and output, qemu-<arch> read as pyqemu-<arch>."""
    ref = run("qemu", arch, args, env, cwd)
    ours = run("pyqemu", arch, args, env, cwd)
    name = f"qemu-{arch}"
    expected = (ref[0], ref[1].replace(name, "py" + name), ref[2].replace(name, "py" + name))
    assert ours == expected, f"args {args} env {env}\nqemu: {ref!r}\npyqemu: {ours!r}"
    return ref


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A static guest per arch (runs to completion: exit 0)."""
    tmp = tmp_path_factory.mktemp("cli")
    src = tmp / "true.c"
    src.write_text("int main(void) { return 0; }\n")
    out = {}
    for arch, triplet in (("arm", "arm-linux-gnueabihf"), ("aarch64", "aarch64-linux-gnu")):
        out[arch] = tmp / f"true-{arch}"
        subprocess.run([f"{triplet}-gcc", "-static", "-o", str(out[arch]), str(src)],
                       check=True, capture_output=True)
    return out


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("args", [["-h"], ["-help"], ["--help"], ["-L", "/x", "-s", "1M", "-h"],
                                  ["-s", "0x20k", "-help", "-x"]])
def test_help(arch: str, args: list[str]) -> None:
    status, out, err = compare(arch, args)
    assert status == 0 and out.startswith(f"usage: qemu-{arch} [options] program") and not err


@pytest.mark.parametrize("arch", ARCHES)
def test_version(arch: str) -> None:
    for args, env in (([], {"QEMU_VERSION": ""}), (["-version"], None), (["--version"], None)):
        ref = run("qemu", arch, args, env)
        ours = run("pyqemu", arch, args, env)
        assert ref[0] == ours[0] == 0
        ref_lines = ref[1].splitlines()
        assert ref_lines[0].startswith(f"qemu-{arch} version 7.2.")
        assert ours[1] == f"pyqemu-{arch} version 7.2.0 (pyqemu 0.1.0)\n{ref_lines[1]}\n"


@pytest.mark.parametrize("arch", ARCHES)
def test_log_items_help(arch: str) -> None:
    for args, env in ((["-d", "help"], None), (["-d", "bogus"], None), (["x"], {"QEMU_LOG": "help"})):
        status, out, _err = compare(arch, args, env)
        assert status == 1 and out.startswith("Log items (comma separated):\nout_asm ")


@pytest.mark.parametrize("arch", ARCHES)
def test_cpu_help(arch: str) -> None:
    ref = run("qemu", arch, ["-cpu", "help"])
    ours = run("pyqemu", arch, ["-cpu", "help"])
    assert ref[0] == ours[0] == 1
    assert ours[1].startswith("Available CPUs:\n")
    qemu_models = [line.strip() for line in ref[1].splitlines()[1:]]
    our_models = [line[2:] for line in ours[1].splitlines()[1:]]
    assert our_models == cpu_models(arch)
    # unicorn's models, named and ordered as qemu lists them
    assert our_models == [m for m in qemu_models if m in our_models]
    assert run("pyqemu", arch, ["x"], {"QEMU_CPU": "?"})[1] == ours[1]


ERRORS = [
    ["-x"], ["--bogus"], ["-L"], ["-cpu"], ["-d"], [], ["--"], ["-s", "0"], ["-s", "abc"],
    ["-p", "1000"], ["-p", "0"], ["-R", "1x"], ["-R", "1Kb"], ["-E", "NOEQUALS", "PROG"],
    ["-E", "A=1,,B=2", "PROG"], ["-U", "A=1", "PROG"], ["-d", "in_asm,"], ["-d", ""],
    ["-d", "IN_ASM"], ["-cpu", "bogus", "PROG"], ["-seed", "x", "PROG"],
    ["-seed", "-1", "PROG"], ["-d", "tid", "PROG"], ["-d", "all", "PROG"],
    ["-B", "0x1001", "PROG"], ["-hx"], ["---h"],
    ["-dfilter", "0x1000", "PROG"], ["-dfilter", "0x1000+0", "PROG"], ["-dfilter", "x+1", "PROG"],
    ["-dfilter", "1+2+3", "PROG"], ["-dfilter", "0x10..0x5", "PROG"], ["-dfilter", "5-10", "PROG"],
    ["-dfilter", "1+2,", "PROG"], ["-dfilter", "1..2..3", "PROG"], ["-trace", "bar=1", "PROG"],
    ["-trace", "events=/nonexistent", "PROG"], ["-one-insn-per-tb", "PROG"],
    ["-cpu", "bogus", "-seed", "x", "/nonexistent"],
    ["-\udcff"], ["-cpu", "\udcff", "PROG"],    # bytes that are not UTF-8 come back as given
]


# the parser is shared: aarch64 gets the cases whose text names the architecture
CASES = [("arm", a) for a in ERRORS] + [("aarch64", a) for a in (
    ["-x"], [], ["-s", "0"], ["-cpu", "cortex-a15", "PROG"], ["-d", "bogus"], ["-seed", "x", "PROG"])]


@pytest.mark.parametrize("arch,args", CASES, ids=[f"{a} {' '.join(x)}" for a, x in CASES])
def test_errors(program: dict[str, Path], arch: str, args: list[str]) -> None:
    args = [str(program[arch]) if a == "PROG" else a for a in args]
    status, out, err = compare(arch, args)
    # qemu printf()s "Error while loading" on stdout, lost when that is not a tty
    assert status == 1 and (out or err or "/nonexistent" in args)


@pytest.mark.parametrize("env", [{"QEMU_STACK_SIZE": "0"}, {"QEMU_RAND_SEED": "x"},
                                 {"QEMU_PAGESIZE": "3"}, {"QEMU_SET_ENV": "X"},
                                 {"QEMU_CPU": "bogus"}, {"QEMU_LOG": "nope"}])
def test_environment_variable_errors(program: dict[str, Path], env: dict[str, str]) -> None:
    status, out, err = compare("arm", [str(program["arm"])], env)
    assert status == 1 and (out or err)


@pytest.mark.parametrize("arch", ARCHES)
def test_accepted_options_run_the_program(program: dict[str, Path], arch: str) -> None:
    prog = str(program[arch])
    for args, env in ((["-singlestep", "-seed", "0x10", "-r", "9.9.9", "-s", "1M"], None),
                      (["-d", "unimp,guest_errors", "-dfilter", "0x1000+0x100"], None),
                      (["--", prog], None), ([], {"QEMU_STRACE": "", "QEMU_RAND_SEED": "7"})):
        cmd = args + ([] if "--" in args else [prog])
        ref = run("qemu", arch, cmd, env)
        ours = run("pyqemu", arch, cmd, env)
        assert ref[0] == ours[0] == 0, (cmd, ref, ours)
        assert ours[1] == ref[1]


def test_trace_and_dfilter_accepted(program: dict[str, Path], tmp_path: Path) -> None:
    """pyqemu has no trace events: qemu's warnings for names that are not patterns."""
    events = tmp_path / "events"
    events.write_text("zzz\n# comment\n\nyy*\n-off\n")
    prog = str(program["arm"])
    for args in (["-trace", "foo"], ["-trace", "foo*"], ["-trace", f"foo,events={events},file=x"],
                 ["-trace", "enable=a,enable=b", "-d", "trace:c*,trace:d"],
                 ["-dfilter", "0x1000+0x10,0x2000..0x3000, 0x10-0x8"]):
        status, _out, _err = compare("arm", args + [prog], cwd=tmp_path)  # file=x lands here
        assert status == 0
    opts = parse_command_line("arm", ["-dfilter", "0x1000+0x10,0x2000..0x3000,0x10-0x8", "p"], {})
    assert opts.dfilter_ranges == [(0x1000, 0x100F), (0x2000, 0x3000), (0x8, 0xF)]


@pytest.fixture(scope="module")
def args_env() -> dict[str, Path]:
    return {arch: build_guest("args_env", arch, static=True) for arch in ARCHES}


GUEST_CASES = [
    ([], {}),
    (["-E", "X=1,Y=two", "-U", "LC_ALL"], {}),
    (["-E", "PATH=/nowhere", "-E", "X=1", "-U", "X", "-U", "NOT_SET"], {}),
    (["-0", "renamed"], {}),
    ([], {"QEMU_SET_ENV": "Z=9,PATH=/z", "QEMU_UNSET_ENV": "LC_ALL"}),
    ([], {"QEMU_ARGV0": "fromenv", "QEMU_UNAME": "1.2.3"}),
    (["-E", "EMPTY="], {"DUP": "1"}),
]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("options,env", GUEST_CASES, ids=[str(i) for i in range(len(GUEST_CASES))])
def test_guest_argv_and_environment(args_env: dict[str, Path], arch: str,
                                    options: list[str], env: dict[str, str]) -> None:
    """The guest gets exactly the environment and argv qemu gives it."""
    ref, ours = assert_same_as_qemu(arch, args_env[arch], ["a b", "", "c"],
                                    options=tuple(options), env={**GUEST_ENV, **env})
    assert "env: [PATH=" in ref.stdout or "PATH=" in " ".join(options + list(env))


# --- parse_command_line directly --------------------------------------------------------
def test_parse_values() -> None:
    opts = parse_command_line("arm", [
        "-L", "/sysroot", "-s", "16k", "-cpu", "cortex-a9", "-d", "in_asm,strace", "-D", "log",
        "-strace", "-seed", "0x20", "-singlestep", "-r", "6.0", "-R", "0x1000M",
        "-B", "0x10000", "-p", "8192", "-0", "zero", "prog", "-s", "--", "x"], {"A": "1"})
    assert (opts.program, opts.argv, opts.env) == ("prog", ["zero", "-s", "--", "x"], ["A=1"])
    assert (opts.ld_prefix, opts.stack_size, opts.cpu) == ("/sysroot", 16384, "cortex-a9")
    assert (opts.log_items, opts.log_file, opts.strace) == ({"in_asm", "strace"}, "log", True)
    assert (opts.seed, opts.singlestep, opts.uname_release) == (32, True, "6.0")
    assert (opts.reserved_va, opts.guest_base, opts.page_size) == (0x1000 << 20, 0x10000, 8192)
    assert opts.stack_mapping_size == 32 * 4096      # qemu's STACK_LOWER_LIMIT
    assert parse_command_line("arm", ["-s", "1M", "p"], {}).stack_mapping_size == 1 << 20
    assert parse_command_line("arm", ["-L", "rel", "p"], {}).ld_prefix == os.path.abspath("rel")
    assert parse_command_line("arm", ["p"], {"QEMU_LD_PREFIX": ""}).ld_prefix is None
    assert parse_command_line("arm", ["-d", "strace", "p"], {}).strace
    assert parse_command_line("arm", ["-strace", "p"], {}).log_items == {"strace"}
    defaults = parse_command_line("aarch64", ["prog"], {})
    assert defaults.ld_prefix == "/etc/qemu-binfmt/aarch64"
    assert (defaults.cpu, defaults.seed, defaults.log_items, defaults.strace) == (None, None, set(), False)
    assert defaults.argv == ["prog"] and defaults.env == []


def test_parse_environment_as_qemu_envlist() -> None:
    # qemu's envlist puts each new or changed variable in front: the host order reversed
    host = {"A": "1", "B": "2", "C": "3", "QEMU_SET_ENV": "D=4,A=5", "QEMU_UNSET_ENV": "B"}
    opts = parse_command_line("arm", ["-E", "E=6", "-U", "C", "prog"], host)
    assert opts.env == ["E=6", "A=5", "D=4", "QEMU_UNSET_ENV=B", "QEMU_SET_ENV=D=4,A=5"]
    # variables are QEMU_* options even when empty; options override them
    opts = parse_command_line("arm", ["-L", "/cmd", "prog"], {"QEMU_STRACE": "", "QEMU_LD_PREFIX": "/env"})
    assert opts.strace and opts.ld_prefix == "/cmd"
    # -U removes exactly that name (qemu removes the first name with that prefix)
    opts = parse_command_line("arm", ["-U", "B", "prog"], {"BB": "1", "B": "2"})
    assert opts.env == ["BB=1"]


def test_host_environment_is_the_one_the_process_got(tmp_path: Path) -> None:
    """Python adds LC_CTYPE=C.UTF-8 to os.environ under the C locale (PEP 538); the
    guest must not see it."""
    code = ("import os; from pyqemu.linux_user.cli import parse_command_line;"
            "print(parse_command_line('arm', ['p'], os.environ).env)")
    env = {"PATH": "/usr/bin:/bin", "ONLY": "this"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         check=True).stdout.decode()
    assert out.strip() == "['ONLY=this', 'PATH=/usr/bin:/bin']"


words = st.one_of(
    st.sampled_from(["-h", "-L", "-s", "-cpu", "-E", "-U", "-0", "-r", "-B", "-R", "-d", "-D",
                     "-p", "-seed", "-g", "-strace", "-singlestep", "-version", "--", "-",
                     "help", "?", "0", "1M", "0x10", "in_asm", "A=1", "-trace", "-plugin",
                     "-dfilter", "1+2", "prog", "enable=x", "trace:y"]),
    st.text(max_size=6))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(argv=st.lists(words, max_size=8),
       env=st.dictionaries(st.sampled_from(["QEMU_LOG", "QEMU_CPU", "QEMU_STACK_SIZE",
                                            "QEMU_RESERVED_VA", "QEMU_SET_ENV", "X"]),
                           words, max_size=3))
def test_parse_never_raises_anything_but_exit(argv: list[str], env: dict[str, str]) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            opts = parse_command_line("arm", argv, env)
        except SystemExit as e:
            assert e.code in (0, 1)
            assert "\n" not in err.getvalue().rstrip("\n")
        else:
            assert opts.program in argv and opts.argv[1:] == argv[len(argv) - len(opts.argv) + 1:]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(text=st.text(alphabet=" \t+-0123456789abcdefxXkKMG", max_size=24))
def test_number_parsing_is_the_c_library_s(text: str) -> None:
    """-s/-R/-B/-p read numbers with strtoul/strtol/atoi: compare with the host libc."""
    import ctypes

    from pyqemu.linux_user import cli

    libc = ctypes.CDLL(None)
    libc.strtoul.restype = ctypes.c_ulong
    libc.strtoul.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    libc.strtol.restype = ctypes.c_long
    libc.strtol.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    libc.atoi.restype = ctypes.c_int
    raw = ctypes.create_string_buffer(text.encode())
    end = ctypes.c_char_p()
    value = libc.strtoul(raw, ctypes.byref(end), 0)
    consumed = ctypes.cast(end, ctypes.c_void_p).value - ctypes.addressof(raw)
    assert cli._strtoul(text) == (value, text[consumed:])
    assert cli._strtol(text) == libc.strtol(raw, None, 0)
    assert cli._atoi(text) == libc.atoi(raw)


@pytest.mark.parametrize("arch", ARCHES)
def test_cpu_models_are_unicorn_models(arch: str) -> None:
    """Every -cpu name maps onto a CPU model unicorn 2.1.4 really creates."""
    import unicorn
    from pyqemu.linux_user.cli import uc_cpu_model

    uc_arch = unicorn.UC_ARCH_ARM if arch == "arm" else unicorn.UC_ARCH_ARM64
    for name in cpu_models(arch):
        model = uc_cpu_model(arch, name)
        uc = unicorn.Uc(uc_arch, unicorn.UC_MODE_ARM)
        uc.ctl_set_cpu_model(model)
        uc.mem_map(0x1000, 0x1000)     # the CPU is created on first use
        assert uc.ctl_get_cpu_model() == model


def test_open_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """open_log: qemu's -D (truncated, %d is the pid) and its message when it fails."""
    from pyqemu.linux_user.cli import open_log

    assert open_log(parse_command_line("arm", ["p"], {})) is sys.stderr
    old = tmp_path / "log"
    old.write_text("old contents\n")
    stream = open_log(parse_command_line("arm", ["-D", str(old), "p"], {}))
    stream.write("new\n")
    stream.close()
    assert old.read_text() == "new\n"
    per_pid = open_log(parse_command_line("arm", ["-D", str(tmp_path / "l.%d"), "p"], {}))
    per_pid.close()
    assert (tmp_path / f"l.{os.getpid()}").exists()
    missing = tmp_path / "no" / "log"
    with pytest.raises(SystemExit) as exit_:
        open_log(parse_command_line("arm", ["-D", str(missing), "p"], {}), "pyqemu-arm")
    assert exit_.value.code == 1
    assert capsys.readouterr().err == \
        f"pyqemu-arm: Error opening logfile {missing}: No such file or directory\n"
