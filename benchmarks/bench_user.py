"""pyqemu-arm / pyqemu-aarch64 against qemu-arm / qemu-aarch64 on the same binaries.

Workloads (guests in tests/guests/linux/, built by tests/guests/build.py):
- start-up: ``hello`` (static), wall time of the whole run;
- cpu: ``bench_cpu ROUNDS`` (SHA-256, static), wall time minus the start-up run;
- syscalls: ``bench_syscall N`` (getppid) minus ``bench_syscall 0``, per call;
- malloc: ``bench_malloc ROUNDS`` (dynamic, -L sysroot), wall time.

Each measurement alternates the two tools and keeps the best of ``--repeat`` runs
(the hosts are shared and noisy). Prints a markdown table for docs/benchmarks.md.

    python3 benchmarks/bench_user.py [--repeat 3] [--rounds 2000] [--calls 200000]
"""

from __future__ import annotations

import argparse
import os
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


def best(cmds: dict[str, list[str]], repeat: int) -> dict[str, float]:
    """Best wall time per tool, the tools alternating; outputs must agree."""
    times = {tool: float("inf") for tool in cmds}
    outputs: dict[str, str] = {}
    for _ in range(repeat):
        for tool, cmd in cmds.items():
            elapsed, out = _run(cmd)
            times[tool] = min(times[tool], elapsed)
            if outputs.setdefault(tool, out) != out:
                sys.exit(f"{tool}: output changed between runs of {' '.join(cmd)}")
    if len(set(outputs.values())) != 1:
        sys.exit(f"outputs differ: {outputs}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2000, help="bench_cpu rounds")
    parser.add_argument("--calls", type=int, default=200000, help="bench_syscall calls")
    parser.add_argument("--malloc", type=int, default=20000, help="bench_malloc rounds")
    args = parser.parse_args()
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
                         for t, c in tools.items()}, args.repeat)

        start = both(hello)
        rows.append((arch, "start-up (hello, static), s", start))
        base = both(cpu, "0")
        full = both(cpu, str(args.rounds))
        rows.append((arch, f"cpu: sha256 x{args.rounds} rounds of 16 KiB, s",
                     {t: full[t] - base[t] for t in full}))
        zero = both(sysc, "0")
        many = both(sysc, str(args.calls))
        rows.append((arch, "syscall (getppid), us per call",
                     {t: (many[t] - zero[t]) / args.calls * 1e6 for t in many}))
        rows.append((arch, f"malloc mix x{args.malloc} (dynamic), s",
                     both(mall, str(args.malloc), dynamic=True)))
    print("| arch | workload | qemu | pyqemu | pyqemu/qemu |")
    print("|---|---|---|---|---|")
    for arch, name, t in rows:
        print(f"| {arch} | {name} | {t['qemu']:.3g} | {t['pyqemu']:.3g} | "
              f"{t['pyqemu'] / t['qemu']:.1f} |")


if __name__ == "__main__":
    main()
