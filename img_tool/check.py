"""``pyqemu-img check``: consistency check and repair (qemu-img.c img_check).

Exit codes as qemu-img: 0 clean, 1 check failed, 2 corruptions, 3 leaks only,
63 format without checks.
"""

from __future__ import annotations

import sys
from typing import Any

from .cli import CliError, UsageError, getopt, open_image_cli, parse_output_format, qprint


def run(args: list[str]) -> int:
    opts, operands = getopt(
        args,
        "hf:r:T:qU",
        {
            "help": 0,
            "format": 1,
            "repair": 1,
            "output": 1,
            "object": 1,
            "image-opts": 0,
            "force-share": 0,
        },
    )
    fmt: str | None = None
    output = "human"
    fix = 0
    quiet = False
    image_opts = False
    force_share = False
    from ..common.block import FIX_ERRORS, FIX_LEAKS

    for name, value in opts:
        if name in ("-f", "--format"):
            fmt = value
        elif name in ("-r", "--repair"):
            if value == "leaks":
                fix = FIX_LEAKS
            elif value == "all":
                fix = FIX_LEAKS | FIX_ERRORS
            else:
                raise UsageError(
                    f"Unknown option value for -r (expecting 'leaks' or 'all'): {value}"
                )
        elif name == "--output":
            output = value or ""
        elif name == "-q":
            quiet = True
        elif name in ("-U", "--force-share"):
            force_share = True
        elif name == "--image-opts":
            image_opts = True
        elif name == "--object":
            from .cli import add_object_cli

            add_object_cli(value or "")
        # -T src_cache: accepted, pyqemu has one cache mode
    if len(operands) != 1:
        raise UsageError("Expecting one image file name")
    filename = operands[0]
    output = parse_output_format(output)
    if force_share and fix:
        raise CliError("--force-share/-U is not allowed with -r")
    node = open_image_cli(filename, fmt, image_opts=image_opts, writable=bool(fix), quiet=quiet)
    try:
        return _check(node, filename, fix, output, quiet)
    finally:
        node.close()


def _collect(node: Any, filename: str, fix: int) -> dict[str, Any]:
    from ..common.block import UnsupportedFeature
    from ..common.errors import QemuError

    try:
        result = node.check(fix)
    except UnsupportedFeature:
        raise CliError("This image format does not support checks", 63) from None
    except QemuError as exc:
        # a check that fails part-way (qcow2's CheckFailed) still reports what it saw
        partial = getattr(exc, "result", None)
        for message in getattr(partial, "messages", ()):
            sys.stderr.write(message if message.endswith("\n") else message + "\n")
        raise CliError(f"Check failed: {exc.message}") from None
    for message in result.messages:
        sys.stderr.write(message if message.endswith("\n") else message + "\n")
    check: dict[str, Any] = {
        "filename": filename,
        "format": node.format_name,
        "check-errors": result.check_errors,
    }
    # ImageCheck's optional members are present when non-zero, in QAPI order
    for key, value in (
        ("image-end-offset", result.image_end_offset),
        ("corruptions", result.corruptions),
        ("leaks", result.leaks),
        ("corruptions-fixed", result.corruptions_fixed),
        ("leaks-fixed", result.leaks_fixed),
        ("total-clusters", result.total_clusters),
        ("allocated-clusters", result.allocated_clusters),
        ("fragmented-clusters", result.fragmented_clusters),
        ("compressed-clusters", result.compressed_clusters),
    ):
        if value:
            check[key] = value
    return check


def _check(node: Any, filename: str, fix: int, output: str, quiet: bool) -> int:
    check = _collect(node, filename, fix)
    leaks_fixed = check.get("leaks-fixed", 0)
    corruptions_fixed = check.get("corruptions-fixed", 0)
    if leaks_fixed or corruptions_fixed:
        if output == "human":
            qprint(
                quiet,
                "The following inconsistencies were found and repaired:\n\n"
                f"    {leaks_fixed} leaked clusters\n"
                f"    {corruptions_fixed} corruptions\n\n"
                "Double checking the fixed image now...\n",
            )
        check = _collect(node, filename, 0)
        check.pop("leaks-fixed", None)
        check.pop("corruptions-fixed", None)
        fixed = {}
        if corruptions_fixed:
            fixed["corruptions-fixed"] = corruptions_fixed
        if leaks_fixed:
            fixed["leaks-fixed"] = leaks_fixed
        ordered: dict[str, Any] = {}
        for key in (
            "filename",
            "format",
            "check-errors",
            "image-end-offset",
            "corruptions",
            "leaks",
            "corruptions-fixed",
            "leaks-fixed",
            "total-clusters",
            "allocated-clusters",
            "fragmented-clusters",
            "compressed-clusters",
        ):
            if key in check:
                ordered[key] = check[key]
            elif key in fixed:
                ordered[key] = fixed[key]
        check = ordered
    if output == "json":
        from .qobject import qdict, to_json_pretty

        qprint(quiet, to_json_pretty(qdict(check)) + "\n")
    else:
        qprint(quiet, dump_human_image_check(check))
    if check["check-errors"]:
        raise CliError("Check failed")
    if check.get("corruptions"):
        return 2
    if check.get("leaks"):
        return 3
    return 0


def dump_human_image_check(check: dict[str, Any]) -> str:
    """``dump_human_image_check``."""
    out: list[str] = []
    corruptions = check.get("corruptions", 0)
    leaks = check.get("leaks", 0)
    errors = check.get("check-errors", 0)
    if not (corruptions or leaks or errors):
        out.append("No errors were found on the image.\n")
    else:
        if corruptions:
            out.append(
                f"\n{corruptions} errors were found on the image.\n"
                "Data may be corrupted, or further writes to the image may corrupt it.\n"
            )
        if leaks:
            out.append(
                f"\n{leaks} leaked clusters were found on the image.\n"
                "This means waste of disk space, but no harm to data.\n"
            )
        if errors:
            out.append(f"\n{errors} internal errors have occurred during the check.\n")
    total = check.get("total-clusters", 0)
    allocated = check.get("allocated-clusters", 0)
    if total and allocated:
        out.append(
            "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n"
            % (
                allocated,
                total,
                allocated * 100.0 / total,
                check.get("fragmented-clusters", 0) * 100.0 / allocated,
                check.get("compressed-clusters", 0) * 100.0 / allocated,
            )
        )
    if check.get("image-end-offset"):
        out.append(f"Image end offset: {check['image-end-offset']}\n")
    return "".join(out)
