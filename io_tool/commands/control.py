"""open, close, reopen, quit, help, sleep, abort, sigraise (qemu-io.c, qemu-io-cmds.c)."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from ..report import NumberError, cvtnum, err, out, output_lock, strtol
from . import CMD_FLAG_GLOBAL, CMD_NOFILE_OK, command, find_command, table
from .io import _parse, _usage, bad_option

if TYPE_CHECKING:
    from ..session import Session

EINVAL = -errno.EINVAL
CACHE_MODES = ("none", "off", "writeback", "writethrough", "directsync", "unsafe")
DISCARD_MODES = ("ignore", "off", "unmap", "on")
AIO_MODES = ("threads", "native", "io_uring")


def raw_probe_warning(name: str) -> None:
    err(
        f"WARNING: Image format was not specified for '{name}' and probing guessed raw.\n"
        "         Automatically detecting the format is dangerous for raw images, "
        "write operations on block 0 will be restricted.\n"
        "         Specify the 'raw' format explicitly to remove the restrictions.\n"
    )


def openfile(
    s: Session,
    name: str | None,
    *,
    read_only: bool,
    snapshot: bool = False,
    copy_on_read: bool = False,
    force_share: bool = False,
    opts: dict[str, Any] | None = None,
    writethrough: bool = True,
    no_flush: bool = False,
) -> int:
    """qemu-io's ``openfile``: 0, or 1 after the error message."""
    from ..backend import OpenError, open_backend

    if s.blk is not None:
        s.error_report("file open already, try 'help close'")
        return 1
    opts = dict(opts or {})
    if force_share:
        if "force-share" in opts and opts["force-share"] != "on":
            s.error_report("-U conflicts with image options")
            return 1
        opts["force-share"] = "on"
    try:
        s.blk = open_backend(
            name,
            opts,
            read_only=read_only,
            snapshot=snapshot,
            copy_on_read=copy_on_read,
            writethrough=writethrough,
            no_flush=no_flush,
        )
    except OpenError as exc:
        if exc.probed_raw:
            raw_probe_warning(name or "")
        where = f" device {name}" if name is not None else ""
        s.error_report(f"can't open{where}: {exc.message}")
        return 1
    if s.blk.probed_raw:
        raw_probe_warning(name or "")
    return 0


OPEN_HELP = """
 opens a new file in the requested mode

 Example:
 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached

 Opens a file for subsequent use by all of the other qemu-io commands.
 -r, -- open file read-only
 -s, -- use snapshot file
 -C, -- use copy-on-read
 -n, -- disable host cache, short for -t none
 -U, -- force shared permissions
 -k, -- use kernel AIO implementation (Linux only, prefer use of -i)
 -i, -- use AIO mode (threads, native or io_uring)
 -t, -- use the given cache mode for the image
 -d, -- use the given discard mode for the image
 -o, -- options to be given to the block driver
"""


def _parse_opts(s: Session, text: str, into: dict[str, Any]) -> bool:
    from ...common.options import OptionError, parse_opts

    try:
        into.update(parse_opts(text))
    except OptionError as exc:
        s.error_report(exc.message)
        return False
    return True


@command(
    "open",
    altname="o",
    argmin=1,
    argmax=-1,
    args="[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
    oneline="open the file specified by path",
    help=OPEN_HELP,
    flags=CMD_NOFILE_OK,
)
def open_f(s: Session, argv: list[str]) -> int:
    opts, rest = _parse(argv, "snCro:ki:t:d:U")
    read_only = snapshot = cor = force_share = False
    writethrough, no_flush = True, False
    options: dict[str, Any] = {}
    for o, v in opts:
        if o == "?":
            return bad_option("open", v)
        if o == "n":
            writethrough = False
        elif o == "s":
            snapshot = True
        elif o == "C":
            cor = True
        elif o == "r":
            read_only = True
        elif o == "U":
            force_share = True
        elif o == "t":
            if v not in CACHE_MODES:
                s.error_report(f"Invalid cache option: {v}")
                return EINVAL
            writethrough, no_flush = _cache_mode(v)
        elif o == "d" and v not in DISCARD_MODES:
            s.error_report(f"Invalid discard option: {v}")
            return EINVAL
        elif o == "i" and v not in AIO_MODES:
            s.error_report(f"Invalid aio option: {v}")
            return EINVAL
        elif o == "o":
            if s.image_opts:
                out("--image-opts and 'open -o' are mutually exclusive\n")
                return EINVAL
            if not _parse_opts(s, v or "", options):
                return EINVAL
    if s.image_opts and len(rest) == 1:
        if not _parse_opts(s, rest.pop(), options):
            return EINVAL
    if len(rest) > 1:
        return _usage("open")
    name = rest[0] if rest else None
    ret = openfile(
        s,
        name,
        read_only=read_only,
        snapshot=snapshot,
        copy_on_read=cor,
        force_share=force_share,
        opts=options,
        writethrough=writethrough,
        no_flush=no_flush,
    )
    return EINVAL if ret else 0


def _cache_mode(mode: str) -> tuple[bool, bool]:
    from ..backend import CACHE_MODES as MODES

    return MODES[mode]


@command("close", altname="c", oneline="close the current open file")
def close_f(s: Session, argv: list[str]) -> int:
    s.drain()
    if s.blk is not None:
        for line in s.blk.close():
            s.error_report(line)
    s.blk = None
    return 0


REOPEN_HELP = """
 Changes the open options of an already opened image

 Example:
 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image

 -r, -- Reopen the image read-only
 -w, -- Reopen the image read-write
 -c, -- Change the cache mode to the given value
 -o, -- Changes block driver options (cf. 'open' command)

"""


@command(
    "reopen",
    argmin=0,
    argmax=-1,
    args="[(-r|-w)] [-c cache] [-o options]",
    oneline="reopens an image with new options",
    help=REOPEN_HELP,
)
def reopen_f(s: Session, argv: list[str]) -> int:
    from ...common.options import parse_bool

    blk = s.blk
    assert blk is not None
    opts, rest = _parse(argv, "c:o:rw")
    read_only = blk.read_only
    has_rw = has_cache = False
    cache = (not blk.write_cache, blk.node.no_flush)
    options: dict[str, Any] = {}
    for o, v in opts:
        if o == "?":
            return bad_option("reopen", v)
        if o == "c":
            if v not in CACHE_MODES:
                s.error_report(f"Invalid cache option: {v}")
                return EINVAL
            cache = _cache_mode(v)
            has_cache = True
        elif o == "o":
            if not _parse_opts(s, v or "", options):
                return EINVAL
        elif o in ("r", "w"):
            if has_rw:
                s.error_report("Only one -r/-w option may be given")
                return EINVAL
            read_only = o == "r"
            has_rw = True
    if rest:
        return _usage("reopen")
    if "read-only" in options:
        if has_rw:
            s.error_report("Cannot set both -r/-w and 'read-only'")
            return EINVAL
        try:
            read_only = parse_bool(options.pop("read-only"), "read-only")
        except Exception as exc:  # noqa: BLE001
            s.error_report(str(exc))
            return EINVAL
        if read_only and blk.write_perm:
            # the write permission taken by an earlier write is not given up
            s.error_report("Read-only block node '#block%03d' cannot support read-write users" % 0)
            return EINVAL
    if "cache.direct" in options or "cache.no-flush" in options:
        if has_cache:
            s.error_report("Cannot set both -c and the cache options")
            return EINVAL
        options.pop("cache.direct", None)
        options.pop("cache.no-flush", None)
    for key in options:
        s.error_report(f"Cannot change the option '{key}'")
        return EINVAL
    s.drain()
    from ...common.errors import QemuError

    if read_only:
        blk.write_perm = False
    try:
        blk.set_read_only(read_only)
    except QemuError as exc:
        s.error_report(exc.message)
        return EINVAL
    blk.set_cache(*cache)
    return 0


@command(
    "quit",
    altname="q",
    argmin=-1,
    argmax=-1,
    oneline="exit the program",
    flags=CMD_FLAG_GLOBAL,
)
def quit_f(s: Session, argv: list[str]) -> int:
    s.quit = True
    return 0


def _help_oneline(name: str, args: str | None, oneline: str) -> str:
    return f"{name} " + (f"{args} " if args is not None else "") + f"-- {oneline}\n"


@command(
    "help",
    altname="?",
    argmin=0,
    argmax=1,
    args="[command]",
    oneline="help for one or all commands",
    flags=CMD_FLAG_GLOBAL,
)
def help_f(s: Session, argv: list[str]) -> int:
    if len(argv) < 2:
        text = "".join(_help_oneline(ct.name, ct.args, ct.oneline) for ct in table())
        out(text + "\nUse 'help commandname' for extended help.\n")
        return 0
    ct = find_command(argv[1])
    if ct is None:
        out(f"command {argv[1]} not found\n")
        return EINVAL
    out(_help_oneline(argv[1], ct.args, ct.oneline) + (ct.help or ""))
    return 0


@command(
    "sleep",
    argmin=1,
    argmax=1,
    oneline="waits for the given value in milliseconds",
    flags=CMD_NOFILE_OK,
)
def sleep_f(s: Session, argv: list[str]) -> int:
    ms = strtol(argv[1])
    if ms is None or ms < 0:
        out(f"{argv[1]} is not a valid number\n")
        return EINVAL
    time.sleep(ms / 1000.0)
    return 0


@command(
    "abort",
    oneline="simulate a program crash using abort(3)",
    flags=CMD_NOFILE_OK,
)
def abort_f(s: Session, argv: list[str]) -> int:
    # abort(3) does not flush stdio: what is still buffered is lost, as in C
    sys.stderr.flush()
    os.abort()


SIGRAISE_HELP = (
    """
 raises the given signal

 Example:
 'sigraise %i' - raises SIGTERM

 Invokes raise(signal), where "signal" is the mandatory integer argument
 given to sigraise.

"""
    % signal.SIGTERM
)

NSIG = 65


@command(
    "sigraise",
    argmin=1,
    argmax=1,
    args="signal",
    oneline="raises a signal",
    help=SIGRAISE_HELP,
    flags=CMD_NOFILE_OK,
)
def sigraise_f(s: Session, argv: list[str]) -> int:
    try:
        sig = cvtnum(argv[1])
    except NumberError as exc:
        return -exc.errno
    if sig > NSIG:
        out(f"signal argument '{argv[1]}' is too large to be a valid signal\n")
        return EINVAL
    with output_lock:
        sys.stdout.flush()
        sys.stderr.flush()
    if sig == 0:
        return 0
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):
        pass
    try:
        signal.raise_signal(sig)
    except (OSError, ValueError):
        return EINVAL
    return 0
