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
import random
import shutil
import subprocess
import sys
import tempfile


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def make_source(path: str, size: int, seed: int = 1) -> None:
    """Random data runs, written zero runs and holes, in 64 KiB..4 MiB pieces."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        offset = 0
        while offset < size:
            length = min(size - offset, rng.choice([64, 256, 1024, 4096]) * 1024)
            kind = rng.random()
            if kind < 0.5:
                f.seek(offset)
                f.write(rng.randbytes(length))
            elif kind < 0.7:
                f.seek(offset)
                f.write(bytes(length))
            offset += length


def measure(cmd: list[str]) -> tuple[float, int, float]:
    """Time ``cmd`` in a fresh Python wrapper so peak RSS and CPU time are its own.

    Returns (wall seconds, peak RSS KiB, CPU seconds user+system). On a shared
    host the CPU time is the steadier figure: wall time includes waiting for
    a CPU that other jobs hold.
    """
    wrapper = (
        "import resource,subprocess,sys,time;"
        "t=time.perf_counter();r=subprocess.run(sys.argv[1:]);e=time.perf_counter()-t;"
        "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(e, u.ru_maxrss, u.ru_utime+u.ru_stime);sys.exit(r.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}{proc.stdout}")
    elapsed, rss, cpu = proc.stdout.split()[-3:]
    return float(elapsed), int(rss), float(cpu)


def find_pyqemu_img() -> str | None:
    """The ``pyqemu-img`` entry point of this interpreter, else the one on PATH.

    A version manager's shim on PATH (pyenv: a bash script running ``pyenv
    exec``) costs ~0.1-0.2 s per start on a loaded host; that is the
    environment, not the tool, so the script next to ``sys.executable``
    is timed when there is one.
    """
    here = os.path.join(os.path.dirname(sys.executable), "pyqemu-img")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("pyqemu-img")


def precompile() -> None:
    """Write the package's ``.pyc`` files, as a wheel install does.

    With ``PYTHONDONTWRITEBYTECODE`` set (as on the dev hosts) an editable
    checkout is recompiled from source on every start (~30 ms for the qcow2
    driver alone), which no installed copy pays.
    """
    import compileall

    import pyqemu.common

    root = os.path.dirname(os.path.dirname(os.path.abspath(pyqemu.common.__file__)))
    for sub in ("common", "img_tool"):
        compileall.compile_dir(os.path.join(root, sub), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    size = parse_size(args.size)
    qemu_img = shutil.which("qemu-img")
    pyqemu_img = find_pyqemu_img()
    if not qemu_img or not pyqemu_img:
        sys.exit("need both qemu-img and pyqemu-img on PATH")
    precompile()
    work = tempfile.mkdtemp(prefix="pyqemu-bench-", dir=args.dir)
    try:
        src = os.path.join(work, "src.raw")
        print(f"# source: {args.size} raw, mixed random data / zeroes / holes", flush=True)
        make_source(src, size)
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
