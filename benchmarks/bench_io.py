#!/usr/bin/env python3
"""Side-by-side benchmark of qemu-io against pyqemu-io.

For raw and qcow2 images of ``--size`` (default 1G), times in one run:

* ``write -P 0xab 0 <size>`` (one request: qemu-io allows up to 2147483136 bytes)
* ``read -P 0xab 0 <size>`` (verifies the pattern)
* start-up: ``-c length`` on the raw image

for both tools, best of ``--repeat`` wall times each (the whole process, as a
user sees it), and prints a markdown table with the ratio pyqemu/qemu. Every
run must exit 0 and print no "Pattern verification failed".

Usage: python3 benchmarks/bench_io.py [--size 1G] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _common import find_tool, parse_size, timed


def tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        sys.exit(f"{name} not found")
    return found


def best(cmd: list[str], repeat: int) -> float:
    return min(timed(cmd, bad_output="verification failed") for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    size = parse_size(args.size)
    qemu_img, qemu_io, pyqemu_io = tool("qemu-img"), tool("qemu-io"), tool("pyqemu-io")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for fmt in ("raw", "qcow2"):
            for name in ("qemu", "pyqemu"):
                path = os.path.join(tmp, f"{name}.{fmt}")
                subprocess.run([qemu_img, "create", "-q", "-f", fmt, path, str(size)], check=True)
            for op in ("write", "read"):
                times = {}
                for name, prog in (("qemu", qemu_io), ("pyqemu", pyqemu_io)):
                    path = os.path.join(tmp, f"{name}.{fmt}")
                    cmd = [prog, "-f", fmt, "-c", f"{op} -P 0xab 0 {size}", path]
                    times[name] = best(cmd, args.repeat)
                rows.append((f"`{op} -P 0xab 0 {args.size}` ({fmt})", times))
        raw = os.path.join(tmp, "qemu.raw")
        times = {
            name: best([prog, "-f", "raw", "-c", "length", raw], max(args.repeat, 5))
            for name, prog in (("qemu", qemu_io), ("pyqemu", pyqemu_io))
        }
        rows.append(("start-up: `-c length` (raw)", times))
    print(f"best of {args.repeat}, wall time of the whole process\n")
    print("| command | qemu-io | pyqemu-io | ratio |")
    print("|---|---:|---:|---:|")
    for label, t in rows:
        print(
            f"| {label} | {t['qemu']:.3f} s | {t['pyqemu']:.3f} s | {t['pyqemu'] / t['qemu']:.2f}x |"
        )


if __name__ == "__main__":
    main()
