"""``pyqemu-img bitmap``: persistent dirty bitmap operations (qemu-img.c img_bitmap).

The actions run in command-line order on the image opened read-write without
its backing chain; the first failing action stops the run, the ones before it
stay done (the bitmaps are stored when the image closes), as qemu-img does.
"""

from __future__ import annotations

from typing import Any

from .cli import CliError, cvtnum, getopt, open_image_cli

LONGOPTS = {
    "help": 0,
    "object": 1,
    "image-opts": 0,
    "add": 0,
    "remove": 0,
    "clear": 0,
    "enable": 0,
    "disable": 0,
    "merge": 1,
    "granularity": 1,
    "source-file": 1,
    "source-format": 1,
}


def _bitmap_set(node: Any) -> Any:
    """The node's bitmaps (a qcow2 BitmapSet), or None for formats without them."""
    if getattr(node, "format_name", None) != "qcow2":
        return None
    from ..common.block.qcow2.bitmap import open_bitmaps

    return open_bitmaps(node)


def run(args: list[str]) -> int:
    opts, operands = getopt(args, "b:f:F:g:h", LONGOPTS)
    actions: list[tuple[str, str | None]] = []
    fmt: str | None = None
    src_fmt: str | None = None
    src_filename: str | None = None
    granularity = 0
    image_opts = False
    for name, value in opts:
        if name in ("-b", "--source-file"):
            src_filename = value
        elif name == "-f":
            fmt = value
        elif name in ("-F", "--source-format"):
            src_fmt = value
        elif name in ("-g", "--granularity"):
            assert value is not None
            granularity = cvtnum("granularity", value)
        elif name in ("--add", "--remove", "--clear", "--enable", "--disable"):
            actions.append((name[2:], None))
        elif name == "--merge":
            actions.append(("merge", value))
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
    kinds = {a for a, _ in actions}
    if not actions:
        raise CliError(
            "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge"
        )
    if granularity and "add" not in kinds:
        raise CliError("granularity only supported with --add")
    if src_fmt and not src_filename:
        raise CliError("-F only supported with -b")
    if src_filename and "merge" not in kinds:
        raise CliError("Merge bitmap source file only supported with --merge")
    if len(operands) != 2:
        raise CliError("Expecting filename and bitmap name")
    filename, bitmap = operands

    node = open_image_cli(filename, fmt, image_opts=image_opts, writable=True, backing=False)
    src = None
    try:
        if src_filename is not None:
            src = open_image_cli(src_filename, src_fmt, backing=False)
        _run_actions(node, src, actions, bitmap, granularity)
    finally:
        if src is not None:
            src.close()
        node.close()
    return 0


def _run_actions(
    node: Any, src: Any, actions: list[tuple[str, str | None]], bitmap: str, granularity: int
) -> None:
    from ..common.block.qcow2.bitmap import BitmapError, BitmapSet, node_name
    from ..common.errors import QemuError

    target = _bitmap_set(node)
    source = target
    if src is not None:
        source = BitmapSet.load(src) if getattr(src, "format_name", None) == "qcow2" else None
    for act, arg in actions:
        try:
            if target is None:
                if act == "add":
                    if not bitmap:
                        raise BitmapError("Bitmap name cannot be empty")
                    raise BitmapError(
                        f"Can't store persistent bitmaps to {node_name(node)}: "
                        "Operation not supported"
                    )
                raise BitmapError(f"Dirty bitmap '{bitmap}' not found")
            if act == "add":
                # qemu-img passes the size to a uint32 QMP argument
                g = granularity & 0xFFFFFFFF if granularity else None
                target.add(bitmap, g)
            elif act == "remove":
                target.remove(bitmap)
            elif act == "clear":
                target.clear(bitmap)
            elif act == "enable":
                target.enable(bitmap)
            elif act == "disable":
                target.disable(bitmap)
            else:
                assert arg is not None
                target.usable(bitmap)
                if source is None:
                    raise BitmapError(f"Dirty bitmap '{arg}' not found")
                target.merge(bitmap, source.lookup(arg))
        except QemuError as exc:
            raise CliError(f"Operation {act} on bitmap {bitmap} failed: {exc.message}") from None


# ----------------------------------------------------------------------
# convert --bitmaps / --skip-broken-bitmaps (qemu-img.c convert_check_bitmaps,
# convert_copy_bitmaps); img_tool/convert.py calls these at its phases


def convert_options(opts: set[str]) -> None:
    """After option parsing."""
    if "--skip-broken-bitmaps" in opts and "--bitmaps" not in opts:
        raise CliError("Use of --skip-broken-bitmaps requires --bitmaps")


def convert_sources(opts: set[str], nodes: list[Any]) -> None:
    """After the sources are open: one source, with bitmaps, none broken (unless skipped)."""
    if "--bitmaps" not in opts:
        return
    if len(nodes) > 1:
        raise CliError("Copying bitmaps only possible with single source")
    bitmaps = _source_bitmaps(nodes[0])
    if bitmaps is None:
        raise CliError("Source lacks bitmap support")
    if "--skip-broken-bitmaps" in opts:
        return
    for bm in bitmaps.bitmaps:
        if bm.inconsistent:
            raise CliError(
                f"Cannot copy inconsistent bitmap '{bm.name}'\n"
                "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it"
            )


def convert_target(opts: set[str], node: Any, fmt: str | None) -> None:
    """After the target is created and open: it must store bitmaps."""
    if "--bitmaps" not in opts:
        return
    if getattr(node, "format_name", None) != "qcow2" or node.header.version < 3:
        raise CliError(f"Format driver '{fmt or node.format_name}' does not support bitmaps")


def convert_copy(opts: set[str], src: Any, target: Any) -> None:
    """After the data is copied: each persistent source bitmap, added to the target
    with its granularity and enabled state and its bits merged in."""
    if "--bitmaps" not in opts:
        return
    from ..common.errors import QemuError
    from .cli import warn

    source = _source_bitmaps(src)
    dest = _bitmap_set(target)
    assert source is not None and dest is not None
    for bm in source.bitmaps:
        if bm.inconsistent:
            warn(f"Skipping inconsistent bitmap '{bm.name}'")
            continue
        try:
            dest.add(bm.name, bm.granularity, disabled=not bm.enabled)
        except QemuError as exc:
            raise CliError(f"Operation add on bitmap {bm.name} failed: {exc.message}") from None
        try:
            dest.merge(bm.name, bm)
        except QemuError as exc:
            raise CliError(f"Operation merge on bitmap {bm.name} failed: {exc.message}") from None


def _source_bitmaps(node: Any) -> Any:
    while getattr(node, "format_name", None) != "qcow2":
        inner = getattr(node, "inner", None)
        if inner is None:
            return None
        node = inner
    from ..common.block.qcow2.bitmap import BitmapSet

    if node.bitmaps is not None:
        return node.bitmaps
    cached = getattr(node, "_ro_bitmaps", None)
    if cached is None:
        cached = BitmapSet.load(node)
        node._ro_bitmaps = cached
    return cached
