"""``pyqemu-img convert``: copy one or more images into a new (or existing) one
(qemu-img.c img_convert).

How it is fast:

* a plan is made from ``block_status`` first: zero and unallocated runs of the
  source are never read; on a target that reads as zeroes they are skipped,
  otherwise written with ``write_zeroes`` (holes where the format allows);
* data runs are read in chunks of up to 2 MiB aligned to the target cluster
  size, by a thread pool (file I/O and zlib release the GIL); zero detection
  compares against a zero buffer (``bytes.startswith``: memcmp speed) at the
  ``-S`` granularity, rounded up to the target cluster size;
* with ``-c`` the workers also compress each cluster with the target
  driver's ``compress_cluster``; the main thread writes in order;
* a raw target on a host file is written by the workers directly (order does
  not matter there); other targets are written in order unless ``-W``;
* as qemu-img, the target is written with cache mode ``unsafe`` by default:
  flushes to the host disk are skipped (``-t`` other modes keep them).
"""

from __future__ import annotations

import bisect
import collections
import os
import threading
from _queue import Empty, SimpleQueue  # the C queue: no import of queue/heapq
from typing import Any

from ..common.block.buffers import aligned_bytearray
from ..common.workers import Job, Workers
from .cli import (
    CliError,
    Progress,
    UsageError,
    cvtnum,
    getopt,
    is_help_option,
    open_image_cli,
    parse_o_options,
    print_create_help,
    warn,
)

SECTOR = 512
CHUNK = 2 << 20
MAX_BUF_SIZE = 32768 * SECTOR
MAX_COROUTINES = 16
ZERO_CHUNK = bytes(CHUNK)

DATA, ZERO, BACKING = 0, 1, 2


class Source:
    """One input image placed at ``base`` in the target's address space."""

    def __init__(self, node: Any, base: int) -> None:
        self.node = node
        self.base = base
        self.size = node.size
        # qemu-img works in sectors: a source's length is rounded up to 512
        self.length = (node.size + SECTOR - 1) // SECTOR * SECTOR


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
        {
            "help": 0,
            "object": 1,
            "image-opts": 0,
            "target-image-opts": 0,
            "salvage": 0,
            "target-is-zero": 0,
            "bitmaps": 0,
            "skip-broken-bitmaps": 0,
            "force-share": 0,
        },
    )
    fmt: str | None = None
    out_fmt: str | None = None
    out_baseimg: str | None = None
    backing_fmt: str | None = None
    o_values: list[str] = []
    snapshot: tuple[str | None, str | None, bool] | None = None
    compressed = progress = quiet = skip_create = out_of_order = False
    image_opts = tgt_image_opts = target_is_zero = copy_range = False
    min_sparse = 8 * SECTOR
    explicit_min_sparse = False
    coroutines = 8
    cache = "unsafe"
    bitmap_opts: set[str] = set()
    salvage = False
    rate_limit = 0
    for name, value in opts:
        val = value or ""
        if name == "-f":
            fmt = val
        elif name == "-O":
            out_fmt = val
        elif name == "-B":
            out_baseimg = val
        elif name == "-C":
            copy_range = True
        elif name == "-c":
            compressed = True
        elif name == "-F":
            backing_fmt = val
        elif name == "-o":
            o_values.append(val)
        elif name == "-l":
            from .snapshot import parse_snapshot_param

            snapshot = parse_snapshot_param(val)
        elif name == "-S":
            sval = cvtnum("buffer size for sparse output", val)
            if sval % SECTOR or sval > MAX_BUF_SIZE:
                raise CliError(
                    "Invalid buffer size for sparse output specified. Valid sizes are "
                    f"multiples of {SECTOR} up to {MAX_BUF_SIZE}. Select 0 to disable sparse "
                    "detection (fully allocates output)."
                )
            min_sparse = sval
            explicit_min_sparse = True
        elif name == "-p":
            progress = True
        elif name == "-t":
            cache = val
        elif name == "-q":
            quiet = True
        elif name == "-n":
            skip_create = True
        elif name == "-m":
            try:
                coroutines = int(val, 10)
            except ValueError:
                coroutines = 0
            if not 1 <= coroutines <= MAX_COROUTINES:
                raise CliError(
                    "Invalid number of coroutines. Allowed number of coroutines is between "
                    f"1 and {MAX_COROUTINES}"
                )
        elif name == "-W":
            out_of_order = True
        elif name == "-r":
            rate_limit = cvtnum("rate limit", val)
        elif name == "--image-opts":
            image_opts = True
        elif name == "--target-image-opts":
            tgt_image_opts = True
        elif name == "--target-is-zero":
            target_is_zero = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
        elif name in ("--bitmaps", "--skip-broken-bitmaps"):
            bitmap_opts.add(name)
        elif name == "--salvage":
            salvage = True
        # -T src_cache, -U: accepted
    if out_fmt is None and not tgt_image_opts:
        out_fmt = "raw"
    from . import bitmap as _bitmaps

    _bitmaps.convert_options(bitmap_opts)
    if compressed and copy_range:
        raise CliError("Cannot enable copy offloading when -c is used")
    if explicit_min_sparse and copy_range:
        raise CliError("Cannot enable copy offloading when -S is used")
    if tgt_image_opts and not skip_create:
        raise CliError("--target-image-opts requires use of -n flag")
    options = parse_o_options(o_values)
    if skip_create and o_values:
        warn("-o has no effect when skipping image creation")
        warn("This will become an error in future QEMU versions.")
    if target_is_zero and not skip_create:
        raise CliError("--target-is-zero requires use of -n flag")
    out_filename = operands[-1] if len(operands) >= 2 else None
    if o_values and is_help_option(options):
        if out_fmt is None:
            raise CliError("Option help requires a format be specified")
        from ..common.block import BlockError

        try:
            print_create_help(out_fmt, out_filename is not None)
        except BlockError:
            raise CliError(f"Unknown file format '{out_fmt}'") from None
        return 0
    if out_filename is None:
        raise CliError("Must specify image file name")
    if quiet:
        progress = False
    prog = Progress(progress, 1.0)
    prog.print(0, 100)

    conv = Converter(
        compressed=compressed,
        min_sparse=min_sparse,
        workers=coroutines,
        out_of_order=out_of_order,
        cache=cache,
        progress=prog,
    )
    conv.salvage = salvage
    if salvage:
        conv.workers = 1  # one reader: the warnings come in the image's order
    conv.quiet = quiet
    if rate_limit:
        from ..common.ratelimit import LeakyBucket

        conv.limit = LeakyBucket(rate_limit)
    try:
        conv.open_sources(operands[:-1], fmt, image_opts)
        _bitmaps.convert_sources(bitmap_opts, [src.node for src in conv.sources])
        if snapshot is not None:
            from .snapshot import load_snapshot_tmp

            load_snapshot_tmp([src.node for src in conv.sources], snapshot)
        conv.prepare_target(
            out_filename,
            out_fmt,
            options,
            out_baseimg,
            backing_fmt,
            skip_create,
            tgt_image_opts,
            target_is_zero,
        )
        _bitmaps.convert_target(bitmap_opts, conv.target, out_fmt)
        conv.copy()
        conv.finish()
        _bitmaps.convert_copy(bitmap_opts, conv.sources[0].node, conv.target)
    finally:
        conv.close()
    prog.print(100, 0)
    prog.end()
    return 0


class Converter:
    """State of one conversion (qemu-img's ``ImgConvertState``)."""

    def __init__(
        self,
        *,
        compressed: bool,
        min_sparse: int,
        workers: int,
        out_of_order: bool,
        cache: str,
        progress: Progress,
    ) -> None:
        self.compressed = compressed
        self.min_sparse = min_sparse
        self.workers = workers
        self.out_of_order = out_of_order
        self.cache = cache
        self.progress = progress
        self.sources: list[Source] = []
        self.total = 0
        self.target: Any = None
        self.has_zero_init = False
        self.target_has_backing = False
        self.target_backing_size = -1
        self.cluster_size = 0
        self.granularity = 0
        self.worker_writes = False
        #: workers reserve qcow2 clusters in order, then write outside the lock
        self.reserve_writes = False
        #: data runs of host files are read through a memory mapping
        self.use_mmap = False
        self._maps: dict[int, Any] = {}
        #: --salvage: unreadable sectors become zeroes and warnings
        self.salvage = False
        self.quiet = False
        #: -r: bytes written per second (common.ratelimit.LeakyBucket)
        self.limit: Any = None
        self._page = 4096
        self._dontneed = 0

    # ------------------------------------------------------------------
    # setup

    def open_sources(self, names: list[str], fmt: str | None, image_opts: bool) -> None:
        base = 0
        for name in names:
            node = open_image_cli(name, fmt, image_opts=image_opts)
            src = Source(node, base)
            self.sources.append(src)
            base += src.length
        self.total = base

    def refuse_snapshot(self) -> None:
        """``-l``: pyqemu has no internal snapshot loading yet."""
        name = self.sources[0].node.format_name
        if name == "raw":
            raise CliError(
                f"Failed to load snapshot: Block format '{name}' used by device '' does not "
                "support temporarily loading internal snapshots"
            )
        raise CliError(
            "Failed to load snapshot: internal snapshots are not supported yet by pyqemu-img"
        )

    def prepare_target(
        self,
        filename: str,
        fmt: str | None,
        options: dict[str, str],
        out_baseimg: str | None,
        backing_fmt: str | None,
        skip_create: bool,
        tgt_image_opts: bool,
        target_is_zero: bool,
    ) -> None:
        from ..common.block import BlockError, get_format
        from ..common.block.file import FileProtocol
        from ..common.errors import QemuError

        cls = None
        if fmt is not None:
            try:
                cls = get_format(fmt)
            except BlockError:
                raise CliError(f"Unknown file format '{fmt}'") from None
        opts = dict(options)
        if not skip_create:
            assert cls is not None and fmt is not None
            known = {o.name for o in cls.create_options}
            known |= {o.name for o in FileProtocol.create_options}
            for key in opts:
                if key not in known:
                    raise CliError(f"Invalid parameter '{key}'")
            if out_baseimg is not None:
                if "backing_file" not in known:
                    raise CliError(f"Backing file not supported for file format '{fmt}'")
                opts["backing_file"] = out_baseimg
            if backing_fmt is not None:
                if "backing_fmt" not in known:
                    raise CliError(f"Backing file format not supported for file format '{fmt}'")
                opts["backing_fmt"] = backing_fmt
        param = options.get("backing_file")
        if param:
            out_baseimg = param
        self.target_has_backing = bool(out_baseimg)
        if target_is_zero and self.target_has_backing:
            raise CliError(
                "Cannot use --target-is-zero when the destination image has a backing file"
            )
        if len(self.sources) > 1 and out_baseimg:
            raise CliError(
                "Having a backing file for the target makes no sense when concatenating "
                "multiple input images"
            )
        if param and not options.get("backing_fmt"):
            raise CliError("Use of backing file requires explicit backing format")
        if self.compressed and cls is not None:
            if not hasattr(cls, "write_compressed"):
                raise CliError("Compression not supported for this file format")
            if opts.get("encrypt.format") or opts.get("encryption") in ("on", "yes", "true"):
                raise CliError("Compression and encryption not supported at the same time")
            if opts.get("preallocation", "off") != "off":
                raise CliError("Compression and preallocation not supported at the same time")
        if not skip_create:
            assert cls is not None
            try:
                cls.create(filename, self.total, opts)
            except QemuError as exc:
                raise CliError(f"{filename}: error while converting {fmt}: {exc.message}") from None
        # a new image gets the key secrets of its -o options (img_add_key_secrets)
        secrets = {k: v for k, v in opts.items() if k.endswith("key-secret")}
        target = open_image_cli(
            filename,
            fmt,
            image_opts=tgt_image_opts,
            writable=True,
            options=secrets if secrets and not skip_create else None,
        )
        self.target = target
        if self.cache == "unsafe":
            _ignore_flushes(target)
        if self.compressed and not hasattr(target, "write_compressed"):
            raise CliError("Compression not supported for this file format")
        if skip_create and target.size < self.total:
            raise CliError("output file is smaller than input file")
        if self.target_has_backing and not skip_create and target.backing is not None:
            self.target_backing_size = target.backing.size
        self.cluster_size = int(target.cluster_size or 0)
        if self.compressed:
            if self.cluster_size <= 0 or self.cluster_size > CHUNK:
                raise CliError("invalid cluster size")
        # zero detection granularity: -S, rounded up to the target cluster
        gran = max(self.min_sparse, self.cluster_size or 0)
        if self.cluster_size and gran % self.cluster_size:
            gran += self.cluster_size - gran % self.cluster_size
        self.granularity = gran
        if target_is_zero:
            self.has_zero_init = True
        elif not skip_create:
            self.has_zero_init = (
                bool(self.min_sparse) and not self.target_has_backing and target.has_zero_init
            )
        elif not self.target_has_backing and self.min_sparse and _is_raw_file(target):
            # qemu-img zeroes an existing target first when that is cheap (unmap)
            try:
                target.write_zeroes(0, target.size, may_unmap=True)
                self.has_zero_init = True
            except QemuError:
                self.has_zero_init = False
        self.worker_writes = _is_raw_file(target) or self.out_of_order
        # a fresh qcow2 target: clusters are reserved in guest order (the host
        # layout is qemu-img's) and the data written by the worker that read it
        self.reserve_writes = (
            not self.worker_writes
            and not self.compressed
            and self.has_zero_init
            and hasattr(target, "reserve_write")
        )
        self.use_mmap = (
            (self.worker_writes or self.reserve_writes)
            and not self.compressed
            and not self.salvage
            and not any(_has_blkdebug(src.node) for src in self.sources)
        )

    # ------------------------------------------------------------------
    # planning

    def plan(self) -> list[tuple[int, int, int, Any]]:
        """Runs ``(kind, start, length, host)`` in target space, adjacent kinds
        merged. ``host`` is ``(mapping, offset)`` for a data run whose bytes sit
        contiguously in a host file mapped by :meth:`_mapping`, else None."""
        from ..common.block import Status, block_status_above, node_status

        runs: list[tuple[int, int, int, Any]] = []

        def add(kind: int, start: int, length: int, host: Any = None) -> None:
            if runs:
                pk, ps, pl, ph = runs[-1]
                if (
                    pk == kind
                    and ps + pl == start
                    and (
                        ph is None
                        if host is None
                        else ph is not None and ph[0] is host[0] and ph[1] + pl == host[1]
                    )
                ):
                    runs[-1] = (kind, ps, pl + length, ph)
                    return
            runs.append((kind, start, length, host))

        for src in self.sources:
            node = src.node
            off = 0
            # status queries start small and double while runs continue: a
            # driver may walk the whole requested range to answer one run
            cap = 1 << 20
            while off < src.size:
                want = min(cap, src.size - off)
                hfile: Any = None
                hoff = 0
                if self.target_has_backing:
                    st = node_status(node, off, want)
                    length = st.length
                    if st.flags & Status.ZERO:
                        past = 0 <= self.target_backing_size <= src.base + off
                        kind = BACKING if past else ZERO
                    elif st.flags & Status.DATA:
                        kind = DATA
                        if st.flags & Status.OFFSET_VALID:
                            hfile, hoff = st.file, st.offset or 0
                    else:
                        kind = BACKING
                else:
                    mr = block_status_above(node, off, want)
                    length = mr.length
                    kind = ZERO if mr.zero else DATA
                    if kind == DATA and mr.offset is not None:
                        hfile, hoff = mr.file, mr.offset
                cap = min(cap * 2, 1 << 30) if length >= want else 1 << 20
                if length <= 0:
                    raise CliError(f"error while reading block status at offset {off}")
                host = None
                if hfile is not None and self.use_mmap:
                    mapping = self._mapping(hfile)
                    if mapping is not None and hoff + length <= len(mapping[1]):
                        host = (mapping, hoff)
                add(kind, src.base + off, length, host)
                off += length
            if src.length > src.size:
                add(ZERO, src.base + src.size, src.length - src.size)
        if self.compressed:
            runs = [(k, s, n, None) for k, s, n in self._cluster_align([r[:3] for r in runs])]
        return runs

    def _mapping(self, file: Any) -> tuple[Any, memoryview] | None:
        """A read-only memory mapping of a host file node (cached), or None.

        Data runs are read from it with no copy: zero detection looks at the
        mapping and ``pwrite`` copies from it straight into the target (one
        copy instead of two); pages are dropped from the mapping once written,
        so the resident size stays small.
        """
        from ..common.block.file import FileProtocol

        if not isinstance(file, FileProtocol):
            return None
        key = id(file)
        if key in self._maps:
            return self._maps[key]
        import mmap

        entry = None
        try:
            size = os.fstat(file.fd).st_size if not file.is_block_device else file.size
            if size > 0 and hasattr(mmap.mmap, "madvise"):
                m = mmap.mmap(file.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
                entry = (m, memoryview(m))
                self._page = mmap.PAGESIZE
                self._dontneed = mmap.MADV_DONTNEED
        except (OSError, ValueError, OverflowError):
            entry = None
        self._maps[key] = entry
        return entry

    def _close_mappings(self) -> None:
        for entry in self._maps.values():
            if entry is not None:
                entry[1].release()
                try:
                    entry[0].close()
                except BufferError:  # a view is still alive somewhere: leave it to GC
                    pass
        self._maps = {}

    def _cluster_align(self, runs: list[Any]) -> list[tuple[int, int, int]]:
        """Compressed clusters are written whole: a cluster with any data is data."""
        cs = self.cluster_size
        out: list[tuple[int, int, int]] = []

        def add(kind: int, start: int, end: int) -> None:
            if end <= start:
                return
            if out and out[-1][1] + out[-1][2] >= start and out[-1][0] == kind:
                s0 = out[-1][1]
                out[-1] = (kind, s0, max(end, s0 + out[-1][2]) - s0)
            else:
                out.append((kind, start, end - start))

        for kind, start, length in runs:
            end = start + length
            if kind == DATA:
                a = start - start % cs
                b = min(self.total, -(-end // cs) * cs)
                if out and out[-1][1] + out[-1][2] > a:
                    # trim the previous non-data run back to this cluster
                    pk, ps, pl = out[-1]
                    if pk != DATA:
                        out[-1] = (pk, ps, a - ps)
                        if out[-1][2] <= 0:
                            out.pop()
                    else:
                        a = ps + pl if ps + pl > a else a
                add(DATA, a, b)
            else:
                if out and out[-1][0] == DATA:
                    start = max(start, out[-1][1] + out[-1][2])
                add(kind, start, end)
        return out

    # ------------------------------------------------------------------
    # copying

    def read_virtual(self, start: int, out: memoryview) -> None:
        """Read target-space ``[start, start+len(out))`` from the sources into ``out``."""
        bases = self._bases
        i = bisect.bisect_right(bases, start) - 1
        pos = start
        end = start + len(out)
        while pos < end:
            src = self.sources[i]
            rel = pos - src.base
            n = min(end, src.base + src.length) - pos
            readable = max(0, min(n, src.size - rel))
            view = out[pos - start : pos - start + n]
            if readable:
                node = src.node
                readinto = getattr(node, "readinto", None)
                if readinto is not None:
                    readinto(rel, view[:readable])
                else:
                    view[:readable] = node.read(rel, readable)
            if n > readable:
                view[readable:] = memoryview(ZERO_CHUNK)[: n - readable]
            pos += n
            i += 1

    def _get_buffer(self) -> bytearray:
        try:
            return self._pool.get_nowait()
        except Empty:
            return aligned_bytearray(CHUNK)

    def _split(self, buf: bytearray, n: int, start: int) -> list[tuple[int, int, bool]]:
        """Data/zero segments ``(rel_start, rel_end, is_data)`` of ``buf[:n]``.

        Granules are aligned to ``granularity`` in target space; the first and
        last may be partial. Only granules whose first 8 bytes are zero can be
        zero: those are found from a strided sample (one word per granule,
        copied in C), and just they are compared in full, a run of adjacent
        candidates at once. On random data that is a few microseconds per
        chunk, where scanning every byte costs a memory pass.
        """
        if not self.min_sparse:
            return [(0, n, True)]
        g = self.granularity
        head = min(n, (-start) % g)
        if head & 7 or g & 7:
            return self._split_scan(buf, n, start)
        with memoryview(buf) as mv:
            if ZERO_CHUNK.startswith(mv[:n]):
                return [(0, n, False)]
            segs: list[tuple[int, int, bool]] = []

            def add(a: int, b: int, is_data: bool) -> None:
                if b <= a:
                    return
                if segs and segs[-1][2] == is_data:
                    segs[-1] = (segs[-1][0], b, is_data)
                else:
                    segs.append((a, b, is_data))

            if head:
                add(0, head, not ZERO_CHUNK.startswith(mv[:head]))
            full = (n - head) // g  # whole granules after the head
            body_end = head + full * g
            if full:
                with mv[head:body_end] as body, body.cast("Q") as words:
                    sample = bytes(words[:: g >> 3])
                zword = bytes(8)
                pos = head  # everything before pos is classified
                k = sample.find(zword)
                while k >= 0:
                    if k & 7:
                        k = sample.find(zword, k + 1)
                        continue
                    # candidates k.. (granule index i): extend over adjacent ones
                    i = k >> 3
                    j = i + 1
                    while sample.startswith(zword, j << 3):
                        j += 1
                    a = head + i * g
                    b = head + j * g
                    add(pos, a, True)
                    if ZERO_CHUNK.startswith(mv[a:b]):
                        add(a, b, False)
                    else:
                        for c in range(a, b, g):
                            add(c, c + g, not ZERO_CHUNK.startswith(mv[c : c + g]))
                    pos = b
                    k = sample.find(zword, j << 3)
                add(pos, body_end, True)
            if body_end < n:
                add(body_end, n, not ZERO_CHUNK.startswith(mv[body_end:n]))
        return segs

    def _split_scan(self, buf: bytearray, n: int, start: int) -> list[tuple[int, int, bool]]:
        """:meth:`_split` for granules not aligned to 8 bytes in ``buf``.

        Granules are aligned to ``granularity`` in target space; the first and
        last may be partial. Zero granules are found with ``bytearray.find``
        of a zero granule (a C search that skips a granule per probe over
        random data), not with a Python loop per granule.
        """
        if not self.min_sparse:
            return [(0, n, True)]
        with memoryview(buf) as mv:
            if ZERO_CHUNK.startswith(mv[:n]):
                return [(0, n, False)]
            g = self.granularity
            zero_g = self._zero_g
            segs: list[tuple[int, int, bool]] = []

            def add(a: int, b: int, is_data: bool) -> None:
                if b <= a:
                    return
                if segs and segs[-1][2] == is_data:
                    segs[-1] = (segs[-1][0], b, is_data)
                else:
                    segs.append((a, b, is_data))

            pos = 0
            head = min(n, (-start) % g)
            if head:
                add(0, head, not ZERO_CHUNK.startswith(mv[:head]))
                pos = head
            while pos < n:  # pos is on a granule boundary
                if n - pos < g:  # partial last granule
                    add(pos, n, not ZERO_CHUNK.startswith(mv[pos:n]))
                    break
                q = buf.find(zero_g, pos, n)
                if q < 0:
                    last = n - (n - pos) % g
                    add(pos, last, True)
                    pos = last
                    continue
                a = pos + -(-(q - pos) // g) * g
                if a + g > n:
                    add(pos, a, True)
                    pos = a
                    continue
                if not buf.startswith(zero_g, a, a + g):
                    add(pos, a + g, True)
                    pos = a + g
                    continue
                add(pos, a, True)
                # extend the zero run, probing doubling spans of whole granules
                e = a + g
                step = g
                while e + g <= n:
                    k = min(step, (n - e) // g * g)
                    if ZERO_CHUNK.startswith(mv[e : e + k]):
                        e += k
                        step *= 2
                    elif step == g:
                        break
                    else:
                        step = g
                add(a, e, False)
                pos = e
        return segs

    def _work(self, start: int, length: int, seq: int = -1, host: Any = None) -> Any:
        """Worker: read, detect zeroes, compress; write too if allowed."""
        from ..common.errors import QemuError

        if self.limit is not None:
            self.limit.throttle(length)
        g = self.granularity
        if host is not None and (not g or not (-start) % g & 7):
            return self._work_mapped(start, length, seq, host[0], host[1])
        whole = self._get_buffer()
        buf = memoryview(whole)[:length]
        try:
            self.read_virtual(start, buf)
        except QemuError as exc:
            if not self.salvage:
                raise CliError(f"error while reading at byte {start}: {exc.message}") from None
            from .salvage import salvage_read

            salvage_read(self.sources, start, buf, self.quiet)
        if self.compressed:
            cs = self.cluster_size
            items: list[tuple[int, Any]] = []
            compress = self._compress
            for rel in range(0, length, cs):
                piece = buf[rel : rel + cs]
                if ZERO_CHUNK.startswith(piece):
                    items.append((start + rel, None))
                    continue
                packed = compress(piece) if compress is not None else None
                if packed is None:
                    items.append((start + rel, (False, bytes(piece))))
                else:
                    items.append((start + rel, (True, packed)))
            buf.release()
            self._pool.put(whole)
            return items
        segs = self._split(whole, length, start)
        if seq >= 0:
            try:
                self._reserve_and_write(buf, start, segs, seq)
            except QemuError as exc:
                raise CliError(f"error while writing at byte {start}: {exc.message}") from None
            buf.release()
            self._pool.put(whole)
            return None
        if self.worker_writes:
            try:
                self._write_segments(buf, start, segs)
            except QemuError as exc:
                raise CliError(f"error while writing at byte {start}: {exc.message}") from None
            buf.release()
            self._pool.put(whole)
            return None
        return whole, buf, segs

    def _work_mapped(
        self, start: int, length: int, seq: int, mapping: tuple[Any, memoryview], hoff: int
    ) -> None:
        """Worker for a run mapped from a host file: no read into a buffer."""
        from ..common.errors import QemuError

        m, view = mapping
        buf = view[hoff : hoff + length]
        try:
            segs = self._split(buf, length, start)
            try:
                if seq >= 0:
                    self._reserve_and_write(buf, start, segs, seq)
                else:
                    self._write_segments(buf, start, segs)
            except QemuError as exc:
                raise CliError(f"error while writing at byte {start}: {exc.message}") from None
        finally:
            buf.release()
            # drop the pages from this process (they stay in the page cache)
            page = self._page
            a = hoff & ~(page - 1)
            b = min(len(view), (hoff + length + page - 1) & ~(page - 1))
            try:
                m.madvise(self._dontneed, a, b - a)
            except (OSError, ValueError):
                pass

    def _reserve_and_write(
        self, mv: memoryview, start: int, segs: list[tuple[int, int, bool]], seq: int
    ) -> None:
        """Take this chunk's turn to reserve target clusters (in order, so the
        layout does not depend on thread timing), then write outside the turn."""
        target = self.target
        reserved: list[tuple[Any, int, int]] = []
        turn = self._turn
        with turn:
            while self._next_seq != seq:
                if self._aborted:
                    return
                turn.wait()
            try:
                for a, b, is_data in segs:
                    if is_data:
                        extents = target.reserve_write(start + a, b - a)
                        if extents is None:  # not whole free clusters: in order, locked
                            target.write(start + a, mv[a:b])
                        else:
                            reserved.append((extents, a, b))
            finally:
                self._next_seq = seq + 1
                turn.notify_all()
        try:
            while reserved:
                extents, a, b = reserved[0]
                target.complete_write(extents, mv[a:b])
                del reserved[0]
        finally:
            for extents, _, _ in reserved:
                target.cancel_write(extents)

    def _write_segments(
        self, mv: memoryview, start: int, segs: list[tuple[int, int, bool]]
    ) -> None:
        target = self.target
        for a, b, is_data in segs:
            if is_data:
                target.write(start + a, mv[a:b])
            elif not self.has_zero_init:
                target.write_zeroes(start + a, b - a, may_unmap=True)

    def _write_zero_run(self, start: int, length: int) -> None:
        if self.has_zero_init:
            return
        if self.limit is not None:
            self.limit.throttle(length)
        if self.min_sparse:
            self.target.write_zeroes(start, length, may_unmap=True)
            return
        # -S 0: the output is fully allocated, zeroes are written as data
        zeros = memoryview(ZERO_CHUNK)
        pos, end = start, start + length
        while pos < end:
            n = min(CHUNK, end - pos)
            self.target.write(pos, zeros[:n])
            pos += n

    def _finish_item(self, item: Any) -> None:
        kind, start, length, fut = item
        if kind == ZERO:
            self._write_zero_run(start, length)
            return
        result = fut.result()
        if self.compressed:
            for off, data in result:
                if data is None:
                    if not self.has_zero_init:
                        self.target.write_zeroes(off, min(self.cluster_size, self.total - off))
                elif data[0]:
                    self.target.write_compressed_raw(off, data[1])
                elif self._compress is not None:
                    self.target.write(off, data[1])
                else:
                    self.target.write_compressed(off, data[1])
        elif result is not None:
            whole, buf, segs = result
            self._write_segments(buf, start, segs)
            buf.release()
            self._pool.put(whole)
        self._done += length
        if self._allocated:
            self.progress.print(100.0 * self._done / self._allocated, 0)

    def copy(self) -> None:
        from ..common.errors import QemuError

        self._bases = [s.base for s in self.sources]
        self._pool: SimpleQueue[bytearray] = SimpleQueue()
        self._zero_g = bytes(self.granularity) if self.granularity else b""
        self._compress = getattr(self.target, "compress_cluster", None) if self.compressed else None
        try:
            runs = self.plan()
        except QemuError as exc:
            raise CliError(f"error while reading block status: {exc.message}") from None
        self._allocated = sum(
            length
            for kind, _, length, _ in runs
            if kind == DATA or (kind == ZERO and not self.min_sparse)
        )
        self._done = 0
        self._turn = threading.Condition()
        self._next_seq = 0
        self._aborted = False
        seq = 0
        step = CHUNK
        if self.cluster_size and step % self.cluster_size:
            step = max(self.cluster_size, step - step % self.cluster_size)
        window = max(2, self.workers * 2)
        pending: collections.deque[Any] = collections.deque()
        # -m bounds the threads; more than one per CPU (+1 for I/O waits)
        # measured slower on a 2-CPU host
        cpus = os.cpu_count() or 1
        nworkers = min(self.workers, cpus + 1)
        pool = Workers(max(1, nworkers))
        try:
            for kind, start, length, host in runs:
                if kind == BACKING:
                    continue
                if kind == ZERO:
                    pending.append((ZERO, start, length, None))
                    if not self.min_sparse:
                        self._done += length
                    continue
                pos = start
                end = start + length
                while pos < end:
                    # chunks end on multiples of ``step`` so they stay cluster aligned
                    n = min(end, (pos // step + 1) * step) - pos
                    h = None if host is None else (host[0], host[1] + pos - start)
                    if self.reserve_writes:
                        fut: Job = pool.submit(self._work, pos, n, seq, h)
                        seq += 1
                    else:
                        fut = pool.submit(self._work, pos, n, -1, h)
                    pending.append((DATA, pos, n, fut))
                    pos += n
                    while len(pending) > window:
                        self._finish_checked(pending.popleft())
            while pending:
                self._finish_checked(pending.popleft())
        finally:
            for item in pending:
                if item[3] is not None:
                    item[3].cancel()
            with self._turn:
                self._aborted = True  # a cancelled chunk never takes its turn
                self._turn.notify_all()
            pool.shutdown()
            self._close_mappings()

    def _finish_checked(self, item: Any) -> None:
        from ..common.errors import QemuError

        try:
            self._finish_item(item)
        except QemuError as exc:
            raise CliError(f"error while writing at byte {item[1]}: {exc.message}") from None

    def finish(self) -> None:
        if self.target is not None:
            self.target.flush()

    def close(self) -> None:
        self._close_mappings()
        if self.target is not None:
            self.target.close()
            self.target = None
        for src in self.sources:
            src.node.close()
        self.sources = []


def _is_raw_file(node: Any) -> bool:
    from ..common.block.file import FileProtocol

    return (
        node.format_name == "raw"
        and isinstance(node.file, FileProtocol)
        and not getattr(node, "offset", 0)
        and not getattr(node, "has_size", False)
    )


def _has_blkdebug(node: Any) -> bool:
    """Whether reads of ``node`` pass a blkdebug node (which must see them)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        if n.format_name == "blkdebug":
            return True
        stack.extend((getattr(n, "file", None), getattr(n, "backing", None)))
    return False


def _ignore_flushes(node: Any) -> None:
    """cache=unsafe: host flushes of the target's protocol nodes are no-ops."""
    from ..common.block.file import FileProtocol

    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, FileProtocol):
            n._flush = _noop  # type: ignore[method-assign]
        if hasattr(n, "no_flush"):
            n.no_flush = True  # qcow2's cache.no-flush: no write barriers
        if n.file is not None:
            stack.append(n.file)


def _noop() -> None:
    return None


__all__ = ["run", "Converter", "UsageError"]
