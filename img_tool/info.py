"""``pyqemu-img info``: image information, human or JSON (qemu-img.c img_info,
block/qapi.c bdrv_query_image_info and bdrv_image_info_dump)."""

from __future__ import annotations

import sys
from typing import Any

from .cli import CliError, UsageError, getopt, open_image_cli, parse_output_format

#: ImageInfoSpecificQCow2 fields in QAPI order (the QDict order depends on it)
_QCOW2_ORDER = (
    "compat",
    "data-file",
    "data-file-raw",
    "extended-l2",
    "lazy-refcounts",
    "corrupt",
    "refcount-bits",
    "encrypt",
    "bitmaps",
    "compression-type",
)


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "f:hU",
        {
            "help": 0,
            "format": 1,
            "output": 1,
            "backing-chain": 0,
            "object": 1,
            "image-opts": 0,
            "force-share": 0,
        },
    )
    fmt: str | None = None
    output = "human"
    chain = False
    image_opts = False
    for name, value in opts:
        if name in ("-f", "--format"):
            fmt = value
        elif name == "--output":
            output = value or ""
        elif name == "--backing-chain":
            chain = True
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
    if len(operands) != 1:
        raise UsageError("Expecting one image file name")
    output = parse_output_format(output)
    infos = collect_image_info_list(operands[0], fmt, image_opts, chain)
    if output == "json":
        from .qobject import to_json_pretty

        value: Any = infos if chain else infos[0]
        sys.stdout.write(to_json_pretty(value) + "\n")
    else:
        text = "\n".join(dump_human(info) for info in infos)
        sys.stdout.write(text)
    return 0


def collect_image_info_list(
    filename: str, fmt: str | None, image_opts: bool, chain: bool
) -> list[dict[str, Any]]:
    """Open each image of the chain alone and query it; detect loops by name."""
    seen: set[str] = set()
    infos: list[dict[str, Any]] = []
    current: str | None = filename
    while current:
        if current in seen:
            raise CliError(f"Backing file '{current}' creates an infinite loop.")
        seen.add(current)
        from ..common.block.crypto import metadata_only

        with metadata_only():  # BDRV_O_NO_IO: an encrypted image opens without its key
            node = open_image_cli(current, fmt, image_opts=image_opts, backing=False)
        try:
            info = query_image_info(node)
        finally:
            node.close()
        infos.append(info)
        if not chain:
            break
        current = info.get("full-backing-filename")
        fmt = info.get("backing-filename-format")
        image_opts = False
    return infos


def _get_info_supported(node: Any) -> bool:
    """Whether QEMU's bdrv_get_info succeeds (raw asks its file; nbd has none)."""
    while node.format_name == "raw" and node.file is not None:
        node = node.file
    return getattr(node, "get_info_supported", True)


def query_image_info(node: Any) -> dict[str, Any]:
    """``bdrv_query_image_info`` as an ordered dict (QEMU's QDict order)."""
    from .qobject import qdict, qdict_deep

    info: dict[str, Any] = {"filename": node.filename, "format": node.format_name}
    if _get_info_supported(node):
        info["dirty-flag"] = bool(node.dirty)
    actual = node.allocated_file_size()
    if actual is not None and actual >= 0:
        info["actual-size"] = actual
    info["virtual-size"] = node.size
    cluster_size = node.cluster_size
    if cluster_size:
        info["cluster-size"] = cluster_size
    if getattr(node, "encrypted", False):
        info["encrypted"] = True
    if node.backing_filename:
        info["backing-filename"] = node.backing_filename
        full = node.full_backing_filename or node.backing_filename
        info["full-backing-filename"] = full
        if node.backing_format:
            info["backing-filename-format"] = node.backing_format
    from .snapshot import snapshot_info_list

    snapshots = snapshot_info_list(node)
    if snapshots is not None:
        info["snapshots"] = [qdict(sn) for sn in snapshots]
    specific = node.specific_info()
    if specific is not None:
        if "type" in specific and "data" in specific and len(specific) == 2:
            kind, data = specific["type"], specific["data"]
        else:
            kind, data = node.format_name, specific
        if kind == "qcow2" and isinstance(data, dict):
            ordered = {k: data[k] for k in _QCOW2_ORDER if k in data}
            ordered.update({k: v for k, v in data.items() if k not in ordered})
            data = ordered
        info["format-specific"] = {"type": kind, "data": qdict_deep(data)}
    return qdict(info)


def dump_human(info: dict[str, Any]) -> str:
    """``bdrv_image_info_dump``."""
    from ..common.sizes import size_to_str
    from .qobject import dump_human as dump_qobject

    lines = [
        f"image: {info['filename']}\n",
        f"file format: {info['format']}\n",
        f"virtual size: {size_to_str(info['virtual-size'])} ({info['virtual-size']} bytes)\n",
    ]
    if "actual-size" in info:
        lines.append(f"disk size: {size_to_str(info['actual-size'])}\n")
    else:
        lines.append("disk size: unavailable\n")
    if info.get("encrypted"):
        lines.append("encrypted: yes\n")
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}\n")
    if info.get("dirty-flag"):
        lines.append("dirty flag: yes\n")
    if "backing-filename" in info:
        backing = info["backing-filename"]
        full = info.get("full-backing-filename")
        if full and full != backing:
            lines.append(f"backing file: {backing} (actual path: {full})\n")
        else:
            lines.append(f"backing file: {backing}\n")
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}\n")
    if "snapshots" in info:
        from .snapshot import dump_snapshot_infos

        lines.append(dump_snapshot_infos(info["snapshots"]))
    if "format-specific" in info:
        lines.append("Format specific information:\n")
        lines.append(dump_qobject(info["format-specific"]["data"], 1))
    return "".join(lines)
