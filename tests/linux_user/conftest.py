"""Fixtures for the linux_user tests: guest programs and the qemu-vs-pyqemu harness.

- ``guest(name, arch, static=False, pie=None)`` builds (cached) a C guest of
  tests/guests/linux/ and returns its path; ``go_guest(name, arch)`` a Go one.
- ``run_guest(tool, arch, binary, args=(), ...)`` runs it under "qemu"
  (qemu-arm/qemu-aarch64) or "pyqemu" (pyqemu-arm/pyqemu-aarch64).
- ``assert_same_as_qemu(arch, binary, args=(), ...)`` runs both and asserts equal
  standard output and exit status (stderr too with compare_stderr=True).

The functions live in tests/guests/ (build.py, run.py) so scripts and
benchmarks can use them too. A missing peer tool or cross compiler fails the
test, never skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.guests.build import GuestBuildError, build_go_guest, build_guest
from tests.guests.run import GuestRun, HarnessError
from tests.guests.run import assert_same_as_qemu as _assert_same_as_qemu
from tests.guests.run import run_guest as _run_guest


@pytest.fixture(scope="session")
def guest() -> Callable[..., Path]:
    """Factory: build a C guest program (cached across runs) and return its path."""

    def make(
        name: str,
        arch: str,
        *,
        static: bool = False,
        pie: bool | None = None,
        extra: tuple[str, ...] = (),
    ) -> Path:
        try:
            return build_guest(name, arch, static=static, pie=pie, extra=extra)
        except GuestBuildError as exc:
            pytest.fail(str(exc))

    return make


@pytest.fixture(scope="session")
def go_guest() -> Callable[[str, str], Path]:
    """Factory: build a Go guest program (cached across runs) and return its path."""

    def make(name: str, arch: str) -> Path:
        try:
            return build_go_guest(name, arch)
        except GuestBuildError as exc:
            pytest.fail(str(exc))

    return make


@pytest.fixture(scope="session")
def run_guest() -> Callable[..., GuestRun]:
    """run_guest(tool, arch, binary, args=(), *, env, stdin, timeout, cwd, static, options)."""

    def run(*args: object, **kw: object) -> GuestRun:
        try:
            return _run_guest(*args, **kw)  # type: ignore[arg-type]
        except HarnessError as exc:
            pytest.fail(str(exc))

    return run


@pytest.fixture(scope="session")
def assert_same_as_qemu() -> Callable[..., tuple[GuestRun, GuestRun]]:
    """assert_same_as_qemu(arch, binary, args=(), *, compare_stderr=False, ...) -> (qemu, pyqemu)."""

    def check(*args: object, **kw: object) -> tuple[GuestRun, GuestRun]:
        try:
            return _assert_same_as_qemu(*args, **kw)  # type: ignore[arg-type]
        except HarnessError as exc:
            pytest.fail(str(exc))

    return check
