"""Cross-build the guest programs of tests/guests/ for pyqemu-arm and pyqemu-aarch64.

C programs live in ``tests/guests/linux/<name>.c`` and are built with Debian's
cross compilers (``arm-linux-gnueabihf-gcc``, ``aarch64-linux-gnu-gcc``); Go
programs live in ``tests/guests/go/<name>/`` and are built with Debian's Go for
GOARCH=arm (GOARM=7) and arm64, CGO off, without network.

Binaries go to a cache directory (``$PYQEMU_GUEST_CACHE``, else
``~/.cache/pyqemu/guests``), named by a hash of everything that decides their
content: the sources, the flags and the compiler's version. A build writes to a
temporary name and renames it into place, so pytest processes running side by
side may build the same program at the same time.

Run as a script to build everything (or some names) and print the paths::

    python3 -m tests.guests.build [--arch arm|aarch64] [name ...]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

GUESTS_DIR = Path(__file__).resolve().parent
C_DIR = GUESTS_DIR / "linux"
GO_DIR = GUESTS_DIR / "go"

ARCHES = ("arm", "aarch64")

_TRIPLET = {"arm": "arm-linux-gnueabihf", "aarch64": "aarch64-linux-gnu"}
_GOARCH = {"arm": {"GOARCH": "arm", "GOARM": "7"}, "aarch64": {"GOARCH": "arm64"}}

# Flags every C guest gets; -pthread so any of them may start threads.
CFLAGS = ("-O2", "-Wall", "-D_GNU_SOURCE", "-pthread")


class GuestBuildError(Exception):
    """A guest program failed to build (the message holds the compiler's output)."""


def _check_arch(arch: str) -> str:
    if arch not in _TRIPLET:
        raise GuestBuildError(f"unknown guest architecture {arch!r} (known: {', '.join(ARCHES)})")
    return _TRIPLET[arch]


def sysroot(arch: str) -> str:
    """The cross sysroot to give qemu-user/pyqemu as ``-L`` for dynamic guests."""
    return f"/usr/{_check_arch(arch)}"


def compiler(arch: str) -> str:
    """The C cross compiler's command name for ``arch``."""
    return f"{_check_arch(arch)}-gcc"


def cache_dir() -> Path:
    """Where built guests are kept (created on demand)."""
    env = os.environ.get("PYQEMU_GUEST_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "pyqemu" / "guests"
    base.mkdir(parents=True, exist_ok=True)
    return base


@functools.cache
def _tool_version(*cmd: str) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise GuestBuildError(f"cannot run {' '.join(cmd)}: {exc}") from exc
    return out.stdout.strip()


@functools.cache
def supports_static_pie(arch: str) -> bool:
    """Whether the cross toolchain can link ``-static-pie`` (it needs glibc's rcrt1.o)."""
    return Path(sysroot(arch), "lib", "rcrt1.o").exists()


def c_guests() -> list[str]:
    """Names of every C guest program."""
    return sorted(p.stem for p in C_DIR.glob("*.c"))


def go_guests() -> list[str]:
    """Names of every Go guest program."""
    return sorted(p.name for p in GO_DIR.iterdir() if (p / "go.mod").is_file())


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _install(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp_path)`` and rename its output to ``target`` atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        build(Path(tmp))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _run_build(cmd: list[str], what: str, **kw: object) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    except OSError as exc:
        raise GuestBuildError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise GuestBuildError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        )


def build_guest(
    name: str,
    arch: str,
    *,
    static: bool = False,
    pie: bool | None = None,
    extra: tuple[str, ...] = (),
) -> Path:
    """Build ``tests/guests/linux/<name>.c`` for ``arch`` and return the binary's path.

    ``pie``: None gives the toolchain's usual choice (PIE when dynamic, a
    fixed-address executable when static); True forces PIE (``-static-pie`` when
    static, see supports_static_pie); False forces ``-no-pie``. ``extra`` is
    appended to the compiler's command line (e.g. ``("-marm",)``).
    """
    cc = compiler(arch)
    source = C_DIR / f"{name}.c"
    if not source.is_file():
        raise GuestBuildError(f"no guest program {source}")
    flags = list(CFLAGS)
    if static:
        flags.append("-static-pie" if pie else "-static")
        if pie is False:
            flags.append("-no-pie")
    else:
        flags.append("-pie" if pie or pie is None else "-no-pie")
        if pie is not False:
            flags.append("-fPIE")
    flags.extend(extra)
    headers = sorted(C_DIR.glob("*.h"))
    key = _digest(
        [
            source.read_bytes(),
            *(h.read_bytes() for h in headers),
            " ".join(flags).encode(),
            _tool_version(cc, "--version").encode(),
        ]
    )
    variant = ("static" if static else "dyn") + (
        "-pie" if pie else "-nopie" if pie is False else ""
    )
    target = cache_dir() / f"{name}-{arch}-{variant}-{key}"
    if target.exists():
        return target

    def build(out: Path) -> None:
        _run_build(
            [cc, *flags, "-I", str(C_DIR), "-o", str(out), str(source)],
            f"building {name} for {arch}",
        )

    return _install(target, build)


def build_go_guest(name: str, arch: str) -> Path:
    """Build the Go program in ``tests/guests/go/<name>/`` for ``arch`` (static, CGO off)."""
    _check_arch(arch)
    src = GO_DIR / name
    if not (src / "go.mod").is_file():
        raise GuestBuildError(f"no Go guest program {src}")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    goenv = {"GOOS": "linux", "CGO_ENABLED": "0", **_GOARCH[arch]}
    key = _digest(
        [
            *(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes() for p in files),
            repr(sorted(goenv.items())).encode(),
            _tool_version("go", "version").encode(),
        ]
    )
    cache = cache_dir()
    target = cache / f"go-{name}-{arch}-{key}"
    if target.exists():
        return target
    env = dict(os.environ)
    env.update(goenv)
    env.update(
        GOCACHE=str(cache / "go-build"),
        GOPATH=str(cache / "gopath"),
        GOFLAGS="-mod=mod",
        GOPROXY="off",
        GOSUMDB="off",
        GO111MODULE="on",
    )

    def build(out: Path) -> None:
        _run_build(
            ["go", "build", "-trimpath", "-o", str(out), "."],
            f"building Go {name} for {arch}",
            cwd=src,
            env=env,
        )

    return _install(target, build)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build pyqemu's guest programs.")
    parser.add_argument("--arch", choices=ARCHES, action="append", help="default: all")
    parser.add_argument("names", nargs="*", help="programs to build (default: all)")
    args = parser.parse_args(argv)
    names = args.names or c_guests() + go_guests()
    try:
        for arch in args.arch or ARCHES:
            for name in names:
                if name in go_guests():
                    print(build_go_guest(name, arch))
                    continue
                for static in (False, True):
                    print(build_guest(name, arch, static=static))
    except GuestBuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
