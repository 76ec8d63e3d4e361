"""pyqemu-nbd side by side with qemu-nbd: throughput, IOPS and latency.

    python3 benchmarks/bench_nbd.py [--size 512M] [--runtime 5]

For raw and qcow2 images: nbdcopy sequential read (server -> null) and write
(zero-free pattern file -> server) with 1 and 4 connections, fio's nbd engine
random 4K reads and writes at iodepth 32, and qd1 4K random read latency.
Servers run on unix sockets in a temporary folder and are always stopped.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVERS = {
    "qemu-nbd": ["qemu-nbd"],
    "pyqemu-nbd": [sys.executable, "-m", "pyqemu.nbd_server.main"],
}


def start(kind: str, sock: Path, fmt: str, image: str) -> subprocess.Popen:
    cmd = [*SERVERS[kind], "-k", str(sock), "-t", "-e", "0", "-f", fmt, "--cache=writeback", image]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    for _ in range(400):
        if sock.exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - t


def fio(uri_sock: str, rw: str, depth: int, runtime: int, size: int) -> dict:
    out = subprocess.run(
        [
            "fio", "--name=b", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={uri_sock}",
            f"--rw={rw}", "--bs=4k", f"--iodepth={depth}", f"--size={size}",
            f"--runtime={runtime}", "--time_based", "--output-format=json",
        ],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {"iops": side["iops"], "lat_us": side["clat_ns"]["mean"] / 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="512M")
    ap.add_argument("--runtime", type=int, default=5)
    args = ap.parse_args()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(args.size[:-1]) * mult[args.size[-1]] if args.size[-1] in mult else int(args.size)
    rows: list[tuple[str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        src = Path(tmp) / "src.raw"
        with open(src, "wb") as fh:
            block = os.urandom(1 << 20)
            for _ in range(size >> 20):
                fh.write(block)
        for fmt in ("raw", "qcow2"):
            for kind in SERVERS:
                image = str(Path(tmp) / f"img.{fmt}")
                subprocess.run(["qemu-img", "convert", "-O", fmt, str(src), image], check=True)
                sock = Path(tmp) / f"{kind}.sock"
                proc = start(kind, sock, fmt, image)
                uri = f"nbd+unix:///?socket={sock}"
                r: dict[str, float] = {}
                try:
                    for conns in (1, 4):
                        t = timed(["nbdcopy", f"--connections={conns}", uri, "null:"])
                        r[f"read MiB/s c{conns}"] = size / t / (1 << 20)
                        t = timed(["nbdcopy", f"--connections={conns}", str(src), uri])
                        r[f"write MiB/s c{conns}"] = size / t / (1 << 20)
                    r["randread IOPS qd32"] = fio(str(sock), "randread", 32, args.runtime, size)[
                        "iops"
                    ]
                    r["randwrite IOPS qd32"] = fio(str(sock), "randwrite", 32, args.runtime, size)[
                        "iops"
                    ]
                    r["randread lat us qd1"] = fio(str(sock), "randread", 1, args.runtime, size)[
                        "lat_us"
                    ]
                finally:
                    stop(proc)
                rows.append((fmt, kind, r))
    keys = list(rows[0][2])
    print("| format | server | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for fmt, kind, r in rows:
        print(f"| {fmt} | {kind} | " + " | ".join(f"{r[k]:.0f}" for k in keys) + " |")
    print()
    print("| format | pyqemu/qemu | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    by = {(f, k): r for f, k, r in rows}
    for fmt in ("raw", "qcow2"):
        q, p = by[(fmt, "qemu-nbd")], by[(fmt, "pyqemu-nbd")]
        print(f"| {fmt} | ratio | " + " | ".join(f"{p[k] / q[k]:.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
