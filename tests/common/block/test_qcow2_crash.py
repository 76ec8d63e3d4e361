"""Crash safety: SIGKILL a writer at a random instant, then check the image.

``crash_child.py`` writes to a qcow2 image through our driver until killed.
After the kill, ``qemu-img check`` must find no corruption (leaked clusters are
allowed: qemu's own ordering leaks on a crash too), and the image must open
through our driver and read back without error. With ``lazy_refcounts=on``
the dirty bit must be set and a repair (``qemu-img check -r all``, or opening
the image read-write with our driver) must leave it clean.

``run_trial`` is shared with ``benchmarks/crash_soak.py``.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from pyqemu.common.block import block_status_above, create_image, open_image

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_child.py")
MiB = 1 << 20
OFF_INCOMPAT = 72
DIRTY = 1


@dataclass(frozen=True)
class CrashConfig:
    name: str
    options: dict[str, str]
    size: int = 16 * MiB
    backing_size: int = 0
    #: how a lazy-refcounts image is repaired: "qemu-img" (check -r all) or "pyqemu" (rw open)
    repair: str = ""


CONFIGS = [
    CrashConfig("c64k", {}),
    CrashConfig("c512-rc1", {"cluster_size": "512", "refcount_bits": "1"}, size=4 * MiB),
    CrashConfig("c4k-v2", {"cluster_size": "4k", "compat": "0.10"}),
    CrashConfig("c64k-extl2-rc64", {"extended_l2": "on", "refcount_bits": "64"}),
    CrashConfig("c4k-backing", {"cluster_size": "4k"}, backing_size=6 * MiB),
    CrashConfig("lazy-qemu-repair", {"lazy_refcounts": "on"}, repair="qemu-img"),
    CrashConfig(
        "lazy-pyqemu-repair", {"lazy_refcounts": "on", "cluster_size": "4k"}, repair="pyqemu"
    ),
]


@dataclass
class TrialResult:
    config: str
    seed: int
    delay: float
    corruptions: int = 0
    leaks: int = 0
    dirty: bool = False
    problems: list[str] = field(default_factory=list)


def _qcheck(qemu_img: str, path: str, *extra: str) -> tuple[int, dict, str]:
    r = subprocess.run(
        [qemu_img, "check", *extra, "--output=json", path], capture_output=True, text=True
    )
    try:
        info = json.loads(r.stdout)
    except json.JSONDecodeError:
        info = {}
    return r.returncode, info, r.stdout + r.stderr


def _read_everything(path: str) -> None:
    with open_image(path, fmt="qcow2") as img:
        pos = 0
        while pos < img.size:
            n = min(1 << 20, img.size - pos)
            img.read(pos, n)
            pos += n
        pos = 0
        while pos < img.size:
            run = block_status_above(img, pos, img.size - pos)
            assert run.length > 0
            pos += run.length


def run_trial(qemu_img: str, workdir: str, cfg: CrashConfig, seed: int) -> TrialResult:
    """One kill: create, start the child, kill it after a seeded delay, check."""
    rng = random.Random(seed)
    delay = rng.uniform(0.01, 0.3)
    res = TrialResult(cfg.name, seed, delay)
    path = os.path.join(workdir, f"crash-{cfg.name}-{seed}.qcow2")
    opts = dict(cfg.options)
    if cfg.backing_size:
        bpath = path + ".base"
        with open(bpath, "wb") as f:
            f.write(rng.randbytes(cfg.backing_size))
        opts.update(backing_file=bpath, backing_fmt="raw")
    create_image(path, "qcow2", cfg.size, opts)

    child = subprocess.Popen(
        [sys.executable, CHILD, path, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        line = child.stdout.readline() if ready else b""  # type: ignore[union-attr]
        if line.strip() != b"ready":
            child.kill()
            _, err = child.communicate()
            res.problems.append(f"child did not start: {err.decode(errors='replace')}")
            return res
        time.sleep(delay)
        if child.poll() is not None:
            _, err = child.communicate()
            res.problems.append(
                f"child died before the kill ({child.returncode}): " + err.decode(errors="replace")
            )
            return res
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    with open(path, "rb") as f:
        head = f.read(OFF_INCOMPAT + 8)
    version = struct.unpack_from(">I", head, 4)[0]
    incompat = struct.unpack_from(">Q", head, OFF_INCOMPAT)[0] if version >= 3 else 0
    res.dirty = bool(incompat & DIRTY)

    if cfg.repair:
        if not res.dirty:
            res.problems.append("lazy_refcounts image not marked dirty after the kill")
        if cfg.repair == "qemu-img":
            rc, info, out = _qcheck(qemu_img, path, "-r", "all")
            if rc != 0:
                res.problems.append(f"qemu-img check -r all exited {rc}: {out}")
        else:
            try:
                open_image(path, fmt="qcow2", read_only=False).close()
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                res.problems.append(f"pyqemu rw open of the dirty image: {exc!r}")
        rc, info, out = _qcheck(qemu_img, path)
        res.corruptions = info.get("corruptions", 0)
        res.leaks = info.get("leaks", 0)
        if rc != 0 or res.corruptions or res.leaks:
            res.problems.append(f"not clean after repair (rc {rc}): {out}")
    else:
        rc, info, out = _qcheck(qemu_img, path)
        res.corruptions = info.get("corruptions", 0)
        res.leaks = info.get("leaks", 0)
        if res.corruptions or info.get("check-errors", 0) or rc not in (0, 3):
            res.problems.append(f"qemu-img check (rc {rc}): {out}")
        if res.dirty:
            res.problems.append("dirty bit set without lazy_refcounts")

    try:
        _read_everything(path)
    except Exception as exc:  # noqa: BLE001 - any failure is a finding
        res.problems.append(f"read through pyqemu after the kill: {exc!r}")
    for name in (path, path + ".base"):
        if os.path.exists(name):
            os.unlink(name)
    return res


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_sigkill_at_random_instant(qemu_img, tmp_path, cfg: CrashConfig) -> None:
    seed = 1000 + CONFIGS.index(cfg)
    res = run_trial(qemu_img, str(tmp_path), cfg, seed)
    assert res.problems == [], f"{cfg.name} seed {seed}: " + "\n".join(res.problems)
    assert res.corruptions == 0
    if cfg.repair:
        assert res.dirty and res.leaks == 0
