"""pyqemu-arm / pyqemu-aarch64 against qemu-arm / qemu-aarch64 on the same binaries.

Workloads (guests in tests/guests/linux/, built by tests/guests/build.py):
- start-up: ``hello`` (static), wall time of the whole run;
- cpu: ``bench_cpu ROUNDS`` (SHA-256, static), wall time minus the start-up run;
- syscalls: ``bench_syscall N`` (getppid) minus ``bench_syscall 0``, per call;
- malloc: ``bench_malloc ROUNDS`` (dynamic, -L sysroot), wall time.

Each measurement alternates the two tools and keeps the best of ``--repeat`` runs
(the hosts are shared and noisy). Prints a markdown table for docs/benchmarks.md.

``--instructions`` counts host instructions instead (valgrind's callgrind, the
"Collected" total of each run, one run each): slow (about 50x), but the same on a
quiet and on a loaded host, so small changes can be compared. Use small workloads:

    python3 benchmarks/bench_user.py [--repeat 3] [--rounds 2000] [--calls 200000]
    python3 benchmarks/bench_user.py --instructions --rounds 200 --calls 100000 --malloc 2000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import find_tool, precompile  # noqa: E402
from tests.guests.build import build_guest, sysroot  # noqa: E402

ARCHES = ("arm", "aarch64")


def _run(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2000, help="bench_cpu rounds")
    parser.add_argument("--calls", type=int, default=200000, help="bench_syscall calls")
    parser.add_argument("--malloc", type=int, default=20000, help="bench_malloc rounds")
    parser.add_argument("--instructions", action="store_true",
                        help="count host instructions under callgrind instead of timing")
    args = parser.parse_args()
    if args.instructions and not shutil.which("valgrind"):
        sys.exit("--instructions needs valgrind")
    count = args.instructions
    precompile("common", "linux_user")
    rows = []
    for arch in ARCHES:
        qemu = shutil.which(f"qemu-{arch}")
        ours = find_tool(f"pyqemu-{arch}")
        if not qemu or not ours:
            sys.exit(f"need qemu-{arch} and pyqemu-{arch} on PATH")
        tools = {"qemu": [qemu], "pyqemu": [ours]}
        hello = str(build_guest("hello", arch, static=True))
        cpu = str(build_guest("bench_cpu", arch, static=True))
        sysc = str(build_guest("bench_syscall", arch, static=True))
        mall = str(build_guest("bench_malloc", arch))
        prefix = ["-L", sysroot(arch)]

        def both(*argv: str, dynamic: bool = False, tools=tools, prefix=prefix):
            return best({t: [*c, *(prefix if dynamic else []), *argv]
                         for t, c in tools.items()}, args.repeat, count)

        start = both(hello)
        unit = "M instructions" if count else "s"
        scale = 1e-6 if count else 1.0
        rows.append((arch, f"start-up (hello, static), {unit}",
                     {t: v * scale for t, v in start.items()}))
        base = both(cpu, "0")
        full = both(cpu, str(args.rounds))
        rows.append((arch, f"cpu: sha256 x{args.rounds} rounds of 16 KiB, {unit}",
                     {t: (full[t] - base[t]) * scale for t in full}))
        zero = both(sysc, "0")
        many = both(sysc, str(args.calls))
        per_call = "instructions" if count else "us"
        rows.append((arch, f"syscall (getppid), {per_call} per call",
                     {t: (many[t] - zero[t]) / args.calls * (1 if count else 1e6)
                      for t in many}))
        mix = both(mall, str(args.malloc), dynamic=True)
        rows.append((arch, f"malloc mix x{args.malloc} (dynamic), {unit}",
                     {t: v * scale for t, v in mix.items()}))
    print("| arch | workload | qemu | pyqemu | pyqemu/qemu |")
    print("|---|---|---|---|---|")
    for arch, name, t in rows:
        print(f"| {arch} | {name} | {_fmt(t['qemu'])} | {_fmt(t['pyqemu'])} | "
              f"{t['pyqemu'] / t['qemu']:.1f} |")


if __name__ == "__main__":
    main()
