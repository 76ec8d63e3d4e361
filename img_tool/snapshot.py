"""``pyqemu-img snapshot``: list, create, apply and delete internal snapshots
(qemu-img.c img_snapshot, block/snapshot.c, block/qapi.c bdrv_snapshot_dump)."""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import Any

from .cli import CliError, UsageError, getopt, open_image_cli

LIST, APPLY, CREATE, DELETE = "-l", "-a", "-c", "-d"
#: QEMUSnapshotInfo.name is a char[256]
SNAPSHOT_NAME_MAX = 255


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "la:c:d:hqU",
        {"help": 0, "object": 1, "image-opts": 0, "force-share": 0},
    )
    action: str | None = None
    name = ""
    fmt: str | None = None
    image_opts = False
    force_share = False
    for opt, value in opts:
        if opt in (LIST, APPLY, CREATE, DELETE):
            if action is not None:
                raise UsageError("Cannot mix '-l', '-a', '-c', '-d'")
            action = opt
            name = value or ""
        elif opt in ("-U", "--force-share"):
            force_share = True
        elif opt == "--image-opts":
            image_opts = True
        elif opt == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
    if len(operands) != 1:
        raise UsageError("Expecting one image file name")
    filename = operands[0]
    writable = action != LIST
    if force_share and writable:
        raise CliError(
            f"Could not open '{filename}': force-share=on can only be used with read-only images"
        )
    node = open_image_cli(filename, fmt, image_opts=image_opts, writable=writable)
    try:
        if action == LIST:
            sys.stdout.write(dump_snapshots(node))
        elif action == CREATE:
            _create(node, name)
        elif action == APPLY:
            _apply(node, name)
        elif action == DELETE:
            _delete(node, name)
    finally:
        node.close()
    return 0


def _errno_text(code: int | None) -> str:
    code = code or errno.EIO
    return f"-{code} ({os.strerror(code)})"


def _create(node: Any, name: str) -> None:
    from ..common.block import BlockError

    now = time.time_ns()
    create = getattr(node, "snapshot_create", None)
    try:
        if create is None:
            raise BlockError("Operation not supported", errno.ENOTSUP)
        create(
            name.encode()[:SNAPSHOT_NAME_MAX].decode("utf-8", "ignore"),
            date_sec=now // 1_000_000_000,
            date_nsec=(now // 1000 % 1_000_000) * 1000,
        )
    except BlockError as exc:
        raise CliError(f"Could not create snapshot '{name}': {_errno_text(exc.errno)}") from None


def _apply(node: Any, name: str) -> None:
    from ..common.block import BlockError

    goto = getattr(node, "snapshot_goto", None)
    if goto is None:
        raise CliError(
            f"Could not apply snapshot '{name}': Block driver does not support snapshots"
        )
    try:
        goto(name)
    except BlockError as exc:
        reason = os.strerror(exc.errno) if exc.errno else exc.message
        raise CliError(
            f"Could not apply snapshot '{name}': Failed to load snapshot: {reason}"
        ) from None


def _delete(node: Any, name: str) -> None:
    from ..common.block import BlockError

    sn = find_snapshot(node, name)
    if sn is None:
        raise CliError(f"Could not delete snapshot '{name}': snapshot not found")
    try:
        node.snapshot_delete(sn.id_str, sn.name)
    except BlockError as exc:
        raise CliError(f"Could not delete snapshot '{name}': {exc.message}") from None


def snapshot_list(node: Any) -> list[Any]:
    """The node's snapshots; none for a driver without snapshot support."""
    lister = getattr(node, "snapshot_list", None)
    return lister() if lister is not None else []


def find_snapshot(node: Any, key: str) -> Any:
    """The first snapshot named ``key`` (bdrv_snapshot_find: names only, not IDs)."""
    for sn in snapshot_list(node):
        if sn.name == key:
            return sn
    return None


# ----------------------------------------------------------------------
# text, shared with ``info``


def dump_header() -> str:
    return "%-10s%-17s%8s%20s%13s%11s" % ("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")


def dump_entry(
    id_str: str, name: str, vm_state_size: int, date_sec: int, vm_clock_nsec: int, icount: int
) -> str:
    """One line of ``bdrv_snapshot_dump`` (no newline)."""
    from ..common.sizes import size_to_str

    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(date_sec))
    secs = vm_clock_nsec // 1_000_000_000
    clock = "%02d:%02d:%02d.%03d" % (
        secs // 3600,
        (secs // 60) % 60,
        secs % 60,
        (vm_clock_nsec // 1_000_000) % 1000,
    )
    icount_text = "" if icount == -1 else str(icount)
    return "%-9s %-16s %8s%20s%13s%11s" % (
        id_str,
        name,
        size_to_str(vm_state_size),
        date,
        clock,
        icount_text,
    )


def dump_snapshots(node: Any) -> str:
    """``qemu-img snapshot -l`` (dump_snapshots): nothing when there are none."""
    snaps = snapshot_list(node)
    if not snaps:
        return ""
    lines = ["Snapshot list:\n", dump_header() + "\n"]
    for sn in snaps:
        lines.append(
            dump_entry(
                sn.id_str, sn.name, sn.vm_state_size, sn.date_sec, sn.vm_clock_nsec, sn.icount
            )
            + "\n"
        )
    return "".join(lines)


def snapshot_info_list(node: Any) -> list[dict[str, Any]] | None:
    """``bdrv_query_snapshot_info_list`` as SnapshotInfo dicts (QAPI field order),
    or None when the image has none."""
    snaps = snapshot_list(node)
    if not snaps:
        return None
    out: list[dict[str, Any]] = []
    for sn in snaps:
        info: dict[str, Any] = {
            "id": sn.id_str,
            "name": sn.name,
            "vm-state-size": sn.vm_state_size,
            "date-sec": sn.date_sec,
            "date-nsec": sn.date_nsec,
            "vm-clock-sec": sn.vm_clock_nsec // 1_000_000_000,
            "vm-clock-nsec": sn.vm_clock_nsec % 1_000_000_000,
        }
        if sn.icount != -1:
            info["icount"] = sn.icount
        out.append(info)
    return out


def dump_snapshot_infos(infos: list[dict[str, Any]]) -> str:
    """The "Snapshot list:" block of ``bdrv_image_info_dump``."""
    lines = ["Snapshot list:\n", dump_header() + "\n"]
    for info in infos:
        lines.append(
            dump_entry(
                info["id"],
                info["name"],
                info["vm-state-size"],
                info["date-sec"],
                info["vm-clock-sec"] * 1_000_000_000 + info["vm-clock-nsec"],
                info.get("icount", -1),
            )
            + "\n"
        )
    return "".join(lines)


# ----------------------------------------------------------------------
# convert -l: read from a snapshot

SNAPSHOT_OPT_BASE = "snapshot."


def parse_snapshot_param(text: str) -> tuple[str | None, str | None, bool]:
    """``convert -l``: (id, name, by_id_or_name). ``snapshot.id=..,snapshot.name=..``
    names the keys; anything else is one ID or name."""
    if not text.startswith(SNAPSHOT_OPT_BASE):
        return text, None, True
    values: dict[str, str] = {}
    for part in text.replace(",,", "\0").split(","):
        key, _, value = part.partition("=")
        key = key.replace("\0", ",")
        if key not in ("snapshot.id", "snapshot.name"):
            raise CliError(
                f"Invalid parameter '{key}'\n{_prog()}: Failed in parsing snapshot param '{text}'"
            )
        values[key] = value.replace("\0", ",")
    return values.get("snapshot.id"), values.get("snapshot.name"), False


def _prog() -> str:
    from .cli import prog

    return prog()


def load_snapshot_tmp(nodes: list[Any], param: tuple[str | None, str | None, bool]) -> None:
    """Make the first source show the snapshot (bdrv_snapshot_load_tmp and
    bdrv_snapshot_load_tmp_by_id_or_name), or raise qemu-img's error."""
    from ..common.block import BlockError

    id_str, name, by_id_or_name = param
    if by_id_or_name and len(nodes) > 1:
        raise CliError("No support for concatenating multiple snapshot")
    node = nodes[0]
    load = getattr(node, "snapshot_load_tmp", None)
    try:
        if id_str is None and name is None:
            raise BlockError("snapshot_id and snapshot_name are both NULL", errno.EINVAL)
        if load is None:
            raise BlockError(
                f"Block format '{node.format_name}' used by device '' does not support "
                "temporarily loading internal snapshots",
                errno.ENOTSUP,
            )
        if by_id_or_name:
            try:
                load(id_str, None)
            except BlockError as exc:
                if exc.errno not in (errno.ENOENT, errno.EINVAL):
                    raise
                load(None, id_str)
        else:
            load(id_str, name)
    except BlockError as exc:
        raise CliError(f"Failed to load snapshot: {exc.message}") from None
