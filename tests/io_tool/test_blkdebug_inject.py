"""pyqemu-io against qemu-io with blkdebug error injection: the same requests
fail, with the same messages and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_golden import images  # noqa: F401  (fixture)

RULES = {
    "read-eio": '[inject-error]\nevent = "read_aio"\nerrno = "5"\n',
    "write-enospc": '[inject-error]\nevent = "write_aio"\nerrno = "28"\n',
    "write-once": '[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n',
    "read-once": '[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce = "on"\n',
    # {sector}: the host sector of guest offset 64k (SECTOR_64K): blkdebug sees
    # the requests the format driver sends to its file
    "sector": '[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "{sector}"\n',
    "state": (
        '[set-state]\nevent = "write_aio"\nstate = "1"\nnew_state = "2"\n\n'
        '[inject-error]\nevent = "read_aio"\nerrno = "5"\nstate = "2"\n'
    ),
    "flush": '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\n',
}

#: guest 64k is at host 64k in disk.raw, and in base.qcow2's first data run
#: (at host 0x50000: header, refcount table and block, L1, L2 come first)
SECTOR_64K = {"raw": 128, "qcow2": (0x50000 + 0x10000) // 512}

SCRIPT = [
    "read -P 0x11 64k 512",
    "read 0 512",
    "read 64k 512",
    "write -P 0x22 0 512",
    "read -P 0x22 0 512",
    "write -z 4k 4k",
    "flush",
    "read 0 4k",
]


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_injected_errors_match_qemu_io(golden, images, tmp_path: Path, rule: str, fmt: str) -> None:  # noqa: F811
    cfg = tmp_path / "src" / "blkdebug.cfg"
    cfg.write_text(RULES[rule].replace("{sector}", str(SECTOR_64K[fmt])))
    image = images["raw"] if fmt == "raw" else images["base"]
    args = [a for line in SCRIPT for a in ("-c", line)]
    ref, ours = golden([image, cfg], ["-f", fmt, *args, f"blkdebug:blkdebug.cfg:{image.name}"])
    assert ours.returncode == ref.returncode
    if rule in ("read-eio", "write-enospc", "sector", "state"):
        # each of these rules fails at least one request in the script
        assert "failed:" in ref.stdout + ref.stderr
        assert ours.stdout.count("failed:") == ref.stdout.count("failed:")


@pytest.mark.parametrize("cache", [None, "writeback", "unsafe", "none"])
def test_flush_rule_and_cache_mode(golden, images, tmp_path: Path, cache: str | None) -> None:  # noqa: F811
    """flush_to_disk fires only on a flush that follows a write: in writethrough
    mode (qemu-io's default) the flush after the second write; with a write
    cache only the explicit flush, and never with cache=unsafe."""
    cfg = tmp_path / "src" / "blkdebug.cfg"
    cfg.write_text(RULES["flush"])
    mode = ["-t", cache] if cache else []
    script = ["flush", "write 0 512", "write 4k 4k", "flush", "write 8k 4k"]
    args = [a for line in script for a in ("-c", line)]
    ref, _ = golden(
        [images["raw"], cfg], [*mode, "-f", "raw", *args, "blkdebug:blkdebug.cfg:disk.raw"]
    )
    assert ref.returncode == (0 if cache == "unsafe" else 1)


def test_injection_via_json(golden, images) -> None:  # noqa: F811
    spec = (
        'json:{"driver": "raw", "file": {"driver": "blkdebug", '
        '"inject-error": [{"event": "write_aio", "errno": 1, "sector": 0}], '
        '"image": {"driver": "file", "filename": "disk.raw"}}}'
    )
    ref, ours = golden([images["raw"]], ["-c", "write 0 512", "-c", "write 4k 512", spec])
    assert "write failed: Operation not permitted" in ref.stdout


DISCARD_SCRIPT = [
    "discard 0 128k",
    "read -P 0 0 128k",
    "discard 3M 64k",
    "write -z -u 512k 256k",
    "read -P 0 512k 256k",
    "discard 1M 1M",
    "flush",
    "read 0 4k",
]


@pytest.mark.parametrize("rule", ["write-enospc", "write-once", "flush", "state"])
@pytest.mark.parametrize("cache", [None, "writeback"])
def test_discard_under_injection(
    golden, images, tmp_path: Path, rule: str, cache: str | None  # noqa: F811
) -> None:  # noqa: F811
    """Discards and unmapping zero writes drop clusters in the metadata caches only;
    the metadata reaches the file at the next flush, so a rule on write_aio
    fails no discard (as in qemu-io) and the results match."""
    cfg = tmp_path / "src" / "blkdebug.cfg"
    cfg.write_text(RULES[rule])
    mode = ["-t", cache] if cache else []
    args = [a for line in DISCARD_SCRIPT for a in ("-c", line)]
    ref, ours = golden(
        [images["base"], cfg], [*mode, "-f", "qcow2", *args, "blkdebug:blkdebug.cfg:base.qcow2"]
    )
    done = [sum(x.startswith("discard ") for x in r.stdout.splitlines()) for r in (ref, ours)]
    assert done == [3, 3]
