"""pyqemu-system-x86_64 against qemu-system-x86_64 (TCG) on the same guests.

Workloads (guests in tests/guests/x86/, built by tests/guests/build_x86.py):
- first byte: ``-nographic -net none -hda boot.raw -snapshot``: seconds from the
  process start to the first byte on the serial console (SeaBIOS's, through its
  serial console) and to the boot sector's "BOOT int10" line (the sector waits
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
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import find_tool, precompile  # noqa: E402
from tests.guests.build_x86 import build_bootsector, build_mbkernel  # noqa: E402

TIMEOUT = 600.0


def _watch(cmd: list[str], marks: list[bytes]) -> tuple[dict[bytes, float], float, bytes]:
    """Run ``cmd``; seconds from start until each of ``marks`` first appears on
    stdout (b"" = the first byte), until exit, and the whole output."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    seen: dict[bytes, float] = {}
    out = b""
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        now = time.perf_counter() - start
        if not chunk:
            break
        out += chunk
        for mark in marks:
            if mark not in seen and mark in out:
                seen[mark] = now
        if now > TIMEOUT:
            proc.kill()
            sys.exit(f"{' '.join(cmd)}: still running after {TIMEOUT:.0f}s")
    err = proc.stderr.read() if proc.stderr else b""
    rc = proc.wait()
    total = time.perf_counter() - start
    missing = [m for m in marks if m not in seen]
    if rc != 0 or missing:
        sys.exit(
            f"{' '.join(cmd)}: exit {rc}, missing {missing}\n"
            f"stdout: {out[-1500:]!r}\nstderr: {err[-1500:]!r}"
        )
    return seen, total, out


def _fmt(value: float) -> str:
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

    def keep(tool: str, key: str, value: float) -> None:
        best[tool][key] = min(best[tool].get(key, float("inf")), value)

    for _ in range(args.repeat):
        for tool, path in tools.items():
            seen, total, _ = _watch([str(path), *boot_args], [b"", b"BOOT int10"])
            keep(tool, "first", seen[b""])
            keep(tool, "sector", seen[b"BOOT int10"])
            keep(tool, "poweroff", total)
        for tool, path in tools.items():
            seen, total, out = _watch([str(path), *bench_args], [start_mark, done_mark])
            hashes[tool].add(out[out.index(done_mark) :].split(b"\r\n")[0])
            keep(tool, "loop", seen[done_mark] - seen[start_mark])
            keep(tool, "kernel", total)
    lines = {h for v in hashes.values() for h in v}
    if len(lines) != 1:
        sys.exit(f"CPU loop results differ: {hashes}")

    rows = [
        ("start to first serial byte (SeaBIOS), s", "first"),
        ("start to the boot sector's first line, s", "sector"),
        ("boot sector run to ACPI poweroff, s", "poweroff"),
        (f"Multiboot CPU loop, {args.millions}M iterations, s", "loop"),
        ("Multiboot kernel run to poweroff, s", "kernel"),
    ]
    names = list(tools)
    print(f"loop result: {lines.pop().decode()}")
    print("| workload | " + " | ".join(names) + (" | pyqemu/qemu |" if len(names) == 2 else " |"))
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for label, key in rows:
        cells = [_fmt(best[t][key]) for t in names]
        ratio = f" | {best['pyqemu'][key] / best['qemu'][key]:.2f}" if len(names) == 2 else ""
        print(f"| {label} | " + " | ".join(cells) + ratio + " |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
