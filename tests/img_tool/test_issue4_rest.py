"""Issue 4, remaining bits: convert --salvage, -r rate limits, measure -l,
amend with internal snapshots and the full --help, each against qemu-img."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import Twins


def _lines_except_version_and_formats(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if " version " not in line and not line.startswith("Supported formats:")
    ]


def test_help_is_qemu_img_help(twins: Twins) -> None:
    a, b = twins.run("--help")
    assert a.returncode == b.returncode == 0
    ours = _lines_except_version_and_formats(a.stdout.decode())
    ref = _lines_except_version_and_formats(b.stdout.decode())
    assert ours == ref
    syntax = [line.split()[0] for line in ours if re.match(r"  [a-z]+ [\[(-]", line)]
    for command in ("amend", "bench", "bitmap", "commit", "dd", "measure", "rebase", "snapshot"):
        assert command in syntax


def _two_snapshots(folder: Path) -> None:
    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True)

    sh("qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "64M")
    sh("qemu-io", "-c", "write -P 1 0 8M", "a.qcow2")
    sh("qemu-img", "snapshot", "-c", "s1", "a.qcow2")
    sh("qemu-io", "-c", "write -P 2 8M 16M", "-c", "write -z 0 4M", "a.qcow2")
    sh("qemu-img", "resize", "-q", "a.qcow2", "128M")
    sh("qemu-img", "snapshot", "-c", "s2", "a.qcow2")
    sh("qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M")


def test_measure_snapshot(twins: Twins) -> None:
    twins.setup(_two_snapshots)
    params = (
        "s1",
        "1",
        "s2",
        "snapshot.id=1",
        "snapshot.name=s2",
        "snapshot.id=1,snapshot.name=s1",
        "snapshot.id=2,snapshot.name=s1",
        "snapshot.id=",
        "nosuch",
        "snapshot.foo=1",
    )
    required = set()
    for param in params:
        for extra in (
            [],
            ["-O", "qcow2"],
            ["--output=json", "-O", "qcow2", "-o", "cluster_size=4k"],
        ):
            out = twins.same("measure", *extra, "-l", param, "a.qcow2")
            if extra and out.returncode == 0:
                required.add(out.stdout.split()[2 if not extra[0].startswith("--") else 4])
    assert len(required) >= 2  # the snapshots really differ
    twins.same("measure", "-l", "s1", "r.raw")
    twins.same("measure", "-l", "s1", "-O", "qcow2", "r.raw")
    twins.same("measure", "-l", "s1", "--size", "1M")


# ---------------------------------------------------------------- --salvage

BAD_SECTORS = """\
[inject-error]
event = "read_aio"
errno = "5"
sector = "130"

[inject-error]
event = "read_aio"
errno = "28"
sector = "5000"
"""


def _salvage_images(folder: Path) -> None:
    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True)

    (folder / "bad.cfg").write_text(BAD_SECTORS)
    sh("qemu-img", "create", "-q", "-f", "raw", "r.raw", "3M")
    sh("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 3M", "r.raw")
    sh("qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "8M")
    sh("qemu-io", "-c", "write -P 7 0 6M", "q.qcow2")


def _raw_digest(qemu_img: str, path: Path) -> bytes:
    raw = path.with_suffix(".flat")
    subprocess.run([qemu_img, "convert", "-O", "raw", str(path), str(raw)], check=True)
    data = raw.read_bytes()
    raw.unlink()
    return data


def test_convert_salvage(twins: Twins, qemu_img: str) -> None:
    twins.setup(_salvage_images)
    cases = (
        ["--salvage", "-O", "qcow2", "blkdebug:bad.cfg:r.raw"],
        ["--salvage", "-O", "raw", "blkdebug:bad.cfg:r.raw"],
        ["--salvage", "-q", "-O", "raw", "blkdebug:bad.cfg:r.raw"],
        ["--salvage", "-O", "qcow2", "-f", "qcow2", "blkdebug:bad.cfg:q.qcow2"],
        ["--salvage", "-O", "raw", "-f", "qcow2", "blkdebug:bad.cfg:q.qcow2"],
        ["--salvage", "-O", "qcow2", "r.raw", "blkdebug:bad.cfg:r.raw"],
        ["--salvage", "-c", "-O", "qcow2", "blkdebug:bad.cfg:r.raw"],
        ["--salvage", "-W", "-O", "qcow2", "-S", "0", "blkdebug:bad.cfg:r.raw"],
        # without --salvage: the failed chunk stops the conversion (qemu-img
        # also reports failures of chunks in flight at that time: not compared)
        ["-O", "qcow2", "-f", "qcow2", "blkdebug:bad.cfg:q.qcow2"],
    )
    for args in cases:
        out = twins.same("convert", *args, "out.img")
        salvaged = "--salvage" in args
        assert out.returncode == (0 if salvaged else 1)
        if salvaged:
            ours = _raw_digest(qemu_img, twins.ours_dir / "out.img")
            assert ours == _raw_digest(qemu_img, twins.ref_dir / "out.img")
            assert bytes(512) in ours  # the bad sector reads as zeroes
        if salvaged and "-q" not in args:
            assert b"warning: error while reading offset " in out.stderr
        check = subprocess.run([qemu_img, "check", "out.img"], cwd=twins.ours_dir)
        assert check.returncode in (0, 63)  # 63: raw has no checks


# ---------------------------------------------------------------- -r rate_limit


def test_rate_limit_slices() -> None:
    from pyqemu.common.ratelimit import RateLimit

    ms = 1_000_000
    limit = RateLimit(1 << 20)  # 1 MiB/s: 104857 bytes per 100 ms slice
    assert limit.slice_quota == 104857
    assert limit.delay_ns(50_000, now_ns=0) == 0
    assert limit.delay_ns(50_000, now_ns=10 * ms) == 0
    # 110000 of 104857: the slice stretches in proportion to the excess
    assert limit.delay_ns(10_000, now_ns=20 * ms) == int(110_000 / 104857 * 100 * ms) - 20 * ms
    # a new slice starts once the stretched one is over
    assert limit.delay_ns(1000, now_ns=200 * ms) == 0
    assert limit.slice_start == 200 * ms and limit.dispatched == 1000
    # 2 MiB at once: two seconds
    big = RateLimit(1 << 20)
    assert big.delay_ns(2 << 20, now_ns=5 * ms) == int((2 << 20) / 104857 * 100 * ms)
    assert RateLimit(0).delay_ns(1 << 30, now_ns=0) == 0
    assert RateLimit(1).slice_quota == 1  # at least one byte per slice


def test_rate_limit_leaky_bucket() -> None:
    from pyqemu.common.ratelimit import LeakyBucket

    ms = 1_000_000
    bucket = LeakyBucket(1 << 20)
    assert bucket.wait_ns(0) == 0
    bucket.account(2 << 20, 0)  # the first request goes at once
    # it must leak down to a tenth of a second's worth: 1.9 s
    assert bucket.wait_ns(0) == int(((2 << 20) - (1 << 20) / 10) * 1e9 / (1 << 20))
    assert bucket.wait_ns(1000 * ms) == int(((1 << 20) - (1 << 20) / 10) * 1e9 / (1 << 20))
    assert bucket.wait_ns(1900 * ms) == 0
    bucket.account(100, 1900 * ms)
    assert bucket.level > (1 << 20) / 10
    assert LeakyBucket(0).wait_ns(0) == 0


def test_rate_limit_option(twins: Twins) -> None:
    def images(folder: Path) -> None:
        def sh(*cmd: str) -> None:
            subprocess.run(cmd, cwd=folder, check=True, capture_output=True)

        sh("qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2")
        sh("qemu-io", "-c", "write -P 9 64k 1M", "-c", "write -z 2M 64k", "t.qcow2")

    twins.setup(images)
    for rate in ("-1", "abc", "1Q", "", "1.5x", "9E", "17E", "-0"):
        for cmd in (["convert", "-O", "raw", "t.qcow2", "o.raw"], ["commit", "t.qcow2"]):
            out = twins.same(cmd[0], "-r", rate, *cmd[1:])
            assert out.returncode == 1
    # accepted rates: the result is the same as qemu-img's
    out = twins.same("convert", "-r", "1G", "-O", "qcow2", "t.qcow2", "o.qcow2")
    assert out.returncode == 0
    twins.same("compare", "o.qcow2", "t.qcow2")
    assert twins.same("convert", "-r", "0", "-O", "raw", "t.qcow2", "o.raw").returncode == 0
    out = twins.same("commit", "-r", "100M", "t.qcow2")
    assert out.returncode == 0 and out.stdout == b"Image committed.\n"
    twins.same("compare", "base.qcow2", "t.qcow2")
    assert (twins.ours_dir / "base.qcow2").read_bytes() != b""


# ---------------------------------------------------------------- amend with snapshots


def _snapshot_images(folder: Path) -> None:
    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=folder, check=True, capture_output=True)

    _two_snapshots(folder)  # a.qcow2: snapshots of 64M and 128M
    # same.qcow2: one snapshot of the image's size, a zero write after it
    sh("qemu-img", "create", "-q", "-f", "qcow2", "same.qcow2", "4M")
    sh("qemu-io", "-c", "write -P 1 0 1M", "same.qcow2")
    sh("qemu-img", "snapshot", "-c", "a", "same.qcow2")
    sh("qemu-io", "-c", "write -z 0 64k", "-c", "write -P 3 2M 64k", "same.qcow2")
    # zsnap.qcow2: the snapshot itself holds zero clusters
    sh("qemu-img", "create", "-q", "-f", "qcow2", "zsnap.qcow2", "4M")
    sh("qemu-io", "-c", "write -P 1 0 1M", "-c", "write -z 64k 64k", "zsnap.qcow2")
    sh("qemu-img", "snapshot", "-c", "a", "zsnap.qcow2")
    # v2.qcow2: a v2 image with a snapshot
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M")
    sh("qemu-img", "snapshot", "-c", "s", "v2.qcow2")


def _same_image(
    twins: Twins, qemu_img: str, name: str, snapshots: tuple[str, ...], check_ref: bool = True
) -> None:
    ours, ref = twins.ours_dir / name, twins.ref_dir / name
    for side in (ours, ref) if check_ref else (ours,):
        check = subprocess.run([qemu_img, "check", str(side)], capture_output=True)
        assert check.returncode == 0, check.stdout
    cmp = subprocess.run([qemu_img, "compare", str(ours), str(ref)], capture_output=True)
    assert cmp.returncode == 0, cmp.stdout
    for tag in snapshots:
        for side in (ours, ref):
            subprocess.run(
                [qemu_img, "convert", "-l", tag, "-O", "raw", str(side), f"{side}.{tag}"],
                check=True,
            )
        assert Path(f"{ours}.{tag}").read_bytes() == Path(f"{ref}.{tag}").read_bytes()
    info = [
        subprocess.run(
            [qemu_img, "info", "--output=json", str(side)], capture_output=True, check=True
        ).stdout
        for side in (ours, ref)
    ]
    strip = re.compile(rb'"(actual-size|date-sec|date-nsec|filename)": [^,\n]*')
    assert strip.sub(b"", info[0]) == strip.sub(b"", info[1])


def test_amend_with_snapshots(twins: Twins, qemu_img: str) -> None:
    twins.setup(_snapshot_images)
    # size with snapshots: grow and shrink are allowed on v3 (qcow2 7.2)
    assert twins.same("amend", "-o", "size=256M", "a.qcow2").returncode == 0
    _same_image(twins, qemu_img, "a.qcow2", ("s1", "s2"))
    assert twins.same("amend", "-o", "size=32M", "a.qcow2").returncode == 0
    _same_image(twins, qemu_img, "a.qcow2", ("s1", "s2"))
    # ... and refused on v2
    out = twins.same("amend", "-o", "size=2M", "v2.qcow2")
    assert out.returncode == 1 and b"Can't resize a v2 image which has snapshots" in out.stderr
    # downgrade: snapshots of another size prevent it
    out = twins.same("amend", "-o", "compat=0.10", "a.qcow2")
    assert out.returncode == 1 and b"Internal snapshots prevent downgrade" in out.stderr
    _same_image(twins, qemu_img, "a.qcow2", ("s1", "s2"))
    # same size: downgraded. qemu-img 7.2 expands the active image's zero
    # cluster in place, in the data cluster it shares with the snapshot: the
    # snapshot changes and check reports an OFLAG_COPIED error. Ours copies on
    # write: the snapshot keeps its data and the image checks clean.
    image = twins.ours_dir / "same.qcow2"
    flat = twins.ours_dir / "same.before"
    subprocess.run([qemu_img, "convert", "-l", "a", "-O", "raw", image, flat], check=True)
    assert twins.same("amend", "-o", "compat=0.10", "same.qcow2").returncode == 0
    _same_image(twins, qemu_img, "same.qcow2", (), check_ref=False)
    after = twins.ours_dir / "same.after"
    subprocess.run([qemu_img, "convert", "-l", "a", "-O", "raw", image, after], check=True)
    assert after.read_bytes() == flat.read_bytes()


def test_amend_downgrade_zero_clusters_in_snapshot(ours: str, tmp_path: Path) -> None:
    """The snapshot's zero clusters are expanded: v2, clean, the snapshot's data kept
    (more shapes in test_amend_snapshot_zero.py)."""
    _snapshot_images(tmp_path)

    def raw(snapshot: str) -> bytes:
        subprocess.run(["qemu-img", "convert", "-l", snapshot, "-O", "raw", "zsnap.qcow2",
                        "snap.raw"], cwd=tmp_path, check=True)  # fmt: skip
        return (tmp_path / "snap.raw").read_bytes()

    before = raw("a")
    out = subprocess.run(
        [ours, "amend", "-o", "compat=0.10", "zsnap.qcow2"], cwd=tmp_path, capture_output=True
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
    check = subprocess.run(["qemu-img", "check", "zsnap.qcow2"], cwd=tmp_path,
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0 and "No errors were found" in check.stdout
    assert (tmp_path / "zsnap.qcow2").read_bytes()[4:8] == (2).to_bytes(4, "big")
    assert raw("a") == before
