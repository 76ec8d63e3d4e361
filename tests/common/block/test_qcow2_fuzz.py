"""Garbage in, only our error out: mutated qcow2 images against our driver.

Valid seed images are made by qemu-img / qemu-io (backing file, compressed
clusters, internal snapshots, extended L2, refcount_bits 1 and 64, compat
0.10). Each mutant changes header fields, header extensions, L1/L2/refcount
entries or snapshot table bytes, or truncates the file. A worker process
(memory limited by RLIMIT_AS, each case under an alarm, the whole worker under
a parent-side timeout) then opens the mutant read-only, reads a few ranges,
walks block_status_above, calls specific_info() and check(0); and opens a
copy read-write and writes a little. The only acceptable outcomes are success
and a :class:`pyqemu.common.errors.QemuError`; anything else, a timeout or a
dead worker is a finding.

``Fuzzer``, ``make_seeds`` and ``mutate`` are shared with
``benchmarks/fuzz_soak.py``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import select
import struct
import subprocess
import sys
from collections.abc import Callable

import pytest

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CASE_SECONDS = 10  # alarm inside the worker
WORKER_SECONDS = 30  # parent-side kill if the worker does not answer
MEMORY_LIMIT = 2 << 30
MUTANTS = 350  # per test seed; benchmarks/fuzz_soak.py runs many more

# --- seed images --------------------------------------------------------------------------


def _sh(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or "failed" in r.stdout:
        raise RuntimeError(f"{cmd}: {r.stdout}{r.stderr}")


def make_seeds(qemu_img: str, qemu_io: str, workdir: str) -> dict[str, str]:
    """Valid images made by qemu, by name."""
    seeds: dict[str, str] = {}

    def create(name: str, opts: str, size: str = "4M") -> str:
        path = os.path.join(workdir, f"seed-{name}.qcow2")
        _sh(
            [qemu_img, "create", "-q", "-f", "qcow2"]
            + (["-o", opts] if opts else [])
            + [path, size]
        )
        seeds[name] = path
        return path

    def io(path: str, *cmds: str) -> None:
        args = [qemu_io, "-f", "qcow2"]
        for c in cmds:
            args += ["-c", c]
        _sh(args + [path])

    data = (
        "write -P 0x61 0 100k",
        "write -P 0x62 1M 64k",
        "write -z 2M 128k",
        "write -P 0x63 3M 7k",
    )
    io(create("plain", ""), *data)
    io(create("c4k-rc1", "cluster_size=4k,refcount_bits=1"), *data)
    io(
        create("c512-rc64", "cluster_size=512,refcount_bits=64", "1M"),
        "write -P 0x61 0 100k",
        "write -z 300k 5k",
        "write -P 0x62 700k 33k",
    )
    io(create("v2", "compat=0.10,cluster_size=4k"), *data)
    io(
        create("extl2", "extended_l2=on,cluster_size=64k"),
        "write -P 0x61 0 5k",
        "write -P 0x62 70k 3k",
        "write -z 200k 2k",
        "write -P 0x63 1M 64k",
    )
    io(
        create("compressed", "cluster_size=4k"),
        "write -c -P 0x61 0 64k",
        "write -c -P 0x62 1M 16k",
        "write -P 0x63 2M 8k",
    )
    io(create("zstd", "compression_type=zstd"), "write -c -P 0x61 0 128k", "write -P 0x62 1M 64k")
    snap = create("snapshots", "cluster_size=4k")
    io(snap, "write -P 0x61 0 64k", "write -P 0x62 1M 8k")
    _sh([qemu_img, "snapshot", "-c", "one", snap])
    io(snap, "write -P 0x64 0 8k", "write -c -P 0x65 2M 8k")
    _sh([qemu_img, "snapshot", "-c", "two", snap])
    io(snap, "write -P 0x66 4k 4k")
    base = os.path.join(workdir, "seed-base.raw")
    with open(base, "wb") as f:
        f.write(random.Random(5).randbytes(2 * MiB))
    io(
        create("backing", f"cluster_size=4k,backing_file={base},backing_fmt=raw"),
        "write -P 0x61 4k 12k",
        "write -z 1M 8k",
        "write -P 0x62 3M 4k",
    )
    io(create("lazy", "lazy_refcounts=on"), *data)
    return seeds


# --- mutations ----------------------------------------------------------------------------

# (name, offset, width) of the header fields (spec section "Header")
HEADER_FIELDS = [
    ("magic", 0, 4),
    ("version", 4, 4),
    ("backing_file_offset", 8, 8),
    ("backing_file_size", 16, 4),
    ("cluster_bits", 20, 4),
    ("size", 24, 8),
    ("crypt_method", 32, 4),
    ("l1_size", 36, 4),
    ("l1_table_offset", 40, 8),
    ("refcount_table_offset", 48, 8),
    ("refcount_table_clusters", 56, 4),
    ("nb_snapshots", 60, 4),
    ("snapshots_offset", 64, 8),
    ("incompatible_features", 72, 8),
    ("compatible_features", 80, 8),
    ("autoclear_features", 88, 8),
    ("refcount_order", 96, 4),
    ("header_length", 100, 4),
    ("compression_type", 104, 1),
]


def _get(buf: bytes | bytearray, off: int, width: int) -> int:
    if off + width > len(buf):
        return 0
    return int.from_bytes(buf[off : off + width], "big")


def _put(buf: bytearray, off: int, width: int, value: int) -> None:
    if off + width <= len(buf):
        buf[off : off + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")


def _interesting(rng: random.Random, old: int, width: int, file_len: int, cs: int) -> int:
    top = (1 << (8 * width)) - 1
    choices: list[Callable[[], int]] = [
        lambda: 0,
        lambda: 1,
        lambda: top,
        lambda: top >> 1,
        lambda: 1 << rng.randrange(8 * width),
        lambda: (1 << rng.randrange(8 * width)) - 1,
        lambda: old + rng.choice([-1, 1, -8, 8, cs, -cs]),
        lambda: old ^ (1 << rng.randrange(8 * width)),
        lambda: rng.randrange(top + 1),
        lambda: rng.randrange(max(1, file_len)),
        lambda: rng.randrange(max(1, file_len // cs) + 2) * cs,
        lambda: file_len + rng.randrange(4) * cs,
        lambda: rng.randrange(64),
    ]
    return rng.choice(choices)() & top


class _Image:
    """The few layout facts a mutator needs, parsed defensively."""

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.version = _get(buf, 4, 4)
        cb = _get(buf, 20, 4)
        self.cs = 1 << cb if 9 <= cb <= 21 else 65536
        self.l1_size = _get(buf, 36, 4)
        self.l1_off = _get(buf, 40, 8)
        self.rt_off = _get(buf, 48, 8)
        self.rt_clusters = _get(buf, 56, 4)
        self.nb_snapshots = _get(buf, 60, 4)
        self.snap_off = _get(buf, 64, 8)
        self.header_length = _get(buf, 100, 4) if self.version >= 3 else 72
        self.extl2 = self.version >= 3 and bool(_get(buf, 72, 8) & (1 << 4))
        self.refcount_order = _get(buf, 96, 4) if self.version >= 3 else 4

    def entries(self, table: int, count: int, width: int = 8) -> list[int]:
        """File offsets of the entries of a table that lie inside the file."""
        end = min(len(self.buf), table + count * width)
        return list(range(table, end - width + 1, width)) if table < len(self.buf) else []

    def l2_tables(self) -> list[int]:
        out = []
        for pos in self.entries(self.l1_off, min(self.l1_size, 1 << 16)):
            off = _get(self.buf, pos, 8) & 0x00FFFFFFFFFFFE00
            if off and off + self.cs <= len(self.buf):
                out.append(off)
        return out

    def refblocks(self) -> list[int]:
        out = []
        for pos in self.entries(self.rt_off, min(self.rt_clusters * self.cs // 8, 1 << 16)):
            off = _get(self.buf, pos, 8) & ~0x1FF & ((1 << 64) - 1)
            if off and off + self.cs <= len(self.buf):
                out.append(off)
        return out

    def extensions(self) -> list[int]:
        """File offsets of header extension headers (type, length)."""
        out = []
        pos = self.header_length
        while pos + 8 <= min(len(self.buf), self.cs) and len(out) < 32:
            etype, length = struct.unpack_from(">II", self.buf, pos)
            out.append(pos)
            if etype == 0:
                break
            pos += 8 + ((length + 7) & ~7)
        return out


def _mut_header(rng: random.Random, img: _Image) -> str:
    fields = HEADER_FIELDS if img.version >= 3 else HEADER_FIELDS[:13]
    name, off, width = rng.choice(fields)
    old = _get(img.buf, off, width)
    value = _interesting(rng, old, width, len(img.buf), img.cs)
    if name == "cluster_bits" and rng.random() < 0.5:
        value = rng.randrange(0, 40)
    if name == "refcount_order" and rng.random() < 0.5:
        value = rng.randrange(0, 10)
    if name == "version" and rng.random() < 0.5:
        value = rng.choice([1, 2, 3, 4])
    if name in ("incompatible_features", "compatible_features", "autoclear_features"):
        value = old ^ (1 << rng.randrange(8 * width)) if rng.random() < 0.7 else value
    _put(img.buf, off, width, value)
    return f"header.{name}={value:#x}"


def _mut_extension(rng: random.Random, img: _Image) -> str:
    exts = img.extensions()
    if not exts:
        return _mut_header(rng, img)
    pos = rng.choice(exts)
    what = rng.random()
    if what < 0.6:
        old = _get(img.buf, pos + 4, 4)
        value = rng.choice(
            [
                0,
                1,
                7,
                old + 1,
                old - 1,
                old + 8,
                0xFFFFFFFF,
                0x7FFFFFFF,
                img.cs,
                rng.randrange(1 << 32),
            ]
        )
        _put(img.buf, pos + 4, 4, value)
        return f"ext@{pos:#x}.length={value & 0xFFFFFFFF:#x}"
    if what < 0.8:
        value = rng.choice(
            [0, 0xE2792ACA, 0x6803F857, 0x23852875, 0x0537BE77, 0x44415441, rng.randrange(1 << 32)]
        )
        _put(img.buf, pos, 4, value)
        return f"ext@{pos:#x}.type={value:#x}"
    length = _get(img.buf, pos + 4, 4)
    if length and pos + 8 < len(img.buf):
        at = pos + 8 + rng.randrange(min(length, len(img.buf) - pos - 8) or 1)
        if at < len(img.buf):
            img.buf[at] = rng.randrange(256)
            return f"ext@{pos:#x}.data[{at - pos - 8}]"
    return "ext-noop"


def _entry_value(rng: random.Random, old: int, img: _Image, kind: str) -> int:
    cs, flen = img.cs, len(img.buf)
    host = old & 0x00FFFFFFFFFFFE00
    values = [
        0,
        old ^ (1 << rng.randrange(64)),
        old | (1 << 63),
        old ^ (1 << 62),  # compressed flag
        old | 1,  # zero flag / reserved bit
        (old & ~0x00FFFFFFFFFFFE00) | (host + rng.choice([1, 512, cs, -cs])) & 0x00FFFFFFFFFFFE00,
        (old & ~0x00FFFFFFFFFFFE00) | (flen + rng.randrange(1, 64) * cs),
        (old & ~0x00FFFFFFFFFFFE00) | rng.randrange(max(1, flen // cs) + 1) * cs,
        (old & ~0x00FFFFFFFFFFFE00) | img.l1_off,
        (old & ~0x00FFFFFFFFFFFE00) | img.rt_off,
        (1 << 63) | rng.randrange(max(1, flen)),
        (1 << 62) | rng.randrange(1 << 62),
        rng.randrange(1 << 64),
        (1 << 64) - 1,
    ]
    if kind == "bitmap":
        values += [0xFFFFFFFF, 0xFFFFFFFF00000000, old ^ (1 << rng.randrange(64)), old << 32]
    return rng.choice(values) & ((1 << 64) - 1)


def _pick_entry(
    rng: random.Random, img: _Image, positions: list[int], width: int = 8
) -> int | None:
    if not positions:
        return None
    used = [p for p in positions if _get(img.buf, p, width)]
    return rng.choice(used) if used and rng.random() < 0.8 else rng.choice(positions)


def _mut_l1(rng: random.Random, img: _Image) -> str:
    pos = _pick_entry(rng, img, img.entries(img.l1_off, min(img.l1_size, 1 << 16)))
    if pos is None:
        return _mut_header(rng, img)
    value = _entry_value(rng, _get(img.buf, pos, 8), img, "l1")
    _put(img.buf, pos, 8, value)
    return f"l1[{(pos - img.l1_off) // 8}]={value:#x}"


def _mut_l2(rng: random.Random, img: _Image) -> str:
    tables = img.l2_tables()
    if not tables:
        return _mut_l1(rng, img)
    table = rng.choice(tables)
    width = 16 if img.extl2 else 8
    pos = _pick_entry(rng, img, img.entries(table, img.cs // width, width), width)
    assert pos is not None
    if img.extl2 and rng.random() < 0.4:
        pos += 8
        value = _entry_value(rng, _get(img.buf, pos, 8), img, "bitmap")
    else:
        value = _entry_value(rng, _get(img.buf, pos, 8), img, "l2")
    _put(img.buf, pos, 8, value)
    return f"l2@{table:#x}+{pos - table:#x}={value:#x}"


def _mut_refcount(rng: random.Random, img: _Image) -> str:
    if rng.random() < 0.4 or not img.refblocks():
        pos = _pick_entry(
            rng, img, img.entries(img.rt_off, min(img.rt_clusters * img.cs // 8, 1 << 16))
        )
        if pos is None:
            return _mut_header(rng, img)
        value = _entry_value(rng, _get(img.buf, pos, 8), img, "reftable")
        _put(img.buf, pos, 8, value)
        return f"reftable[{(pos - img.rt_off) // 8}]={value:#x}"
    block = rng.choice(img.refblocks())
    bits = 1 << min(img.refcount_order, 6)
    index = rng.randrange(img.cs * 8 // bits)
    if bits >= 8:
        width = bits // 8
        pos = block + index * width
        value = rng.choice([0, 1, 2, (1 << bits) - 1, rng.randrange(1 << bits)])
        _put(img.buf, pos, width, value)
    else:
        pos = block + index * bits // 8
        img.buf[pos] ^= 1 << rng.randrange(8)
        value = img.buf[pos]
    return f"refblock@{block:#x}[{index}]={value:#x}"


def _mut_snapshot(rng: random.Random, img: _Image) -> str:
    if not img.nb_snapshots or img.snap_off >= len(img.buf):
        return _mut_header(rng, img)
    # snapshot header: l1_table_offset(8) l1_size(4) id_str_size(2) name_size(2)
    # date_sec(4) date_nsec(4) vm_clock_nsec(8) vm_state_size(4) extra_data_size(4)
    fields = [(0, 8), (8, 4), (12, 2), (14, 2), (32, 4), (36, 4)]
    start = img.snap_off
    if rng.random() < 0.3:  # the second entry, found by walking the first
        id_len, name_len = _get(img.buf, start + 12, 2), _get(img.buf, start + 14, 2)
        extra = _get(img.buf, start + 36, 4)
        start += (40 + extra + id_len + name_len + 7) & ~7
    off, width = rng.choice(fields)
    if start + off + width > len(img.buf):
        return "snapshot-noop"
    value = _interesting(rng, _get(img.buf, start + off, width), width, len(img.buf), img.cs)
    if off == 0 and rng.random() < 0.5:
        value = _entry_value(rng, _get(img.buf, start, 8), img, "l1")
    _put(img.buf, start + off, width, value)
    return f"snapshot@{start:#x}+{off}={value:#x}"


def _mut_bytes(rng: random.Random, img: _Image) -> str:
    n = rng.randrange(1, 9)
    limit = len(img.buf) if rng.random() < 0.3 else min(len(img.buf), 4 * img.cs)
    for _ in range(n):
        img.buf[rng.randrange(limit)] = rng.randrange(256)
    return f"bytes*{n}"


MUTATORS: list[Callable[[random.Random, _Image], str]] = [
    _mut_header,
    _mut_header,
    _mut_header,
    _mut_extension,
    _mut_l1,
    _mut_l2,
    _mut_l2,
    _mut_refcount,
    _mut_snapshot,
    _mut_bytes,
]


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutant of ``data`` and a description of what changed."""
    buf = bytearray(data)
    if rng.random() < 0.08:
        cs = _Image(buf).cs
        cut = rng.choice(
            [
                rng.randrange(len(buf)),
                rng.randrange(min(len(buf), 2 * cs)),
                len(buf) - rng.randrange(1, cs),
            ]
        )
        cut = max(0, cut)
        return f"truncate@{cut:#x}", bytes(buf[:cut])
    descs = []
    for _ in range(1 if rng.random() < 0.7 else rng.randrange(2, 4)):
        descs.append(rng.choice(MUTATORS)(rng, _Image(buf)))
    return "+".join(descs), bytes(buf)


# --- the worker ---------------------------------------------------------------------------


#: Findings already reported to the driver's owners, as (outcome, text in the traceback).
#: They are counted as "known" instead of failing the suite; delete an entry once fixed.
KNOWN_BUGS: list[tuple[str, str]] = []


def known_bug(outcome: str, detail: str) -> bool:
    return any(outcome == o and text in detail for o, text in KNOWN_BUGS)


class CaseTimeout(BaseException):
    """Raised by the alarm inside the worker (a BaseException: code under test can't eat it)."""


def _exercise_ro(path: str, rng: random.Random) -> None:
    from pyqemu.common.block import block_status_above, open_image

    img = open_image(path, fmt="qcow2", read_only=True)
    try:
        size = img.size
        if size:
            img.read(0, min(size, 256 << 10))
            for _ in range(3):
                off = rng.randrange(size)
                img.read(off, min(size - off, rng.randrange(1, 128 << 10)))
            img.read(max(0, size - 4096), min(size, 4096))
            pos = 0
            for _ in range(64):
                if pos >= size:
                    break
                run = block_status_above(img, pos, size - pos)
                if run.length <= 0:
                    raise AssertionError(f"block_status_above returned length {run.length}")
                pos += run.length
            off = rng.randrange(size)
            block_status_above(img, off, size - off)
        img.specific_info()
        img.check(0)
    finally:
        img.close()


def _exercise_rw(path: str, rng: random.Random) -> None:
    from pyqemu.common.block import open_image

    img = open_image(path, fmt="qcow2", read_only=False)
    try:
        size = img.size
        if size:
            img.write(0, rng.randbytes(min(size, 4096)))
            off = rng.randrange(size)
            img.write(off, rng.randbytes(min(size - off, rng.randrange(1, 70000))))
            off = rng.randrange(size)
            img.write_zeroes(off, min(size - off, 65536), may_unmap=True)
            off = rng.randrange(size)
            img.discard(off, min(size - off, 1 << 20))
            img.read(0, min(size, 8192))
        img.flush()
    finally:
        img.close()


def _outcome(fn: Callable[[str, random.Random], None], path: str, seed: int) -> tuple[str, str]:
    import signal
    import traceback

    from pyqemu.common.errors import QemuError

    def alarm(signum: int, frame: object) -> None:
        raise CaseTimeout

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_SECONDS)
    try:
        fn(path, random.Random(seed))
        return "ok", ""
    except QemuError as exc:
        return type(exc).__name__, str(exc)[:200]
    except CaseTimeout:
        return "BUG:timeout", "".join(traceback.format_exc(limit=-6))
    except BaseException as exc:  # noqa: BLE001 - everything else is a finding
        return f"BUG:{type(exc).__name__}", "".join(traceback.format_exc(limit=-6))
    finally:
        signal.alarm(0)


def worker_main() -> None:
    """Answer JSON requests on stdin: {"ro": path, "rw": path, "seed": n}."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    import pyqemu.common.block  # noqa: F401 - import before the first alarm

    for line in sys.stdin:
        req = json.loads(line)
        ro = _outcome(_exercise_ro, req["ro"], req["seed"])
        rw = _outcome(_exercise_rw, req["rw"], req["seed"])
        sys.stdout.write(json.dumps({"ro": ro, "rw": rw}) + "\n")
        sys.stdout.flush()


class Fuzzer:
    """Runs mutants in a worker process, restarting it after a hang or a crash."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.findings: list[str] = []
        self.known: list[str] = []

    def _start(self) -> subprocess.Popen[bytes]:
        code = f"import sys; sys.path.insert(0, {ROOT!r}); " + (
            "from tests.common.block.test_qcow2_fuzz import worker_main; worker_main()"
        )
        # stderr to a file: a chatty worker must never block on a full pipe
        self.stderr_path = os.path.join(self.workdir, "worker.stderr")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        return self.proc

    def _stop(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        with open(self.stderr_path, "rb") as f:
            err = f.read()[-2000:]
        return f"rc {proc.returncode}: " + err.decode(errors="replace")

    def close(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            assert proc.stdin is not None
            try:
                proc.stdin.close()
                proc.wait(timeout=WORKER_SECONDS)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        self._stop()

    def run(self, name: str, data: bytes, seed: int) -> tuple[str, str]:
        """Run one mutant; return (ro outcome, rw outcome) and record findings."""
        ro = os.path.join(self.workdir, "mutant.qcow2")
        rw = os.path.join(self.workdir, "mutant-rw.qcow2")
        for path in (ro, rw):
            with open(path, "wb") as f:
                f.write(data)
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps({"ro": ro, "rw": rw, "seed": seed}) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([proc.stdout], [], [], WORKER_SECONDS)
        line = proc.stdout.readline() if ready else b""
        if not line:
            detail = self._stop()
            out = ("BUG:hang" if not ready else "BUG:worker-died", detail)
            result = {"ro": out, "rw": out}
        else:
            result = json.loads(line)
        for phase in ("ro", "rw"):
            outcome, detail = result[phase]
            self.counts[f"{phase}:{outcome}"] += 1
            if known_bug(outcome, detail):
                self.counts[f"{phase}:{outcome}(known)"] += 1
                self.counts[f"{phase}:{outcome}"] -= 1
                self.known.append(f"{name} [{phase}] {outcome}\n{detail}")
            elif outcome.startswith("BUG"):
                self.findings.append(f"{name} [{phase}] {outcome}\n{detail}")
        return result["ro"][0], result["rw"][0]


def fuzz(fuzzer: Fuzzer, seeds: dict[str, str], count: int, seed: int) -> None:
    """Run ``count`` mutants spread over the seed images."""
    rng = random.Random(seed)
    blobs = {name: open(path, "rb").read() for name, path in sorted(seeds.items())}
    names = list(blobs)
    for i in range(count):
        base = names[i % len(names)]
        desc, data = mutate(blobs[base], rng)
        fuzzer.run(f"#{i} {base}: {desc} (seed {seed})", data, rng.randrange(1 << 30))


@pytest.fixture(scope="module")
def seeds(qemu_img, qemu_io, tmp_path_factory) -> dict[str, str]:
    return make_seeds(qemu_img, qemu_io, str(tmp_path_factory.mktemp("fuzz-seeds")))


def test_seed_images_pass_unchanged(seeds, tmp_path) -> None:
    """Sanity: every seed image is handled fine before mutation."""
    fuzzer = Fuzzer(str(tmp_path))
    try:
        for name, path in seeds.items():
            with open(path, "rb") as f:
                ro, rw = fuzzer.run(name, f.read(), 1)
            assert (ro, rw) == ("ok", "ok"), (name, fuzzer.findings)
    finally:
        fuzzer.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mutants_raise_only_our_errors(seeds, tmp_path, seed) -> None:
    fuzzer = Fuzzer(str(tmp_path))
    try:
        fuzz(fuzzer, seeds, MUTANTS, seed)
    finally:
        fuzzer.close()
    assert not fuzzer.findings, f"{len(fuzzer.findings)} findings:\n" + "\n\n".join(
        fuzzer.findings[:5]
    )
    assert sum(fuzzer.counts.values()) == 2 * MUTANTS
    assert fuzzer.counts["ro:ok"] > 0 and fuzzer.counts["ro:ImageCorrupt"] > 0


def test_harness_tells_our_errors_from_findings(monkeypatch) -> None:
    """The worker's classifier: QemuError subclasses pass, anything else and a hang don't."""
    import time

    from pyqemu.common.block import ImageCorrupt

    def corrupt(path: str, rng: random.Random) -> None:
        raise ImageCorrupt("bad")

    def foreign(path: str, rng: random.Random) -> None:
        raise KeyError(path)

    def hang(path: str, rng: random.Random) -> None:
        time.sleep(5)

    assert _outcome(corrupt, "x", 0) == ("ImageCorrupt", "bad")
    assert _outcome(foreign, "x", 0)[0] == "BUG:KeyError"
    monkeypatch.setattr(sys.modules[__name__], "CASE_SECONDS", 1)
    assert _outcome(hang, "x", 0)[0] == "BUG:timeout"
