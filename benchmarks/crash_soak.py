#!/usr/bin/env python3
"""Crash soak: SIGKILL a qcow2 writer many times and count what qemu-img check finds.

Each trial picks a config of ``tests/common/block/test_qcow2_crash.py`` in
turn, starts ``crash_child.py`` on a fresh image, kills it after a seeded
random 10-300 ms, and runs ``qemu-img check`` (plus the repair for
lazy_refcounts images) and a full read through pyqemu.

Prints the number of trials, of trials with corruptions and with leaks, and
every problem found; exits 1 if any trial found a corruption or a problem.

Usage: python3 benchmarks/crash_soak.py [-n 100] [--seed 0] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.common.block.test_qcow2_crash import CONFIGS, run_trial  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        print("crash_soak: qemu-img is not installed", file=sys.stderr)
        return 2
    corrupt = leaky = bad = 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        for i in range(args.trials):
            cfg = CONFIGS[i % len(CONFIGS)]
            seed = args.seed + i
            res = run_trial(qemu_img, workdir, cfg, seed)
            corrupt += res.corruptions > 0
            leaky += res.leaks > 0
            if res.problems:
                bad += 1
                print(f"trial {i} {cfg.name} seed {seed} delay {res.delay * 1000:.0f} ms:")
                for p in res.problems:
                    print("   ", p.strip())
    elapsed = time.monotonic() - start
    print(
        f"trials: {args.trials}  with corruptions: {corrupt}  with leaks: {leaky}  "
        f"with problems: {bad}  ({elapsed:.1f} s)"
    )
    return 1 if corrupt or bad else 0


if __name__ == "__main__":
    sys.exit(main())
