"""pyqemu-io: qemu-io's command line, start-up and command loop.

Start-up matters (under 100 ms), so this module imports only ``os``/``sys``
and the small helpers of this package at first; the block layer is imported
when an image is opened. Options are parsed by :mod:`.getopt` (glibc's
``getopt_long`` semantics and messages) rather than typer, as in pyqemu-img.
Commands come from ``-c`` (in order) or, without ``-c``, from standard input
after a ``<prog>> `` prompt; the exit status is 1 if any command failed.
"""

from __future__ import annotations

import os
import sys

from .getopt import getopt

QEMU_VERSION = "7.2.0"
PYQEMU_VERSION = "0.1.0"
COPYRIGHT = "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers"

USAGE = """\
Usage: {prog} [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See '{prog} -c help' for information on available commands.

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
"""

LONGOPTS = {
    "help": (0, "h"),
    "version": (0, "V"),
    "cmd": (1, "c"),
    "format": (1, "f"),
    "read-only": (0, "r"),
    "snapshot": (0, "s"),
    "nocache": (0, "n"),
    "copy-on-read": (0, "C"),
    "misalign": (0, "m"),
    "native-aio": (0, "k"),
    "aio": (1, "i"),
    "discard": (1, "d"),
    "cache": (1, "t"),
    "trace": (1, "T"),
    "object": (1, "object"),
    "image-opts": (0, "image-opts"),
    "force-share": (0, "U"),
}


def prog() -> str:
    """g_get_prgname(): the base name of argv[0]."""
    return os.path.basename(sys.argv[0]) or "pyqemu-io"


def _argv0() -> str:
    """argv[0] as typed, for glibc's getopt messages. A script started through its
    ``#!`` line sees the path the shell found on PATH instead of the bare name:
    when that path is what PATH gives for the base name, the user typed the name."""
    path = sys.argv[0]
    base = os.path.basename(path)
    if os.sep in path:
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            candidate = os.path.join(folder or ".", base)
            if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
                if os.path.abspath(candidate) == os.path.abspath(path):
                    return base
                break
    return path


def _fail(message: str) -> int:
    sys.stderr.write(f"{prog()}: {message}\n")
    return 1


def run(argv: list[str]) -> int:
    """Run qemu-io with ``argv`` (without the program name); the exit status."""
    name = prog()
    opts, operands = getopt(_argv0(), argv, "hVc:d:f:rsnCmki:t:T:U", LONGOPTS)
    commands: list[str] = []
    fmt: str | None = None
    read_only = snapshot = cor = force_share = image_opts = False
    writethrough, no_flush = True, False
    for o, v in opts:
        if o == "?":
            sys.stderr.write(f"{v}\n")
            sys.stdout.write(USAGE.format(prog=name))
            return 1
        if o == "c":
            commands.append(v or "")
        elif o == "f":
            fmt = v
        elif o == "r":
            read_only = True
        elif o == "s":
            snapshot = True
        elif o == "C":
            cor = True
        elif o == "U":
            force_share = True
        elif o == "image-opts":
            image_opts = True
        elif o == "d" and v not in ("ignore", "off", "unmap", "on"):
            return _fail(f"Invalid discard option: {v}")
        elif o == "i" and v not in ("threads", "native", "io_uring"):
            return _fail(f"Invalid aio option: {v}")
        elif o == "n":
            writethrough = False
        elif o == "t":
            from .backend import CACHE_MODES

            if v not in CACHE_MODES:
                return _fail(f"Invalid cache option: {v}")
            writethrough, no_flush = CACHE_MODES[v]
        elif o == "object":
            from ..common.errors import QemuError
            from ..common.objects import add_object, help_text

            try:
                text = help_text(v or "")
                if text is not None:
                    sys.stdout.write(text)
                    return 0
                add_object(v or "")
            except QemuError as exc:
                return _fail(exc.message)
        elif o == "V":
            sys.stdout.write(
                f"{name} version {QEMU_VERSION} (pyqemu {PYQEMU_VERSION})\n{COPYRIGHT}\n"
            )
            return 0
        elif o == "h":
            sys.stdout.write(USAGE.format(prog=name))
            return 0
        # -m -k -T: accepted; they change nothing observable here
    if len(operands) > 1:
        sys.stdout.write(USAGE.format(prog=name))
        return 1
    if fmt and image_opts:
        return _fail("--image-opts and -f are mutually exclusive")

    from .session import Session

    session = Session(name)
    session.image_opts = image_opts
    if operands:
        from .commands.control import openfile

        if image_opts:
            from ..common.options import OptionError, parse_opts

            try:
                options: dict[str, object] = dict(parse_opts(operands[0]))
            except OptionError as exc:
                return _fail(exc.message)
            for element in operands[0].split(","):
                if element and "=" not in element:
                    sys.stderr.write(
                        f"{name}: warning: short-form boolean option '{element}' deprecated\n"
                        f"Please use {element}=on instead\n"
                    )
            if "driver" not in options and "file" not in options:
                return _fail("can't open: Must specify either driver or file")
            ret = openfile(
                session,
                None,
                read_only=read_only,
                snapshot=snapshot,
                copy_on_read=cor,
                force_share=force_share,
                opts=options,
                writethrough=writethrough,
                no_flush=no_flush,
            )
        else:
            ret = openfile(
                session,
                operands[0],
                read_only=read_only,
                snapshot=snapshot,
                copy_on_read=cor,
                force_share=force_share,
                opts={"driver": fmt} if fmt else None,
                writethrough=writethrough,
                no_flush=no_flush,
            )
        if ret:
            return 1
    try:
        last_error = command_loop(session, commands)
    finally:
        session.drain()
        if session.blk is not None:
            for line in session.blk.close():
                session.error_report(line)
            session.blk = None
    return 1 if last_error < 0 else 0


def command_loop(session: object, commands: list[str]) -> int:
    """``command_loop``: the -c commands, else standard input with prompts."""
    from .report import output_lock
    from .session import Session

    assert isinstance(session, Session)
    last_error = 0
    if commands:
        for line in commands:
            if session.quit:
                break
            ret = session.run_line(line)
            if ret < 0:
                last_error = ret
        return last_error
    prompt = f"{session.prog}> "
    stdin = sys.stdin.buffer
    tty = os.isatty(0)
    while not session.quit:
        with output_lock:
            sys.stdout.write(prompt)
        if session.aio_threads:
            session.poll()  # main_loop_wait while waiting for input
        with output_lock:
            sys.stdout.flush()
        raw = stdin.readline()
        if not raw:
            if tty:
                sys.stdout.write("\n")
            break
        line = raw.decode("utf-8", "surrogateescape")
        if line.endswith("\n"):
            line = line[:-1]
        ret = session.run_line(line)
        if ret < 0:
            last_error = ret
    return last_error


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        code = run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        from ..common.cli_support import silence_stdout

        silence_stdout()
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
