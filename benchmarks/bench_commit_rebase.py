#!/usr/bin/env python3
"""Side-by-side benchmark of ``commit`` and ``rebase``: qemu-img against pyqemu-img.

Builds, once, a qcow2 base of mixed content (random data runs, zero runs and
holes), an overlay over it that changes ~half of the image (new random data,
zeroed runs: ``qemu-img convert -B`` stores only what differs, as data or zero
clusters), and an unrelated second base. Then times, for both tools, each on
fresh copies of the same images:

* ``commit top.qcow2`` (overlay into base, then the overlay emptied)
* ``rebase -b other.qcow2 -F qcow2 top.qcow2`` (safe mode: compares old and
  new backing content wherever the overlay does not allocate)
* ``rebase -b "" top.qcow2`` (flatten)

and reports the best wall time of N runs (the tools alternate; each run's
images are copied and synced to disk first) and the ratio pyqemu/qemu, and
the same for CPU time (user + system; on a shared host the steadier figure:
wall time also holds waiting for a CPU that other jobs hold). Every
result is checked with ``qemu-img compare`` (what the chain showed before must
be what it shows after), so a fast wrong answer can't win.

Usage: python3 benchmarks/bench_commit_rebase.py [--size 1G] [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

from _common import img_tools, make_mixed_raw, measure, parse_size


def overlay_changes(size: int, seed: int) -> list[str]:
    """qemu-io commands that rewrite about half of the image, in 64 KiB..4 MiB
    pieces (pattern data 35%, zeroes 15%), not cluster aligned at one end."""
    rng = random.Random(seed)
    cmds: list[str] = []
    offset = 0
    while offset < size:
        length = min(size - offset, rng.choice([64, 256, 1024, 4096]) * 1024)
        kind = rng.random()
        start = offset + (rng.choice([0, 0, 4096]) if length > 8192 else 0)
        if kind < 0.35:
            cmds.append(f"write -P {rng.randrange(1, 256)} {start} {offset + length - start}")
        elif kind < 0.5:
            cmds.append(f"write -z {start} {offset + length - start}")
        offset += length
    return cmds


def fresh_copy(templates: str, run_dir: str) -> None:
    """Copy the images, then write the copies back to disk: otherwise the timed
    command's final flush would write back the copy too, by however much the
    kernel has not yet done on its own."""
    shutil.rmtree(run_dir, ignore_errors=True)
    os.mkdir(run_dir)
    for name in os.listdir(templates):
        subprocess.run(
            ["cp", "--sparse=always", os.path.join(templates, name), run_dir], check=True
        )
    os.sync()


def measure_in(cmd: list[str], cwd: str) -> tuple[float, int, float]:
    """:func:`_common.measure` (wall s, peak RSS KiB, CPU s) run in ``cwd``."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        return measure(cmd)
    finally:
        os.chdir(here)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    size = parse_size(args.size)
    qemu_img, pyqemu_img = img_tools()
    work = tempfile.mkdtemp(prefix="pyqemu-bench-", dir=args.dir)
    try:
        tpl = os.path.join(work, "tpl")
        os.mkdir(tpl)
        base_raw = os.path.join(work, "base.raw")
        other_raw = os.path.join(work, "other.raw")
        top_raw = os.path.join(work, "top.raw")
        make_mixed_raw(base_raw, size, 1)
        make_mixed_raw(other_raw, size, 3)

        def img(*a: str) -> None:
            subprocess.run([qemu_img, *a], cwd=tpl, check=True, capture_output=True)

        img("convert", "-f", "raw", "-O", "qcow2", base_raw, "base.qcow2")
        img("convert", "-f", "raw", "-O", "qcow2", other_raw, "other.qcow2")
        img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
        io = [shutil.which("qemu-io") or "qemu-io"]
        for cmd in overlay_changes(size, 2):
            io += ["-c", cmd]
        subprocess.run([*io, "top.qcow2"], cwd=tpl, check=True, capture_output=True)
        # the reference content of the chain
        img("convert", "-O", "raw", "top.qcow2", top_raw)
        os.unlink(base_raw)
        os.unlink(other_raw)
        os.sync()
        print(
            f"# {args.size} qcow2 chain: base (mixed data/zero/holes) <- top (about half "
            "rewritten: data and zero clusters); best of "
            f"{args.repeat}; load average {os.getloadavg()[0]:.2f} at start",
            flush=True,
        )
        cases = [
            ("commit", ["commit", "-q", "top.qcow2"], "base.qcow2"),
            (
                "rebase (safe, new base)",
                ["rebase", "-q", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"],
                "top.qcow2",
            ),
            ("rebase -b '' (flatten)", ["rebase", "-q", "-b", "", "top.qcow2"], "top.qcow2"),
        ]
        print(
            "| case | qemu-img s | pyqemu-img s | ratio | qemu-img CPU s | pyqemu-img CPU s | CPU ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, cmd, result in cases:
            best: dict[str, float] = {}
            best_cpu: dict[str, float] = {}
            # the tools alternate, so that a change of the host's load hits both
            for _ in range(args.repeat):
                for tool_name, tool in (("qemu", qemu_img), ("py", pyqemu_img)):
                    run_dir = os.path.join(work, "run")
                    fresh_copy(tpl, run_dir)
                    wall, _, cpu = measure_in([tool, *cmd], run_dir)
                    cmp = subprocess.run(
                        [qemu_img, "compare", "-f", "raw", "-F", "qcow2", top_raw, result],
                        cwd=run_dir,
                        capture_output=True,
                        text=True,
                    )
                    if cmp.returncode != 0:
                        sys.exit(f"{tool_name} {name}: result differs: {cmp.stdout}{cmp.stderr}")
                    chk = subprocess.run(
                        [qemu_img, "check", result], cwd=run_dir, capture_output=True, text=True
                    )
                    if chk.returncode != 0:
                        sys.exit(f"{tool_name} {name}: check failed: {chk.stdout}{chk.stderr}")
                    best[tool_name] = min(best.get(tool_name, wall), wall)
                    best_cpu[tool_name] = min(best_cpu.get(tool_name, cpu), cpu)
            q, p = best["qemu"], best["py"]
            qc, pc = best_cpu["qemu"], best_cpu["py"]
            print(
                f"| {name} | {q:.2f} | {p:.2f} | {p / q:.2f}x | {qc:.2f} | {pc:.2f} | {pc / qc:.2f}x |",
                flush=True,
            )
        print(f"# load average {os.getloadavg()[0]:.2f} at end")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
