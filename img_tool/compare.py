"""``pyqemu-img compare``: compare two images' guest-visible contents
(qemu-img.c img_compare). Exit 0 identical, 1 different, 2 error (open),
3 block status failure, 4 read error."""

from __future__ import annotations

from typing import Any

from .cli import CliError, Progress, UsageError, getopt, open_image_cli, qprint

IO_BUF_SIZE = 2 << 20
SECTOR = 512
_ZERO_SECTOR = bytes(SECTOR)


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "hf:F:T:pqsU",
        {"help": 0, "object": 1, "image-opts": 0, "force-share": 0},
    )
    fmt1: str | None = None
    fmt2: str | None = None
    progress = quiet = strict = image_opts = False
    for name, value in opts:
        if name == "-f":
            fmt1 = value
        elif name == "-F":
            fmt2 = value
        elif name == "-p":
            progress = True
        elif name == "-q":
            quiet = True
        elif name == "-s":
            strict = True
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
        # -T src_cache and -U: accepted
    if quiet:
        progress = False
    if len(operands) != 2:
        raise UsageError("Expecting two image file names")
    name1, name2 = operands
    prog = Progress(progress, 2.0)
    prog.print(0, 100)
    try:
        img1 = open_image_cli(name1, fmt1, image_opts=image_opts)
    except CliError as exc:
        raise CliError(exc.message, 2) from None
    try:
        try:
            img2 = open_image_cli(name2, fmt2, image_opts=image_opts)
        except CliError as exc:
            raise CliError(exc.message, 2) from None
        try:
            ret = compare(img1, img2, name1, name2, strict, quiet, prog)
        finally:
            img2.close()
    finally:
        img1.close()
    prog.end()
    return ret


def _status(run: Any) -> int:
    flags = 0
    if run.data:
        flags |= 0x01
    if run.zero:
        flags |= 0x02
    if run.offset is not None:
        flags |= 0x04
    if run.present:
        flags |= 0x10
    return flags


def _read(img: Any, offset: int, length: int, name: str) -> bytes:
    from ..common.errors import QemuError

    try:
        return img.read(offset, length)
    except QemuError as exc:
        raise CliError(f"Error while reading offset {offset} of {name}: {exc.message}", 4) from None


def _first_diff_sector(buf1: bytes, buf2: bytes) -> int:
    """``compare_buffers``: bytes before the first differing 512-byte sector."""
    if buf1 == buf2:
        return len(buf1)
    lo, hi = 0, len(buf1)
    mv1, mv2 = memoryview(buf1), memoryview(buf2)
    # binary search for the first differing byte, then round down to a sector
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mv1[lo:mid] == mv2[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo - lo % SECTOR


def _check_empty(img: Any, offset: int, length: int, name: str, quiet: bool) -> bool:
    """``check_empty_sectors``: True (and message) if data is found."""
    buf = _read(img, offset, length, name)
    if buf.count(0) == len(buf):
        return False
    mv = memoryview(buf)
    for pos in range(0, length, SECTOR):
        if mv[pos : pos + SECTOR] != _ZERO_SECTOR[: min(SECTOR, length - pos)]:
            qprint(quiet, f"Content mismatch at offset {offset + pos}!\n")
            return True
    return False


def _status_above(img: Any, offset: int, length: int, name: str) -> Any:
    from ..common.block import block_status_above
    from ..common.errors import QemuError

    try:
        return block_status_above(img, offset, length)
    except QemuError:
        raise CliError(f"Sector allocation test failed for {name}", 3) from None


def compare(
    img1: Any, img2: Any, name1: str, name2: str, strict: bool, quiet: bool, prog: Progress
) -> int:
    size1, size2 = img1.size, img2.size
    total = min(size1, size2)
    progress_base = max(size1, size2) or 1
    if strict and size1 != size2:
        qprint(quiet, "Strict mode: Image size mismatch!\n")
        return 1
    offset = 0
    while offset < total:
        run1 = _status_above(img1, offset, total - offset, name1)
        run2 = _status_above(img2, offset, total - offset, name2)
        chunk = min(run1.length, run2.length)
        status1, status2 = _status(run1), _status(run2)
        if strict and status1 != status2:
            qprint(quiet, f"Strict mode: Offset {offset} block status mismatch!\n")
            return 1
        allocated1, allocated2 = run1.present, run2.present
        if run1.zero and run2.zero:
            pass
        elif allocated1 == allocated2:
            if allocated1:
                chunk = min(chunk, IO_BUF_SIZE)
                buf1 = _read(img1, offset, chunk, name1)
                buf2 = _read(img2, offset, chunk, name2)
                same = _first_diff_sector(buf1, buf2)
                if same != chunk:
                    qprint(quiet, f"Content mismatch at offset {offset + same}!\n")
                    return 1
        else:
            chunk = min(chunk, IO_BUF_SIZE)
            if allocated1:
                if _check_empty(img1, offset, chunk, name1, quiet):
                    return 1
            elif _check_empty(img2, offset, chunk, name2, quiet):
                return 1
        offset += chunk
        prog.print(chunk / progress_base * 100, 100)
    if size1 != size2:
        qprint(quiet, "Warning: Image size mismatch!\n")
        if size1 > size2:
            img, name = img1, name1
        else:
            img, name = img2, name2
        end = max(size1, size2)
        while offset < end:
            run = _status_above(img, offset, end - offset, name)
            chunk = run.length
            if run.present and not run.zero:
                chunk = min(chunk, IO_BUF_SIZE)
                if _check_empty(img, offset, chunk, name, quiet):
                    return 1
            offset += chunk
            prog.print(chunk / progress_base * 100, 100)
    qprint(quiet, "Images are identical.\n")
    return 0
