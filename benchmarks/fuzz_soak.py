#!/usr/bin/env python3
"""Fuzz soak: many mutated qcow2 images through pyqemu's driver.

Uses the seed images, mutator and worker of
``tests/common/block/test_qcow2_fuzz.py``: each mutant is opened read-only
(reads, block_status_above, specific_info, check) and a copy read-write
(small writes). Prints the count of each outcome per phase, every new finding
(an exception other than QemuError, a timeout, a dead worker) and the number
of known ones; exits 1 on any new finding.

Usage: python3 benchmarks/fuzz_soak.py [-n 3000] [--seed 100] [--dir DIR] [-v]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.common.block.test_qcow2_fuzz import Fuzzer, fuzz, make_seeds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--mutants", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print known findings too")
    args = ap.parse_args()
    qemu_img, qemu_io = shutil.which("qemu-img"), shutil.which("qemu-io")
    if qemu_img is None or qemu_io is None:
        print("fuzz_soak: qemu-img and qemu-io must be installed", file=sys.stderr)
        return 2
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        seeds = make_seeds(qemu_img, qemu_io, workdir)
        fuzzer = Fuzzer(workdir)
        try:
            fuzz(fuzzer, seeds, args.mutants, args.seed)
        finally:
            fuzzer.close()
    elapsed = time.monotonic() - start
    for finding in fuzzer.findings + (fuzzer.known if args.verbose else []):
        print("=" * 72)
        print(finding.rstrip())
    print("=" * 72)
    print(f"mutants: {args.mutants} (seed {args.seed}, {elapsed:.1f} s)")
    for key, count in sorted(fuzzer.counts.items()):
        if count:
            print(f"  {key:40} {count}")
    print(f"new findings: {len(fuzzer.findings)}  known findings: {len(fuzzer.known)}")
    return 1 if fuzzer.findings else 0


if __name__ == "__main__":
    sys.exit(main())
