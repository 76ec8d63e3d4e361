"""pyqemu-system-x86_64 against qemu-system-x86_64 (TCG) on the same guests.

Workloads (guests in tests/guests/x86/, built by tests/guests/build_x86.py):
- first byte: ``-nographic -net none -hda boot.raw -snapshot``: seconds from the
  process start to SeaBIOS's banner on the serial console (through its serial
  console, sercon) and to the boot sector's "BOOT int10" line (the sector waits
  two BIOS ticks, ~0.11 s of guest time, before it prints);
- boot sector to poweroff: the same run's wall time until the process exits
  (the sector powers off through ACPI);
- CPU loop: the Multiboot kernel with ``-append bench=MILLIONS`` (an xorshift +
  FNV-1a loop, PIT at 100 Hz running): seconds between its "MBK bench start" and
  "MBK bench done" serial lines; the loop's hash must be equal in both.

Each measurement alternates the two tools and keeps the best of ``--repeat`` runs
(the hosts are shared and noisy). Prints a markdown table for docs/benchmarks.md.
``--only qemu`` measures qemu-system-x86_64 alone (pyqemu column left out).

    python3 benchmarks/bench_system.py [--repeat 3] [--millions 200] [--only qemu]
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import find_tool, precompile  # noqa: E402
from tests.guests.build_x86 import build_bootsector, build_mbkernel  # noqa: E402

TIMEOUT = 120.0  # per run; a mark not seen by then counts as not reached


def _watch(cmd: list[str], marks: list[bytes]) -> tuple[dict[bytes, float], float | None, bytes]:
    """Run ``cmd``; seconds from start until each of ``marks`` first appears on
    stdout (b"" = the first byte; a mark never seen is left out; reading stops
    at the last mark), until exit (None: still running 10 s after the last mark
    or at TIMEOUT, then killed), and the whole output."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    seen: dict[bytes, float] = {}
    out = b""
    fd = proc.stdout.fileno()
    while marks[-1] not in seen:
        if not select.select([fd], [], [], max(0.0, TIMEOUT - (time.perf_counter() - start)))[0]:
            break
        chunk = os.read(fd, 65536)
        now = time.perf_counter() - start
        if not chunk:
            break
        out += chunk
        for mark in marks:
            if mark not in seen and mark in out:
                seen[mark] = now
    total: float | None = None
    try:
        rc = proc.wait(timeout=10 if marks[-1] in seen else 0.1)
        total = time.perf_counter() - start
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    proc.stdout.close()
    if total is not None and rc != 0:
        sys.exit(f"{' '.join(cmd)}: exit {rc}\nstdout: {out[-1500:]!r}")
    return seen, total, out


def _fmt(value: float) -> str:
    if value != value:
        return "not reached"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--millions", type=int, default=200, help="CPU loop iterations, millions")
    parser.add_argument("--only", choices=("qemu", "pyqemu"), help="measure one tool")
    args = parser.parse_args()
    if not 1 <= args.millions <= 4000:
        sys.exit("--millions must be 1..4000 (the guest counts in 32 bits)")

    tools = {
        "qemu": shutil.which("qemu-system-x86_64"),
        "pyqemu": find_tool("pyqemu-system-x86_64"),
    }
    if args.only:
        tools = {args.only: tools[args.only]}
    for name, path in tools.items():
        if not path:
            sys.exit(f"need {name}-system-x86_64 on PATH")
    if "pyqemu" in tools:
        precompile("common", "system")

    tmp = tempfile.mkdtemp(prefix="bench_system.")
    disk = os.path.join(tmp, "boot.raw")
    data = build_bootsector().read_bytes() + os.urandom(512)
    with open(disk, "wb") as f:
        f.write(data + bytes(1024 * 1024 - len(data)))
    kernel = str(build_mbkernel())

    boot_args = ["-nographic", "-net", "none", "-m", "128", "-hda", disk, "-snapshot"]
    bench_args = ["-display", "none", "-serial", "stdio", "-net", "none", "-m", "128",
                  "-kernel", kernel, "-append", f"bench={args.millions}"]  # fmt: skip
    start_mark, done_mark = b"MBK bench start\r\n", b"MBK bench done"

    best: dict[str, dict[str, float]] = {t: {} for t in tools}
    hashes: dict[str, set[bytes]] = {t: set() for t in tools}

    def keep(tool: str, key: str, value: float | None) -> None:
        # None: not reached (mark never printed, or the poweroff did not end the
        # process): the cell says "not reached" whatever the other repeats did
        old = best[tool].get(key, float("inf"))
        best[tool][key] = float("nan") if value is None or old != old else min(old, value)

    for _ in range(args.repeat):
        for tool, path in tools.items():
            seen, total, _ = _watch(
                [str(path), *boot_args], [b"SeaBIOS", b"BOOT int10", b"BOOT OK"]
            )
            keep(tool, "first", seen.get(b"SeaBIOS"))
            keep(tool, "sector", seen.get(b"BOOT int10"))
            keep(tool, "poweroff", total if b"BOOT OK" in seen else None)
        for tool, path in tools.items():
            seen, total, out = _watch(
                [str(path), *bench_args], [start_mark, done_mark, b"MBK DONE"]
            )
            if done_mark not in seen or start_mark not in seen:
                keep(tool, "loop", None)
                keep(tool, "kernel", None)
                continue
            hashes[tool].add(out[out.index(done_mark) :].split(b"\r\n")[0])
            keep(tool, "loop", seen[done_mark] - seen[start_mark])
            keep(tool, "kernel", total)
    lines = {h for v in hashes.values() for h in v}
    if len(lines) > 1:
        sys.exit(f"CPU loop results differ: {hashes}")

    rows = [
        ("start to SeaBIOS's banner on serial, s", "first"),
        ("start to the boot sector's first line, s", "sector"),
        ("boot sector run to ACPI poweroff, s", "poweroff"),
        (f"Multiboot CPU loop, {args.millions}M iterations, s", "loop"),
        ("Multiboot kernel run to poweroff, s", "kernel"),
    ]
    names = list(tools)
    print(f"loop result: {lines.pop().decode() if lines else 'not reached'}")
    print("| workload | " + " | ".join(names) + (" | pyqemu/qemu |" if len(names) == 2 else " |"))
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for label, key in rows:
        cells = [_fmt(best[t][key]) for t in names]
        ratio = ""
        if len(names) == 2:
            r = best["pyqemu"][key] / best["qemu"][key]
            ratio = f" | {r:.2f}" if r == r else " | "
        print(f"| {label} | " + " | ".join(cells) + ratio + " |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
