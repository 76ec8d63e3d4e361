"""pyqemu-img: entry point, global options and subcommand dispatch.

Start-up time matters (``--version`` and ``info`` finish in well under
100 ms), so this module imports nothing but ``sys``/``os`` and the small
:mod:`.cli`; only the subcommand that runs is imported, and it imports the
block layer itself. Options are parsed by :func:`.cli.getopt` (getopt_long
semantics and qemu-img's error texts) instead of typer; see :mod:`.cli`.

Every error ends up in the one ``try`` of :func:`main`: a ``CliError`` or a
library ``QemuError`` becomes ``prog: message`` and qemu-img's exit code.
"""

from __future__ import annotations

import importlib
import sys

from .cli import CliError, UsageError, getopt, prog

QEMU_VERSION = "7.2.0"
PYQEMU_VERSION = "0.1.0"
COPYRIGHT = "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers"

#: subcommand -> module (relative to this package); each has ``run(args) -> int``
COMMANDS = {
    "amend": "amend",
    "bench": "bench",
    "bitmap": "bitmap",
    "check": "check",
    "commit": "commit",
    "compare": "compare",
    "convert": "convert",
    "create": "create",
    "dd": "dd",
    "info": "info",
    "map": "map",
    "measure": "measure",
    "rebase": "rebase",
    "resize": "resize",
    "snapshot": "snapshot",
}
#: qemu-img subcommands that pyqemu-img does not implement (yet)
NOT_IMPLEMENTED: tuple[str, ...] = ()


def version_text() -> str:
    return f"{prog()} version {QEMU_VERSION} (pyqemu {PYQEMU_VERSION})\n{COPYRIGHT}\n"


HELP_BODY = """\
usage: {prog} [standard options] command [command options]
QEMU disk image utility

    '-h', '--help'       display this help and exit
    '-V', '--version'    output version information and exit
    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]
                         specify tracing options

Command syntax:
  amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename
  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename
  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap
  check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename
  commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename
  compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2
  convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename
  create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]
  dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output
  info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename
  map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename
  measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]
  snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename
  rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename
  resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size

Command parameters:
  'filename' is a disk image filename
  'objectdef' is a QEMU user creatable object definition. See the qemu(1)
    manual page for a description of the object properties. The most common
    object type is a 'secret', which is used to supply passwords and/or
    encryption keys.
  'fmt' is the disk image format. It is guessed automatically in most cases
  'cache' is the cache mode used to write the output disk image, the valid
    options are: 'none', 'writeback' (default, except for convert), 'writethrough',
    'directsync' and 'unsafe' (default for convert)
  'src_cache' is the cache mode used to read input disk images, the valid
    options are the same as for the 'cache' option
  'size' is the disk image size in bytes. Optional suffixes
    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, 1024M),
    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  are
    supported. 'b' is ignored.
  'output_filename' is the destination disk image filename
  'output_fmt' is the destination format
  'options' is a comma separated list of format specific options in a
    name=value format. Use -o help for an overview of the options supported by
    the used format
  'snapshot_param' is param used for internal snapshot, format
    is 'snapshot.id=[ID],snapshot.name=[NAME]', or
    '[ID_OR_NAME]'
  '-c' indicates that target image must be compressed (qcow format only)
  '-u' allows unsafe backing chains. For rebasing, it is assumed that old and
       new backing file match exactly. The image doesn't need a working
       backing file before rebasing in this case (useful for renaming the
       backing file). For image creation, allow creating without attempting
       to open the backing file.
  '-h' with or without a command shows this help and lists the supported formats
  '-p' show progress of command (only certain commands)
  '-q' use Quiet mode - do not print any output (except errors)
  '-S' indicates the consecutive number of bytes (defaults to 4k) that must
       contain only zeros for {prog} to create a sparse image during
       conversion. If the number of bytes is 0, the source will not be scanned for
       unallocated or zero sectors, and the destination image will always be
       fully allocated
  '--output' takes the format in which the output must be done (human or json)
  '-n' skips the target volume creation (useful if the volume is created
       prior to running {prog})

Parameters to bitmap subcommand:
  'bitmap' is the name of the bitmap to manipulate, through one or more
       actions from '--add', '--remove', '--clear', '--enable', '--disable',
       or '--merge source'
  '-g granularity' sets the granularity for '--add' actions
  '-b source' and '-F src_fmt' tell '--merge' actions to find the source
       bitmaps from an alternative file

Parameters to check subcommand:
  '-r' tries to repair any inconsistencies that are found during the check.
       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes all
       kinds of errors, with a higher risk of choosing the wrong fix or
       hiding corruption that has already occurred.

Parameters to convert subcommand:
  '--bitmaps' copies all top-level persistent bitmaps to destination
  '-m' specifies how many coroutines work in parallel during the convert
       process (defaults to 8)
  '-W' allow to write to the target out of order rather than sequential

Parameters to snapshot subcommand:
  'snapshot' is the name of the snapshot to create, apply or delete
  '-a' applies a snapshot (revert disk to saved state)
  '-c' creates a snapshot
  '-d' deletes a snapshot
  '-l' lists all snapshots in the given image

Parameters to compare subcommand:
  '-f' first image format
  '-F' second image format
  '-s' run in Strict mode - fail on different image size or sector allocation

Parameters to dd subcommand:
  'bs=BYTES' read and write up to BYTES bytes at a time (default: 512)
  'count=N' copy only N input blocks
  'if=FILE' read from FILE
  'of=FILE' write to FILE
  'skip=N' skip N bs-sized blocks at the start of input

Supported formats: {formats}

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
"""


def help_text() -> str:
    from ..common.block.registry import format_names

    return version_text() + HELP_BODY.format(prog=prog(), formats=" ".join(format_names()))


def print_help() -> int:
    sys.stdout.write(help_text())
    return 0


def dispatch(argv: list[str]) -> int:
    """Parse the global options and run the subcommand; return the exit code."""
    # global options stop at the first operand (getopt "+:hVT:")
    opts, rest = getopt(argv, "hVT:", {"help": 0, "version": 0, "trace": 1}, stop_at_operand=True)
    for name, _value in opts:
        if name in ("-h", "--help"):
            return print_help()
        if name in ("-V", "--version"):
            sys.stdout.write(version_text())
            return 0
        # -T/--trace: accepted and ignored, pyqemu has no trace events
    if not rest:
        raise UsageError("Not enough arguments")
    command, args = rest[0], rest[1:]
    module_name = COMMANDS.get(command)
    if module_name is None:
        if command in NOT_IMPLEMENTED:
            raise CliError(f"Command '{command}' is not supported yet by pyqemu-img")
        raise UsageError(f"Command not found: {command}")
    if "-h" in args or "--help" in args:
        # every subcommand prints the global help for -h/--help
        return print_help()
    module = importlib.import_module(f"{__package__}.{module_name}")
    return int(module.run(args))


def _report_exit(exc: CliError) -> int:
    from .cli import report

    report(exc.message, prefix_lines=exc.prefix_lines, final_newline=exc.final_newline)
    if isinstance(exc, UsageError):
        sys.stderr.write(f"Try '{prog()} --help' for more information\n")
    return exc.code


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run and exit with qemu-img's exit code."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        code = dispatch(argv)
        sys.stdout.flush()
    except CliError as exc:
        code = _report_exit(exc)
    except BrokenPipeError:
        from ..common.cli_support import silence_stdout

        silence_stdout()
        code = 1
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code = 130
    except Exception as exc:  # library errors, and anything unforeseen
        from ..common.errors import QemuError

        if isinstance(exc, QemuError):
            code = _report_exit(CliError(exc.message))
        elif isinstance(exc, OSError):
            code = _report_exit(CliError(exc.strerror or str(exc)))
        elif isinstance(exc, MemoryError):
            code = _report_exit(CliError("Out of memory"))
        else:
            code = _report_exit(CliError(f"internal error: {type(exc).__name__}: {exc}"))
    sys.exit(code)


if __name__ == "__main__":
    main()
