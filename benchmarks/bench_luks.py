#!/usr/bin/env python3
"""Side-by-side benchmark of LUKS-encrypted qcow2 I/O: qemu-img/qemu-io against
pyqemu-img/pyqemu-io.

Makes a raw image of random data (every byte goes through the cipher), then
times, in one run, with the same secret and the same ``encrypt.*`` options
for both tools (default aes-256-xts-plain64, ``encrypt.iter-time=10`` so that
PBKDF2 costs ~10 ms per open and the figures are about I/O):

* ``create`` of an empty encrypted image (PBKDF2 calibration: qemu-img times
  its hash loop until it has run long enough; we measure 100 ms of CPU);
* raw -> LUKS qcow2 with ``convert`` (create included);
* raw -> LUKS qcow2 with ``convert -n`` into an image the same tool made
  (I/O only);
* LUKS qcow2 -> raw with ``convert`` (from a qemu-img-made image);
* qemu-io style reads of the whole image: one ``read 0 SIZE`` and ``read``
  commands of 1 MiB each (qemu-io vs pyqemu-io, from the qemu-img-made image).

The tools alternate inside each repeat; the best wall time of each is
reported, with CPU seconds (user + system; steadier on a shared host) and the
ratio pyqemu/qemu. Every converted output is checked against the source.

Usage: python3 benchmarks/bench_luks.py [--size 256M] [--repeat 3] [--dir DIR]
       [--options encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile

from _common import find_tool, img_tools, measure, parse_size, precompile

SECRET = ["--object", "secret,id=s0,data=benchmark-passphrase"]
#: qemu-img 7.2 now and then fails to time PBKDF2 while it makes a LUKS header
FLAKY = "Unable to get accurate CPU usage"


def measure_retry(cmd: list[str]) -> tuple[float, int, float]:
    """``measure``, again while qemu-img hits FLAKY (a failed try is not timed)."""
    for _ in range(20):
        try:
            return measure(cmd)
        except SystemExit as exc:
            if FLAKY not in str(exc.code):
                raise
    sys.exit(f"{cmd[0]}: {FLAKY} (20 tries)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--iter-time", default="10", help="encrypt.iter-time (ms)")
    ap.add_argument("--options", default="", help="more -o options for both tools")
    args = ap.parse_args()
    size = parse_size(args.size)
    qemu_img, pyqemu_img = img_tools()
    qemu_io, pyqemu_io = shutil.which("qemu-io"), find_tool("pyqemu-io")
    if not qemu_io or not pyqemu_io:
        sys.exit("need both qemu-io and pyqemu-io on PATH")
    precompile("io_tool")
    enc = f"encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time={args.iter_time}"
    if args.options:
        enc += "," + args.options
    work = tempfile.mkdtemp(prefix="pyqemu-bench-luks-", dir=args.dir)

    def iopts(path: str) -> list[str]:
        return ["--image-opts", f"driver=qcow2,encrypt.key-secret=s0,file.filename={path}"]

    def create(tool: str, path: str) -> list[str]:
        return [tool, "create", "-q", "-f", "qcow2", *SECRET, "-o", enc, path, str(size)]

    try:
        src = os.path.join(work, "src.raw")
        with open(src, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
        ref = os.path.join(work, "ref.qcow2")
        measure_retry(create(qemu_img, ref))
        measure([qemu_img, "convert", "-n", *SECRET, src, "--target-image-opts", iopts(ref)[1]])
        chunk = 1 << 20
        reads_1m = [a for off in range(0, size, chunk) for a in ("-c", f"read {off} {chunk}")]

        def cases(tool_img: str, tool_io: str, tag: str) -> list[tuple[str, list[str], str]]:
            out = os.path.join(work, f"out-{tag}")
            pre = os.path.join(work, f"pre-{tag}.qcow2")
            return [
                ("create (PBKDF2 calibration)", create(tool_img, out + ".qcow2"), ""),
                (
                    "raw -> LUKS qcow2 (convert)",
                    [tool_img, "convert", *SECRET, "-O", "qcow2", "-o", enc, src, out + ".qcow2"],
                    out + ".qcow2",
                ),
                (
                    "raw -> LUKS qcow2 (convert -n)",
                    [tool_img, "convert", "-n", *SECRET, src, "--target-image-opts", iopts(pre)[1]],
                    pre,
                ),
                (
                    "LUKS qcow2 -> raw (convert)",
                    [tool_img, "convert", *SECRET, *iopts(ref), "-O", "raw", out + ".raw"],
                    out + ".raw",
                ),
                (
                    f"io: read 0 {args.size}",
                    [tool_io, *SECRET, *iopts(ref), "-c", f"read 0 {size}"],
                    "",
                ),
                ("io: 1 MiB reads", [tool_io, *SECRET, *iopts(ref), *reads_1m], ""),
            ]

        names = [c[0] for c in cases(qemu_img, qemu_io, "q")]
        best: dict[tuple[str, str], tuple[float, int, float]] = {}
        print(f"# {args.size} random data, -o {enc}", flush=True)
        print(f"# load average at start: {os.getloadavg()[0]:.2f}", flush=True)
        for rep in range(args.repeat):
            order = [("qemu", qemu_img, qemu_io), ("py", pyqemu_img, pyqemu_io)]
            if rep % 2:
                order.reverse()
            for tag, tool_img, tool_io in order:
                pre = os.path.join(work, f"pre-{tag}.qcow2")
                measure_retry(create(tool_img, pre))  # the target of convert -n, untimed
                for name, cmd, output in cases(tool_img, tool_io, tag):
                    for leftover in (f"out-{tag}.qcow2", f"out-{tag}.raw"):
                        path = os.path.join(work, leftover)
                        if os.path.exists(path) and (output == "" or path == output):
                            os.unlink(path)
                    result = measure_retry(cmd)
                    if output.endswith(".raw") and not filecmp.cmp(src, output, shallow=False):
                        sys.exit(f"{tag}: {name}: output differs from the source")
                    if output.endswith(".qcow2"):
                        back = os.path.join(work, "check.raw")
                        measure([qemu_img, "convert", *SECRET, *iopts(output), "-O", "raw", back])
                        if not filecmp.cmp(src, back, shallow=False):
                            sys.exit(f"{tag}: {name}: qemu-img reads other data than the source")
                        os.unlink(back)
                    key = (tag, name)
                    if key not in best or result[0] < best[key][0]:
                        best[key] = result
        print(
            "| case | qemu s | pyqemu s | ratio | qemu CPU s | pyqemu CPU s | qemu MB | pyqemu MB |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in names:
            q, p = best[("qemu", name)], best[("py", name)]
            print(
                f"| {name} | {q[0]:.2f} | {p[0]:.2f} | {p[0] / q[0]:.2f}x | {q[2]:.2f} "
                f"| {p[2]:.2f} | {q[1] / 1024:.0f} | {p[1] / 1024:.0f} |",
                flush=True,
            )
        print(f"# load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
