"""What the side-by-side benchmarks share: sizes, tools, inputs, timing."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time


def parse_size(text: str) -> int:
    """``512M``, ``1.5G``, ``4096``: bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def find_tool(name: str) -> str | None:
    """The entry point ``name`` of this interpreter, else the one on PATH.

    A version manager's shim on PATH (pyenv: a bash script running ``pyenv
    exec``) costs ~0.1-0.2 s per start on a loaded host; that is the
    environment, not the tool, so the script next to ``sys.executable``
    is timed when there is one.
    """
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def precompile(*subs: str) -> None:
    """Write the ``.pyc`` files of the package folders ``subs``, as a wheel
    install does.

    With ``PYTHONDONTWRITEBYTECODE`` set (as on the dev hosts) an editable
    checkout is recompiled from source on every start (~30 ms for the qcow2
    driver alone), which no installed copy pays.
    """
    import compileall

    import pyqemu.common

    root = os.path.dirname(os.path.dirname(os.path.abspath(pyqemu.common.__file__)))
    for sub in subs:
        compileall.compile_dir(os.path.join(root, sub), quiet=1)


def img_tools() -> tuple[str, str]:
    """Paths of qemu-img and pyqemu-img (exits if either is missing), with
    pyqemu's modules precompiled as a wheel install would have them."""
    qemu_img = shutil.which("qemu-img")
    pyqemu_img = find_tool("pyqemu-img")
    if not qemu_img or not pyqemu_img:
        sys.exit("need both qemu-img and pyqemu-img on PATH")
    precompile("common", "img_tool")
    return qemu_img, pyqemu_img


def make_mixed_raw(path: str, size: int, seed: int) -> None:
    """Random data runs, written zero runs and holes, in 64 KiB..4 MiB pieces."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        offset = 0
        while offset < size:
            length = min(size - offset, rng.choice([64, 256, 1024, 4096]) * 1024)
            kind = rng.random()
            if kind < 0.5:
                f.seek(offset)
                f.write(rng.randbytes(length))
            elif kind < 0.7:
                f.seek(offset)
                f.write(bytes(length))
            offset += length


def timed(cmd: list[str], cwd: str | None = None, bad_output: str | None = None) -> float:
    """Wall seconds of ``cmd``; exit with its output if it fails (or prints
    ``bad_output``)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0 or (bad_output is not None and bad_output in proc.stdout):
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}{proc.stdout}")
    return elapsed


def measure(cmd: list[str]) -> tuple[float, int, float]:
    """Time ``cmd`` in a fresh Python wrapper so peak RSS and CPU time are its own.

    Returns (wall seconds, peak RSS KiB, CPU seconds user+system). On a shared
    host the CPU time is the steadier figure: wall time includes waiting for
    a CPU that other jobs hold.
    """
    wrapper = (
        "import resource,subprocess,sys,time;"
        "t=time.perf_counter();r=subprocess.run(sys.argv[1:]);e=time.perf_counter()-t;"
        "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(e, u.ru_maxrss, u.ru_utime+u.ru_stime);sys.exit(r.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}{proc.stdout}")
    elapsed, rss, cpu = proc.stdout.split()[-3:]
    return float(elapsed), int(rss), float(cpu)
