"""``pyqemu-img bench``: a simple I/O benchmark (qemu-img.c img_bench).

``count`` requests of ``buffer_size`` bytes go to the image, starting at
``offset`` and stepping by ``step_size`` (wrapping at the image end), at most
``depth`` of them in flight: a pool of worker threads (``min(depth, count,
MAX_WORKERS)``) takes the place of QEMU's AIO queue. With ``-w`` and
``--flush-interval=N`` a flush follows every N requests, after the queue
drains unless ``--no-drain``. Output text and messages are qemu-img's; the
time is wall-clock from the first request to the last completion.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from .cli import CliError, UsageError, cvtnum, getopt, open_image_cli

INT_MAX = (1 << 31) - 1
MAX_WORKERS = 64
CACHE_MODES = ("none", "off", "writeback", "writethrough", "directsync", "unsafe")
AIO_MODES = ("threads", "native", "io_uring")


def _int(value: str, message: str, minimum: int = 0) -> int:
    try:
        result = int(value, 0)
    except ValueError:
        raise CliError(message) from None
    if result < minimum or result > INT_MAX:
        raise CliError(message)
    return result


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "hc:d:f:ni:o:qs:S:t:wU",
        {
            "help": 0,
            "flush-interval": 1,
            "image-opts": 0,
            "pattern": 1,
            "no-drain": 0,
            "force-share": 0,
        },
    )
    count = 75000
    depth = 64
    fmt: str | None = None
    image_opts = False
    is_write = False
    offset = 0
    bufsize = 4096
    step = 0
    pattern = 0
    flush_interval = 0
    drain = True
    native = False
    cache = "writeback"
    for name, value in opts:
        v = value or ""
        if name == "-c":
            count = _int(v, "Invalid request count specified")
        elif name == "-d":
            depth = _int(v, "Invalid queue depth specified")
        elif name == "-f":
            fmt = v
        elif name == "-n":
            native = True
        elif name == "-i":
            if v not in AIO_MODES:
                raise CliError(f"Invalid aio option: {v}")
            native = v == "native"
        elif name == "-o":
            offset = cvtnum("offset", v)
        elif name == "-s":
            bufsize = cvtnum("buffer size", v, 0, INT_MAX)
        elif name == "-S":
            step = cvtnum("step_size", v, 0, INT_MAX)
        elif name == "-t":
            if v not in CACHE_MODES:
                raise CliError("Invalid cache mode")
            cache = v
        elif name == "-w":
            is_write = True
        elif name == "--pattern":
            pattern = _int(v, "Invalid pattern byte specified")
            if pattern > 0xFF:
                raise CliError("Invalid pattern byte specified")
        elif name == "--flush-interval":
            flush_interval = _int(v, "Invalid flush interval specified")
        elif name == "--no-drain":
            drain = False
        elif name == "--image-opts":
            image_opts = True
        # -q: bench prints its report anyway; -U: we take no image locks
    if len(operands) != 1:
        raise UsageError("Expecting one image file name")
    filename = operands[0]
    if not is_write and flush_interval:
        raise CliError("--flush-interval is only available in write tests")
    if flush_interval and flush_interval < depth:
        raise CliError("Flush interval can't be smaller than depth")
    if native and cache not in ("none", "off", "directsync"):
        if image_opts and fmt:
            raise CliError("--image-opts and --format are mutually exclusive")
        raise CliError(
            f"Could not open '{filename}': aio=native was specified, but it requires "
            "cache.direct=on, which was not specified."
        )
    node = open_image_cli(filename, fmt, image_opts=image_opts, writable=is_write)
    try:
        if step == 0:
            step = bufsize
        sys.stdout.write(
            "Sending %d %s requests, %d bytes each, %d in parallel "
            "(starting at offset %d, step size %d)\n"
            % (count, "write" if is_write else "read", bufsize, depth, offset, step)
        )
        if flush_interval:
            sys.stdout.write(f"Sending flush every {flush_interval} requests\n")
        sys.stdout.flush()
        elapsed = _bench(
            node, count, depth, offset, bufsize, step, is_write, pattern, flush_interval, drain
        )
    finally:
        node.close()
    sys.stdout.write("Run completed in %3.3f seconds.\n" % elapsed)
    return 0


def _bench(
    node: object,
    count: int,
    depth: int,
    offset: int,
    bufsize: int,
    step: int,
    is_write: bool,
    pattern: int,
    flush_interval: int,
    drain: bool,
) -> float:
    """Issue the requests; return the elapsed seconds or raise CliError."""
    size: int = node.size  # type: ignore[attr-defined]
    buf = bytes([pattern]) * bufsize
    failed: list[str] = []
    lock = threading.Lock()

    def request(pos: int) -> None:
        if failed:
            return
        try:
            if pos + bufsize > size:
                raise OSError("Input/output error")
            if is_write:
                node.write(pos, buf)  # type: ignore[attr-defined]
            else:
                node.read(pos, bufsize)  # type: ignore[attr-defined]
        except Exception as exc:  # an I/O error of any layer fails the run
            with lock:
                failed.append(_strerror(exc))

    workers = max(1, min(depth, count, MAX_WORKERS))
    start = time.monotonic()
    pos = offset
    pending: set[Future[None]] = set()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(count):
            if failed:
                break
            if flush_interval and i and i % flush_interval == 0:
                if drain:
                    wait(pending)
                    pending.clear()
                node.flush()  # type: ignore[attr-defined]
            while pending and len(pending) >= depth:  # depth 0 (qemu hangs): one at a time
                _, pending = wait(pending, return_when=FIRST_COMPLETED)  # type: ignore[assignment]
            pending.add(pool.submit(request, pos))
            pos += step
            if size:
                pos %= size
        wait(pending)
    if failed:
        raise CliError(f"Failed request: {failed[0]}")
    if is_write and flush_interval:
        node.flush()  # type: ignore[attr-defined]
    return time.monotonic() - start


def _strerror(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError):
        return str(exc)
    return "Input/output error"
