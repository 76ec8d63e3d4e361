"""break, remove_break, resume, wait_break: blkdebug breakpoints.

qemu-io calls ``bdrv_debug_*`` on the top node, which descend to the first
node whose driver implements them (the blkdebug filter). Here that is the
first node, from the top through ``file`` and then ``backing`` children, with
a ``debug_breakpoint`` method; the methods raise ``BlockError`` whose errno
qemu-io prints. Without such a node every command fails with ENOTSUP, as in
qemu-io on an image without blkdebug.
"""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING, Any

from ..report import out
from . import command
from .io import strerror

if TYPE_CHECKING:
    from ..session import Session


def debug_node(s: Session) -> Any | None:
    """The first node of the graph that handles breakpoints, or None."""
    assert s.blk is not None
    todo: list[Any] = [s.blk.node]
    seen: set[int] = set()
    while todo:
        node = todo.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if callable(getattr(node, "debug_breakpoint", None)):
            return node
        todo.extend((getattr(node, "file", None), getattr(node, "backing", None)))
    return None


def _call(s: Session, failure: str, method: str, *args: str) -> int:
    """Call a breakpoint method: 0, or -EINVAL after ``failure: <error>``."""
    from ...common.errors import QemuError

    node = debug_node(s)
    if node is None:
        error = strerror(errno.ENOTSUP)
    else:
        try:
            getattr(node, method)(*args)
            return 0
        except QemuError as exc:
            error = strerror(exc.errno) if exc.errno else exc.message
    out(f"{failure}: {error}\n")
    return -errno.EINVAL


@command(
    "break",
    argmin=2,
    argmax=2,
    args="event tag",
    oneline="sets a breakpoint on event and tags the stopped request as tag",
)
def break_f(s: Session, argv: list[str]) -> int:
    return _call(s, "Could not set breakpoint", "debug_breakpoint", argv[1], argv[2])


@command("remove_break", argmin=1, argmax=1, args="tag", oneline="remove a breakpoint by tag")
def remove_break_f(s: Session, argv: list[str]) -> int:
    return _call(s, f"Could not remove breakpoint {argv[1]}", "debug_remove_breakpoint", argv[1])


@command("resume", argmin=1, argmax=1, args="tag", oneline="resumes the request tagged as tag")
def resume_f(s: Session, argv: list[str]) -> int:
    return _call(s, "Could not resume request", "debug_resume", argv[1])


@command(
    "wait_break",
    argmin=1,
    argmax=1,
    args="tag",
    oneline="waits for the suspension of a request",
)
def wait_break_f(s: Session, argv: list[str]) -> int:
    # as in qemu-io, this waits for ever on an image without blkdebug
    node = debug_node(s)
    while node is None or not node.debug_is_suspended(argv[1]):
        time.sleep(0.001)
    return 0
