"""pyqemu-nbd side by side with qemu-nbd: throughput, IOPS and latency.

    python3 benchmarks/bench_nbd.py [--size 256M] [--seq-size 2G] [--runtime 4] [--repeat 4]

For raw and qcow2 images of ``--seq-size`` random bytes: nbdcopy sequential
read of the whole image (server -> null) and write (random-data raw file ->
server) with 1 and 4 connections, fio's nbd engine random 4K reads and writes
at iodepth 32 over the first ``--size`` bytes, and qd1 4K random read latency.
The sequential copies move ``--seq-size`` each: with 256 MiB a copy took
0.17-0.26 s and the results clustered at a few values (nbdcopy's start-up and
scheduler ticks, not the server).
Both servers run at once on unix sockets in a temporary folder, each on its own
copy of the image, and are always stopped. Every measurement alternates the two
servers and is repeated in ``--repeat`` rounds, the median reported; the
servers are restarted at each round and trade copies (a file's page cache state
alone moved the cost of a write by up to 2x), and each reads its copy once
before the round (untimed: qemu-nbd's writes to a qcow2 image it has not read
cost it twice the CPU). The hosts are shared: a lone run can be off by 30%.
``sync`` runs before every measurement, so that no run pays for the writeback
of the one before. Besides the client's view, the server's own CPU time (user
+ system from /proc, all its threads) is reported, per copy and per fio I/O:
that one depends less on who else is running.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_size, precompile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.servers import unix_listening  # noqa: E402

SERVERS = {
    "qemu-nbd": ["qemu-nbd"],
    "pyqemu-nbd": [sys.executable, "-m", "pyqemu.nbd_server.main"],
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def start(kind: str, sock: Path, fmt: str, image: str) -> subprocess.Popen:
    cmd = [*SERVERS[kind], "-k", str(sock), "-t", "-e", "0", "-f", fmt, "--cache=writeback", image]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    for _ in range(400):
        if sock.exists() and unix_listening(sock):
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - t


def fio(sock: str, rw: str, depth: int, runtime: int, size: int, pid: int) -> dict[str, float]:
    c0 = cpu_seconds(pid)
    out = subprocess.run(
        [
            "fio", "--name=b", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={sock}",
            f"--rw={rw}", "--bs=4k", f"--iodepth={depth}", f"--size={size}",
            f"--runtime={runtime}", "--time_based", "--output-format=json",
        ],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(pid) - c0
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return {
        "iops": side["iops"],
        "lat_us": side["clat_ns"]["mean"] / 1000,
        "cpu_us": cpu * 1e6 / max(1, side["total_ios"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256M", help="region of the fio runs")
    ap.add_argument("--seq-size", default="2G", help="image size, moved by each nbdcopy")
    ap.add_argument("--runtime", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=4, help="rounds (even: each server on each image as often)")
    args = ap.parse_args()
    size = parse_size(args.size)
    seq_size = max(size, parse_size(args.seq_size))
    precompile("common", "nbd_server")
    mib = seq_size / (1 << 20)
    fio_cases = {
        "randread IOPS qd32": ("randread", 32, "iops"),
        "randwrite IOPS qd32": ("randwrite", 32, "iops"),
        "randread lat us qd1": ("randread", 1, "lat_us"),
    }
    keys = [f"{d} MiB/s c{c}" for c in (1, 4) for d in ("read", "write")] + list(fio_cases)

    def measure(name: str, sock: str, pid: int, src: str) -> dict[str, float]:
        """One run of case ``name`` against the server on ``sock``."""
        uri = f"nbd+unix:///?socket={sock}"
        # the page cache's dirty data of the run before is written back
        # first: else that writeback lands on whichever run comes next
        os.sync()
        if name in fio_cases:
            rw, depth, key = fio_cases[name]
            r = fio(sock, rw, depth, args.runtime, size, pid)
            return {name: r[key], f"{name} cpu": r["cpu_us"]}
        conns = name[-1]
        copy = [uri, "null:"] if name.startswith("read") else [src, uri]
        c0 = cpu_seconds(pid)
        rate = mib / timed(["nbdcopy", f"--connections={conns}", *copy])
        return {name: rate, f"{name} cpu": (cpu_seconds(pid) - c0) * 1000}

    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    load0 = os.getloadavg()[0]
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        src = str(Path(tmp) / "src.raw")
        with open(src, "wb") as fh:
            for _ in range(seq_size >> 20):
                fh.write(os.urandom(1 << 20))
        for fmt in ("raw", "qcow2"):
            images = []
            for i in range(len(SERVERS)):
                image = str(Path(tmp) / f"image{i}.{fmt}")
                subprocess.run(["qemu-img", "convert", "-O", fmt, src, image], check=True)
                images.append(image)
            for rep in range(args.repeat):
                # the servers trade images at every round: the page cache
                # state of a file moves the kernel's cost per write by up to
                # 2x (the same server on two fresh copies, alternating runs)
                procs: dict[str, subprocess.Popen] = {}
                socks: dict[str, str] = {}
                try:
                    for i, kind in enumerate(SERVERS):
                        sock = Path(tmp) / f"{kind}.sock"
                        image = images[(i + rep) % len(images)]
                        procs[kind] = start(kind, sock, fmt, image)
                        socks[kind] = str(sock)
                        # a first read of the image, not timed: each server
                        # starts every round on a warm cache
                        timed(["nbdcopy", f"nbd+unix:///?socket={sock}", "null:"])
                    order = list(SERVERS) if rep % 2 == 0 else list(reversed(SERVERS))
                    for name in keys:
                        for kind in order:
                            got = measure(name, socks[kind], procs[kind].pid, src)
                            slot = results.setdefault((fmt, kind), {})
                            for k, v in got.items():
                                slot.setdefault(k, []).append(v)
                finally:
                    for p in procs.values():
                        stop(p)
    wall = time.time() - t0
    med = {fk: {k: statistics.median(v) for k, v in r.items()} for fk, r in results.items()}
    print(f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end; wall {wall:.0f} s")
    print(f"images {seq_size >> 20} MiB, fio over the first {size >> 20} MiB")
    print()
    print("| format | server | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for (fmt, kind), r in med.items():
        print(f"| {fmt} | {kind} | " + " | ".join(f"{r[k]:.0f}" for k in keys) + " |")
    print()
    print("| format | pyqemu/qemu | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for fmt in ("raw", "qcow2"):
        q, p = med[(fmt, "qemu-nbd")], med[(fmt, "pyqemu-nbd")]
        print(f"| {fmt} | ratio | " + " | ".join(f"{p[k] / q[k]:.2f}" for k in keys) + " |")
    print()
    print(
        "Server CPU time (user + system, all threads; lower is better): ms per"
        f" {seq_size >> 20} MiB copy, us per fio I/O:"
    )
    print()
    print("| format | server | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for (fmt, kind), r in med.items():
        print(f"| {fmt} | {kind} | " + " | ".join(f"{r[k + ' cpu']:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
