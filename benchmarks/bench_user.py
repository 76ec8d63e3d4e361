"""pyqemu-arm / pyqemu-aarch64 against qemu-arm / qemu-aarch64 on the same binaries.

Workloads (guests in tests/guests/linux/, built by tests/guests/build.py; each prints
a checksum and the two tools' outputs must be equal):
- start-up: ``hello`` (static), wall time of the whole run;
- CPU-bound, each ``guest N`` minus ``guest 0`` (start-up and set-up subtracted):
  ``bench_cpu`` (SHA-256 over N x 16 KiB: 4096 = 64 MiB), ``bench_int`` (sieve,
  Collatz, hashing with data-dependent indexing, divisions), ``bench_dhry`` (a
  Dhrystone-like mix of record copies, calls through pointers, a state machine,
  string copies and compares, array indexing), ``bench_fp`` (double: an n-body
  simulation and a matrix product);
- syscalls: ``bench_syscall N`` (getppid) minus ``bench_syscall 0``, per call, and
  ``bench_sysmix N`` (getpid, a 1-byte write to /dev/null, stat) minus
  ``bench_sysmix 0``, per call (3 N calls);
- malloc: ``bench_malloc ROUNDS`` (dynamic, -L sysroot), wall time.

Each measurement alternates the two tools and keeps the best of ``--repeat`` runs
(the hosts are shared and noisy). Prints a markdown table for docs/benchmarks.md.

``--cpu-time`` reports the user + system CPU time of each run instead of its wall
time (steadier while other jobs load the host; qemu-user's and pyqemu's helper
threads count too). ``--instructions`` counts host instructions instead (valgrind's callgrind, the
"Collected" total of each run, one run each): slow (about 50x), but the same on a
quiet and on a loaded host, so small changes can be compared. Use small workloads:

    python3 benchmarks/bench_user.py [--repeat 3] [--only cpu,int,...]
    python3 benchmarks/bench_user.py --instructions --rounds 200 --int 1 --dhry 200000 \
        --fp 6000 --calls 100000 --mix 10000 --malloc 2000
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import find_tool, precompile  # noqa: E402
from tests.guests.build import build_guest, sysroot  # noqa: E402

ARCHES = ("arm", "aarch64")


#: measure CPU time (user + system of the child) instead of wall time
_CPU_TIME: list[bool] = [False]


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def _run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    cpu = _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if _CPU_TIME[0]:
        elapsed = _children_cpu() - cpu      # runs are sequential: this child's
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


_VALGRIND = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file",
             "--callgrind-out-file=/dev/null"]


def _instructions(cmd: list[str]) -> tuple[float, str]:
    """Host instructions of one run under callgrind (JIT code included), and stdout."""
    proc = subprocess.run([*_VALGRIND, *cmd], capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return float(found.group(1)), proc.stdout


def best(cmds: dict[str, list[str]], repeat: int, count: bool = False) -> dict[str, float]:
    """Best wall time per tool, the tools alternating; outputs must agree."""
    times = {tool: float("inf") for tool in cmds}
    outputs: dict[str, str] = {}
    for _ in range(1 if count else repeat):
        for tool, cmd in cmds.items():
            elapsed, out = _instructions(cmd) if count else _run(cmd)
            times[tool] = min(times[tool], elapsed)
            if outputs.setdefault(tool, out) != out:
                sys.exit(f"{tool}: output changed between runs of {' '.join(cmd)}")
    if len(set(outputs.values())) != 1:
        sys.exit(f"outputs differ: {outputs}")
    return times


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


#: the CPU-bound guests: option, guest, row label ({n}: the option's value)
CPU_BOUND = (
    ("rounds", "bench_cpu", "cpu: sha256 over {n} x 16 KiB"),
    ("int", "bench_int", "cpu: integer loops x{n}"),
    ("dhry", "bench_dhry", "cpu: dhrystone-like x{n}"),
    ("fp", "bench_fp", "cpu: floating point (n-body, matrix) x{n}"),
)
WORKLOADS = ("start", "cpu", "int", "dhry", "fp", "syscall", "sysmix", "malloc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4096,
                        help="bench_cpu rounds of 16 KiB (4096: 64 MiB)")
    parser.add_argument("--int", type=int, default=40, help="bench_int rounds")
    parser.add_argument("--dhry", type=int, default=5000000, help="bench_dhry iterations")
    parser.add_argument("--fp", type=int, default=100000, help="bench_fp steps")
    parser.add_argument("--calls", type=int, default=200000, help="bench_syscall calls")
    parser.add_argument("--mix", type=int, default=100000,
                        help="bench_sysmix iterations (3 calls each)")
    parser.add_argument("--malloc", type=int, default=20000, help="bench_malloc rounds")
    parser.add_argument("--arch", choices=ARCHES, action="append",
                        help="only this guest architecture (repeatable)")
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads (of {','.join(WORKLOADS)})")
    parser.add_argument("--instructions", action="store_true",
                        help="count host instructions under callgrind instead of timing")
    parser.add_argument("--cpu-time", action="store_true",
                        help="user + system CPU time of each run instead of wall time "
                             "(steadier on a loaded host)")
    args = parser.parse_args()
    _CPU_TIME[0] = args.cpu_time
    if args.instructions and not shutil.which("valgrind"):
        sys.exit("--instructions needs valgrind")
    only = set(args.only.split(","))
    if only - set(WORKLOADS):
        sys.exit(f"unknown workload(s): {','.join(sorted(only - set(WORKLOADS)))}")
    count = args.instructions
    precompile("common", "linux_user")
    unit = "M instructions" if count else "s"
    scale = 1e-6 if count else 1.0
    per_call = "instructions" if count else "us"
    rows = []
    for arch in args.arch or ARCHES:
        qemu = shutil.which(f"qemu-{arch}")
        ours = find_tool(f"pyqemu-{arch}")
        if not qemu or not ours:
            sys.exit(f"need qemu-{arch} and pyqemu-{arch} on PATH")
        tools = {"qemu": [qemu], "pyqemu": [ours]}
        prefix = ["-L", sysroot(arch)]

        def both(*argv: str, dynamic: bool = False, tools=tools, prefix=prefix):
            return best({t: [*c, *(prefix if dynamic else []), *argv]
                         for t, c in tools.items()}, args.repeat, count)

        def static(name: str, arch=arch) -> str:
            return str(build_guest(name, arch, static=True))

        if "start" in only:
            start = both(static("hello"))
            rows.append((arch, f"start-up (hello, static), {unit}",
                         {t: v * scale for t, v in start.items()}))
        for option, name, label in CPU_BOUND:
            if name.replace("bench_", "") not in only and option not in only:
                continue
            n = getattr(args, option)
            binary = static(name)
            base = both(binary, "0")
            full = both(binary, str(n))
            rows.append((arch, f"{label.format(n=n)}, {unit}",
                         {t: (full[t] - base[t]) * scale for t in full}))
        for key, name, n, calls, label in (
                ("syscall", "bench_syscall", args.calls, args.calls, "syscall (getppid)"),
                ("sysmix", "bench_sysmix", args.mix, 3 * args.mix,
                 "syscalls (getpid, 1-byte write, stat)")):
            if key not in only:
                continue
            binary = static(name)
            zero = both(binary, "0")
            many = both(binary, str(n))
            rows.append((arch, f"{label}, {per_call} per call",
                         {t: (many[t] - zero[t]) / calls * (1 if count else 1e6)
                          for t in many}))
        if "malloc" in only:
            mix = both(str(build_guest("bench_malloc", arch)), str(args.malloc),
                       dynamic=True)
            rows.append((arch, f"malloc mix x{args.malloc} (dynamic), {unit}",
                         {t: v * scale for t, v in mix.items()}))
    print("| arch | workload | qemu | pyqemu | pyqemu/qemu |")
    print("|---|---|---|---|---|")
    for arch, name, t in rows:
        print(f"| {arch} | {name} | {_fmt(t['qemu'])} | {_fmt(t['pyqemu'])} | "
              f"{t['pyqemu'] / t['qemu']:.2f} |")


if __name__ == "__main__":
    main()
