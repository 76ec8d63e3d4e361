#!/usr/bin/env python3
"""Side-by-side benchmark of ``convert``: qemu-img against pyqemu-img.

Makes a raw image of mixed content (random data runs and zero runs, some of
them holes), then times, in one run and on the same input:

* raw -> qcow2, qcow2 -> raw, raw -> qcow2 compressed (-c)

for both tools, and reports wall time, the ratio pyqemu/qemu and each
tool's peak memory (max RSS of the child). Every output is checked with
``qemu-img compare`` against the source, so a fast wrong answer can't win.

Usage: python3 benchmarks/bench_convert.py [--size 2G] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from _common import img_tools, make_mixed_raw, measure, parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    size = parse_size(args.size)
    qemu_img, pyqemu_img = img_tools()
    work = tempfile.mkdtemp(prefix="pyqemu-bench-", dir=args.dir)
    try:
        src = os.path.join(work, "src.raw")
        print(f"# source: {args.size} raw, mixed random data / zeroes / holes", flush=True)
        make_mixed_raw(src, size, 1)
        ref_qcow2 = os.path.join(work, "ref.qcow2")
        subprocess.run([qemu_img, "convert", "-O", "qcow2", src, ref_qcow2], check=True)
        cases = [
            ("raw -> qcow2", ["-f", "raw", "-O", "qcow2"], src, "qcow2"),
            ("qcow2 -> raw", ["-f", "qcow2", "-O", "raw"], ref_qcow2, "raw"),
            ("raw -> qcow2 -c", ["-f", "raw", "-O", "qcow2", "-c"], src, "qcow2"),
        ]
        print(f"# load average at start: {os.getloadavg()[0]:.2f}", flush=True)
        print(
            "| case | qemu-img s | pyqemu-img s | ratio | qemu-img CPU s | pyqemu-img CPU s "
            "| qemu-img peak MB | pyqemu-img peak MB |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, opts, source, out_fmt in cases:
            results = {}
            for tool_name, tool in (("qemu", qemu_img), ("py", pyqemu_img)):
                best = None
                for i in range(args.repeat):
                    out = os.path.join(work, f"out-{tool_name}-{i}.{out_fmt}")
                    wall, rss, cpu = measure([tool, "convert", *opts, source, out])
                    cmp = subprocess.run(
                        [qemu_img, "compare", "-f", "raw", "-F", out_fmt, src, out],
                        capture_output=True,
                        text=True,
                    )
                    if cmp.returncode != 0:
                        sys.exit(f"{tool_name} output differs: {cmp.stdout}{cmp.stderr}")
                    os.unlink(out)
                    if best is None or wall < best[0]:
                        best = (wall, rss, cpu)
                results[tool_name] = best
            q, p = results["qemu"], results["py"]
            print(
                f"| {name} | {q[0]:.2f} | {p[0]:.2f} | {p[0] / q[0]:.2f}x | {q[2]:.2f} | {p[2]:.2f} "
                f"| {q[1] / 1024:.0f} | {p[1] / 1024:.0f} |",
                flush=True,
            )
        print(f"# load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
