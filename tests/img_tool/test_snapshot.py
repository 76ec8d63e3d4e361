"""pyqemu-img snapshot, info with snapshots and convert -l, against qemu-img 7.2."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import Twins

DATE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
JSON_DATE = re.compile(rb'"date-(n?sec)": \d+')


def _mask(data: bytes) -> bytes:
    """Creation times differ between the twins by a moment: mask them."""
    return JSON_DATE.sub(rb'"date-\1": 0', DATE.sub(b"DATE", data))


def _same_masked(twins: Twins, *args: str) -> subprocess.CompletedProcess[bytes]:
    a, b = twins.run(*args)
    assert (a.returncode, _mask(a.stdout), a.stderr) == (b.returncode, _mask(b.stdout), b.stderr)
    assert b"Traceback" not in a.stderr
    return a


def _clean(twins: Twins) -> None:
    for folder in (twins.ours_dir, twins.ref_dir):
        out = subprocess.run(
            [twins.ref, "check", "a.qcow2"], cwd=folder, capture_output=True, text=True
        )
        assert out.returncode == 0 and "No errors were found" in out.stdout, out.stdout


def _read_ok(twins: Twins, *patterns: str) -> None:
    """Both images read back the patterns (qemu-io)."""
    for folder in (twins.ours_dir, twins.ref_dir):
        args = [twins.qemu_io, "-r", "-f", "qcow2"]
        for p in patterns:
            args += ["-c", f"read -P {p}"]
        out = subprocess.run([*args, "a.qcow2"], cwd=folder, capture_output=True, text=True)
        assert out.returncode == 0 and "verification failed" not in out.stdout, out.stdout


def _prepare(twins: Twins) -> None:
    twins.shell(
        ["qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "64M"],
        ["qemu-io", "-c", "write -P 1 0 1M", "-c", "write -c -P 5 2M 64k", "a.qcow2"],
    )


def test_create_list_apply_delete_like_qemu(twins: Twins) -> None:
    _prepare(twins)
    twins.same("snapshot", "-c", "s1", "a.qcow2")
    twins.shell(["qemu-io", "-c", "write -P 2 512k 1M", "a.qcow2"])
    twins.same("snapshot", "-q", "-c", "s2", "a.qcow2")
    twins.same("snapshot", "-c", "s1", "a.qcow2")  # qemu-img allows a duplicate name
    twins.same("snapshot", "-c", "a-very-long-snapshot-name-here", "a.qcow2")
    _clean(twins)
    listing = _same_masked(twins, "snapshot", "-l", "a.qcow2")
    assert listing.stdout.startswith(b"Snapshot list:\nID        TAG ")
    _same_masked(twins, "info", "a.qcow2")
    _same_masked(twins, "info", "--output=json", "a.qcow2")
    twins.same("snapshot", "-a", "s1", "a.qcow2")  # ID 1 (IDs first)
    _clean(twins)
    _read_ok(twins, "1 0 1M", "0 1M 1M", "5 2M 64k")
    twins.same("snapshot", "-a", "2", "a.qcow2")
    _clean(twins)
    _read_ok(twins, "1 0 512k", "2 512k 1M")
    twins.same("snapshot", "-d", "s1", "a.qcow2")  # the first named s1: ID 1
    twins.same("snapshot", "-d", "3", "a.qcow2")  # names only: not found
    twins.same("snapshot", "-d", "s1", "a.qcow2")
    _clean(twins)
    _same_masked(twins, "snapshot", "-l", "a.qcow2")
    twins.same("snapshot", "-d", "s2", "a.qcow2")
    twins.same("snapshot", "-d", "a-very-long-snapshot-name-here", "a.qcow2")
    _clean(twins)
    twins.same("snapshot", "-l", "a.qcow2")  # none left: nothing printed
    _same_masked(twins, "info", "--output=json", "a.qcow2")
    _read_ok(twins, "1 0 512k", "2 512k 1M")


def test_cross_made_snapshots(twins: Twins) -> None:
    """Ours apply/delete qemu-made snapshots and qemu-img ours, in both folders."""
    _prepare(twins)
    for folder in (twins.ours_dir, twins.ref_dir):
        maker, user = (
            (twins.ref, twins.ours) if folder == twins.ours_dir else (twins.ours, twins.ref)
        )

        def run(tool: str, *args: str, folder: Path = folder) -> None:
            out = subprocess.run([tool, *args], cwd=folder, capture_output=True, text=True)
            assert out.returncode == 0, out.stderr

        run(maker, "snapshot", "-c", "x", "a.qcow2")
        run(twins.qemu_io, "-c", "write -P 9 0 3M", "a.qcow2")
        run(maker, "snapshot", "-c", "y", "a.qcow2")
        run(user, "snapshot", "-a", "x", "a.qcow2")
        run(user, "snapshot", "-d", "y", "a.qcow2")
    _clean(twins)
    _read_ok(twins, "1 0 1M", "0 1M 1M", "5 2M 64k")
    _same_masked(twins, "snapshot", "-l", "a.qcow2")


def test_errors_like_qemu(twins: Twins) -> None:
    _prepare(twins)
    twins.shell(["qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M"])
    twins.same("snapshot", "-c", "s1", "a.qcow2")
    twins.same("snapshot", "-a", "nope", "a.qcow2")
    twins.same("snapshot", "-d", "nope", "a.qcow2")
    twins.same("snapshot", "-l", "-c", "x", "a.qcow2")
    twins.same("snapshot", "a.qcow2")
    twins.same("snapshot", "-l")
    twins.same("snapshot", "-U", "-c", "x", "a.qcow2")
    twins.same("snapshot", "-l", "missing.qcow2")
    for action in ("-c", "-d"):
        twins.same("snapshot", action, "x", "r.raw")
    # qemu-img may repeat the probing warning here (raw reopened after the failed goto)
    a, b = twins.run("snapshot", "-a", "x", "r.raw")
    assert a.returncode == b.returncode == 1
    assert a.stderr.splitlines()[-1] == b.stderr.splitlines()[-1]
    twins.same("snapshot", "-l", "r.raw")
    twins.same("snapshot", "-f", "raw", "-l", "r.raw")
    _clean(twins)
    # refcount_bits=1 cannot share a cluster: qemu-img fails, leaking the L1 copy
    twins.shell(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", "b.qcow2", "1M"],
        ["qemu-io", "-c", "write 0 64k", "b.qcow2"],
    )
    twins.same("snapshot", "-c", "x", "b.qcow2")
    twins.same("check", "b.qcow2")


def test_convert_from_snapshot(twins: Twins) -> None:
    _prepare(twins)
    twins.same("snapshot", "-c", "s1", "a.qcow2")
    twins.shell(["qemu-io", "-c", "write -P 2 512k 1M", "a.qcow2"])
    twins.same("snapshot", "-c", "s2", "a.qcow2")
    twins.shell(["qemu-io", "-c", "write -P 3 0 4M", "a.qcow2"])
    for param in ("s1", "2", "snapshot.id=1", "snapshot.name=s2", "snapshot.id=2,snapshot.name=s2"):
        twins.same("convert", "-l", param, "-O", "raw", "a.qcow2", "o.raw")
        ours = (twins.ours_dir / "o.raw").read_bytes()
        assert ours == (twins.ref_dir / "o.raw").read_bytes(), param
        assert ours[:4096] == b"\1" * 4096
    for param in ("99", "snapshot.id=1,snapshot.name=s2", "snapshot.foo=1", "snapshot.id="):
        twins.same("convert", "-l", param, "-O", "raw", "a.qcow2", "o.raw")
    twins.same("convert", "-l", "s1", "-O", "raw", "a.qcow2", "a.qcow2", "o.raw")
    twins.shell(["qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M"])
    twins.same("convert", "-l", "s1", "-f", "raw", "-O", "raw", "r.raw", "o2.raw")
