"""pyqemu-nbd: qemu-nbd 7.2's command line, messages and exit codes.

Imports stay lazy (start-up time); every error reaches the one ``try`` of
:func:`main` and becomes ``prog: message`` with exit code 1.
"""

from __future__ import annotations

import os
import sys
from typing import Any

QEMU_VERSION = "7.2.0"
PYQEMU_VERSION = "0.1.0"

SHORTOPTS = "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L"
LONGOPTS: dict[str, tuple[int, str]] = {
    "help": (0, "h"),
    "version": (0, "V"),
    "bind": (1, "b"),
    "port": (1, "p"),
    "socket": (1, "k"),
    "offset": (1, "o"),
    "read-only": (0, "r"),
    "allocation-depth": (0, "A"),
    "bitmap": (1, "B"),
    "connect": (1, "c"),
    "disconnect": (0, "d"),
    "list": (0, "L"),
    "snapshot": (0, "s"),
    "load-snapshot": (1, "l"),
    "nocache": (0, "n"),
    "cache": (1, "cache"),
    "aio": (1, "aio"),
    "discard": (1, "discard"),
    "detect-zeroes": (1, "detect-zeroes"),
    "shared": (1, "e"),
    "format": (1, "f"),
    "persistent": (0, "t"),
    "verbose": (0, "v"),
    "object": (1, "object"),
    "export-name": (1, "x"),
    "description": (1, "D"),
    "tls-creds": (1, "tls-creds"),
    "tls-authz": (1, "tls-authz"),
    "image-opts": (0, "image-opts"),
    "trace": (1, "T"),
    "fork": (0, "fork"),
    "pid-file": (1, "pid-file"),
    "selinux-label": (1, "selinux-label"),
}


class Fail(Exception):
    """``prog: message``, exit 1; ``usage`` adds the --help hint."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


def prog() -> str:
    return os.path.basename(sys.argv[0]) or "pyqemu-nbd"


def help_text() -> str:
    p = prog()
    return f"""Usage: {p} [OPTIONS] FILE
  or:  {p} -L [OPTIONS]
QEMU Disk Network Block Device Utility

  -h, --help                display this help and exit
  -V, --version             output version information and exit

Connection properties:
  -p, --port=PORT           port to listen on (default `10809')
  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')
  -k, --socket=PATH         path to the unix socket
                            (default '/var/lock/qemu-nbd-DEVICE')
  -e, --shared=NUM          device can be shared by NUM clients (default '1')
  -t, --persistent          don't exit on the last connection
  -v, --verbose             display extra debugging information
  -x, --export-name=NAME    expose export by name (default is empty string)
  -D, --description=TEXT    export a human-readable description

Exposing part of the image:
  -o, --offset=OFFSET       offset into the image
  -A, --allocation-depth    expose the allocation depth
  -B, --bitmap=NAME         expose a persistent dirty bitmap

General purpose options:
  -L, --list                list exports available from another NBD server
  --object type,id=ID,...   define an object such as 'secret' for providing
                            passwords and/or encryption keys
  --tls-creds=ID            use id of an earlier --object to provide TLS
  --tls-authz=ID            use id of an earlier --object to provide
                            authorization
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                            specify tracing options
  --fork                    fork off the server process and exit the parent
                            once the server is running
  --pid-file=PATH           store the server's process ID in the given file
  --selinux-label=LABEL     set SELinux process label on listening socket

Kernel NBD client support:
  -c, --connect=DEV         connect FILE to the local NBD device DEV
  -d, --disconnect          disconnect the specified device

Block device options:
  -f, --format=FORMAT       set image format (raw, qcow2, ...)
  -r, --read-only           export read-only
  -s, --snapshot            use FILE as an external snapshot, create a temporary
                            file with backing_file=FILE, redirect the write to
                            the temporary one
  -l, --load-snapshot=SNAPSHOT_PARAM
                            load an internal snapshot inside FILE and export it
                            as an read-only device, SNAPSHOT_PARAM format is
                            'snapshot.id=[ID],snapshot.name=[NAME]', or
                            '[ID_OR_NAME]'
  -n, --nocache             disable host cache
      --cache=MODE          set cache mode used to access the disk image, the
                            valid options are: 'none', 'writeback' (default),
                            'writethrough', 'directsync' and 'unsafe'
      --aio=MODE            set AIO mode (native, io_uring or threads)
      --discard=MODE        set discard mode (ignore, unmap)
      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)
      --image-opts          treat FILE as a full set of image options

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
"""


def version_text() -> str:
    return (
        f"{prog()} {QEMU_VERSION} (pyqemu {PYQEMU_VERSION})\n"
        "Written by Anthony Liguori.\n\n"
        "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
        "This is free software; see the source for copying conditions.  There is NO\n"
        "warranty; not even for MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.\n"
    )


def _number(text: str, what: str, maximum: int) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise Fail(f"Invalid {what} '{text}'") from None
    if value < 0 or value > maximum:
        raise Fail(f"Invalid {what} '{text}'")
    return value


def parse(argv: list[str]) -> dict[str, Any]:
    from ..io_tool.getopt import getopt

    opts, operands = getopt(prog(), argv, SHORTOPTS, LONGOPTS)
    o: dict[str, Any] = {
        "port": 10809, "bind": None, "socket": None, "shared": 1, "persistent": False,
        "name": "", "description": "", "offset": 0, "read_only": False, "snapshot": False,
        "load_snapshot": None, "format": None, "depth": False, "bitmap": None, "list": False,
        "fork": False, "pid_file": None, "image_opts": False, "verbose": False,
        "cache": "writeback", "discard": "ignore", "detect_zeroes": "off", "port_set": False,
    }  # fmt: skip
    for key, value in opts:
        if key == "?":
            raise Fail(str(value).split(": ", 1)[1], usage=True)
        if key == "h":
            sys.stdout.write(help_text())
            raise SystemExit(0)
        if key == "V":
            sys.stdout.write(version_text())
            raise SystemExit(0)
        if key == "p":
            o["port"] = _number(value or "", "port", 65535)
            o["port_set"] = True
        elif key == "b":
            o["bind"] = value
        elif key == "k":
            o["socket"] = value
            if not value or value[0] != "/" and False:
                raise Fail("socket path must be absolute")
        elif key == "e":
            try:
                o["shared"] = int(value or "", 0)
            except ValueError:
                o["shared"] = -1
            if o["shared"] < 0:
                raise Fail(f"Invalid shared device number '{value}'")
        elif key == "t":
            o["persistent"] = True
        elif key == "x":
            o["name"] = value
            if len((value or "").encode()) > 4096:
                raise Fail("export name too long to send to clients")
        elif key == "D":
            o["description"] = value
            if len((value or "").encode()) > 4096:
                raise Fail("description too long to send to clients")
        elif key == "o":
            o["offset"] = _number(value or "", "offset", (1 << 63) - 1)
        elif key == "r":
            o["read_only"] = True
        elif key == "s":
            o["snapshot"] = True
        elif key == "l":
            o["load_snapshot"] = value
            o["read_only"] = True
        elif key == "n":
            o["cache"] = "none"
        elif key == "cache":
            if value not in ("none", "writeback", "writethrough", "directsync", "unsafe", "off"):
                raise Fail(f"Invalid cache mode '{value}'")
            o["cache"] = value
        elif key == "aio":
            if value not in ("native", "threads", "io_uring"):
                raise Fail(f"invalid aio mode '{value}'")
        elif key == "discard":
            if value in ("ignore", "off"):
                o["discard"] = "ignore"
            elif value in ("unmap", "on"):
                o["discard"] = "unmap"
            else:
                raise Fail("Invalid discard option")
        elif key == "detect-zeroes":
            if value not in ("off", "on", "unmap"):
                raise Fail(f"Parameter 'detect-zeroes' does not accept value '{value}'")
            o["detect_zeroes"] = value
        elif key == "f":
            o["format"] = value
        elif key == "A":
            o["depth"] = True
        elif key == "B":
            o["bitmap"] = value
        elif key == "L":
            o["list"] = True
        elif key == "fork":
            o["fork"] = True
        elif key == "pid-file":
            o["pid_file"] = value
        elif key == "image-opts":
            o["image_opts"] = True
        elif key == "v":
            o["verbose"] = True
        elif key in ("T",):
            pass  # pyqemu has no trace events
        elif key in ("c", "d"):
            raise Fail("the kernel NBD client (-c/-d) is not supported by pyqemu-nbd")
        elif key == "object":
            _add_object(o, value or "")
        elif key == "tls-creds":
            o["tls_creds"] = value
        elif key == "tls-authz":
            o["tls_authz"] = value
        elif key == "selinux-label":
            raise Fail("SELinux support not enabled in this binary")
    if o["list"]:
        if operands:
            raise Fail("List mode is incompatible with a file name")
        if o["offset"] or o["read_only"] or o["depth"] or o["bitmap"] or o["snapshot"]:
            raise Fail("List mode is incompatible with per-device settings")
        if o["shared"] != 1:
            raise Fail("List mode is incompatible with per-device settings")
    elif len(operands) != 1:
        raise Fail("Invalid number of arguments", usage=True)
    if o["socket"] and (o["bind"] or o["port_set"]):
        raise Fail("-p and -b are incompatible with -k")
    if o["persistent"] and o["shared"] == 1 and False:
        pass
    o["file"] = operands[0] if operands else None
    o["tls"] = _server_tls(o)
    return o


def _add_object(o: dict[str, Any], text: str) -> None:
    """--object: TLS credentials and authz here, secrets in common.objects."""
    from ..common.options import parse_opts
    from .tls import Objects, TLSError

    objects = o.setdefault("objects", Objects())
    kind = parse_opts(text, implied_key="qom-type").get("qom-type")
    if kind == "help":
        sys.stdout.write(objects.help_text())
        raise SystemExit(0)
    if kind == "secret":
        try:
            from ..common import objects as common_objects
        except ImportError:
            raise Fail("object type 'secret' is not supported by pyqemu-nbd") from None
        try:
            common_objects.add_object(text)
        except common_objects.ObjectError as exc:
            raise Fail(exc.message) from None
        return
    try:
        objects.add(text)
    except TLSError as exc:
        raise Fail(exc.message) from None


def _server_tls(o: dict[str, Any]) -> Any:
    """--tls-creds/--tls-authz: a ServerTLS, or None (qemu-nbd's checks)."""
    creds_id, authz_id = o.get("tls_creds"), o.get("tls_authz")
    if creds_id is None:
        if authz_id is not None:
            raise Fail("--tls-authz is not permitted without --tls-creds")
        return None
    if o["list"]:
        raise Fail("TLS with --list is not supported by pyqemu-nbd")
    from .tls import Objects, ServerTLS, TLSError

    objects = o.setdefault("objects", Objects())
    try:
        creds = objects.tls_creds(creds_id)
    except TLSError as exc:
        raise Fail(f"Failed to get TLS creds: {exc.message}") from None
    try:
        return ServerTLS(creds, objects, authz_id)
    except TLSError as exc:
        raise Fail(exc.message) from None


def open_export(o: dict[str, Any]) -> Any:
    """Open the image as qemu-nbd does and wrap it in an Export."""
    from ..common.block import BlockError, open_image
    from ..common.errors import QemuError
    from .export import Export

    filename = o["file"]
    writable = not o["read_only"]
    try:
        if o["image_opts"]:
            if o["format"]:
                raise Fail("--image-opts and -f are mutually exclusive")
            from ..common.options import parse_opts

            opts = dict(parse_opts(filename, implied_key="file"))
            node = open_image(None, None, options=opts, read_only=not writable)
        elif o["snapshot"]:
            node = _temp_overlay(filename, o["format"])
        else:
            node = open_image(filename, o["format"], read_only=not writable)
    except (BlockError, QemuError) as exc:
        raise Fail(f"Failed to blk_new_open '{filename}': {exc.message}") from None
    try:
        if o["cache"] == "unsafe":
            node.no_flush = True
        if o["load_snapshot"] is not None:
            _load_snapshot(node, o["load_snapshot"])
        bitmap = None
        if o["bitmap"] is not None:
            bitmap = _find_bitmap(node, o["bitmap"])
        if o["offset"] > node.size:
            raise Fail(f"Offset ({o['offset']}) larger than image size ({node.size})")
        return Export(
            node,
            name=o["name"],
            description=o["description"],
            read_only=o["read_only"],
            offset=o["offset"],
            shared=o["shared"],
            allocation_depth=o["depth"],
            bitmap=bitmap,
            discard=o["discard"] == "unmap",
            detect_zeroes=o["detect_zeroes"],
        )
    except BaseException:
        node.close()
        raise


def _temp_overlay(filename: str, fmt: str | None) -> Any:
    """-s: a temporary qcow2 over FILE, deleted at once (it stays open)."""
    import tempfile

    from ..common.block import create_image, open_image

    base = open_image(filename, fmt, read_only=True)
    size, base_fmt = base.size, base.format_name
    base.close()
    fd, path = tempfile.mkstemp(prefix="vl.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.close(fd)
    try:
        create_image(
            path,
            "qcow2",
            size,
            {"backing_file": os.path.abspath(filename), "backing_fmt": base_fmt},
        )
        return open_image(path, "qcow2", read_only=False)
    finally:
        os.unlink(path)


def _load_snapshot(node: Any, param: str) -> None:
    from ..common.block import BlockError

    load = getattr(node, "snapshot_load_tmp", None)
    if load is None:
        raise Fail("Failed to load snapshot: this image format has no internal snapshots")
    try:
        if param.startswith("snapshot.") or "," in param:
            vals = dict(p.partition("=")[::2] for p in param.split(","))
            load(vals.get("snapshot.id"), vals.get("snapshot.name"))
        else:
            try:
                load(param, None)
            except BlockError:
                load(None, param)
    except BlockError as exc:
        raise Fail(f"Failed to load snapshot: {exc.message}") from None


def _find_bitmap(node: Any, name: str) -> Any:
    from ..common.block import BlockError

    if node.format_name != "qcow2":
        raise Fail(f"Bitmap '{name}' is not found")
    from ..common.block.qcow2.bitmap import open_bitmaps

    try:
        bm = open_bitmaps(node).find(name)
    except BlockError as exc:
        raise Fail(exc.message) from None
    if bm is None:
        raise Fail(f"Bitmap '{name}' is not found")
    if bm.inconsistent:
        raise Fail(f"Bitmap '{name}' is inconsistent and cannot be used")
    if bm.enabled and not node.read_only:
        raise Fail(f"Enabled bitmap '{name}' incompatible with readonly export")
    return bm


def serve(o: dict[str, Any]) -> int:
    import signal
    import socket

    from .transport import Server, tcp_listener, unix_listener

    export = open_export(o)
    sock_path = o["socket"]
    try:
        if sock_path:
            listener = unix_listener(sock_path)
        else:
            listener = tcp_listener(o["bind"] or "0.0.0.0", o["port"])
    except OSError as exc:
        export.node.close()
        where = sock_path or f"{o['bind'] or '0.0.0.0'}:{o['port']}"
        raise Fail(f"Failed to bind socket to {where}: {exc.strerror or exc}") from None
    ready_w = None
    if o["fork"]:
        r, w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(w)
            ok = os.read(r, 1)
            return 0 if ok else 1
        os.close(r)
        os.setsid()
        ready_w = w
    if o["pid_file"]:
        try:
            with open(o["pid_file"], "w") as fh:
                fh.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise Fail(f"Failed to write pid file: {exc.strerror}") from None
    server = Server(
        listener,
        export,
        shared=o["shared"],
        persistent=o["persistent"],
        verbose=o["verbose"],
        tls=o["tls"],
    )

    def stop(signum: int, frame: Any) -> None:
        server.done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    server.serve_forever()
    if ready_w is not None:
        os.write(ready_w, b"1")
        os.close(ready_w)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    while not server.done.wait(0.5):
        pass
    server.shutdown()
    if sock_path:
        try:
            os.unlink(sock_path)
        except OSError:
            pass
    if o["pid_file"]:
        try:
            os.unlink(o["pid_file"])
        except OSError:
            pass
    del socket
    try:
        export.node.close()
    except Exception as exc:
        sys.stderr.write(f"{prog()}: {getattr(exc, 'message', exc)}\n")
    return 0


def run(argv: list[str]) -> int:
    o = parse(argv)
    if o["list"]:
        from .listing import list_exports

        return list_exports(o)
    return serve(o)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    if argv is None:
        argv = sys.argv[1:]
    try:
        code = run(argv)
    except Fail as exc:
        sys.stderr.write(f"{prog()}: {exc.message}\n")
        if exc.usage:
            sys.stderr.write(f"Try `{prog()} --help' for more information.\n")
        code = 1
    except KeyboardInterrupt:
        code = 1
    except Exception as exc:
        from ..common.errors import QemuError

        msg = exc.message if isinstance(exc, QemuError) else f"{type(exc).__name__}: {exc}"
        sys.stderr.write(f"{prog()}: {msg}\n")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
