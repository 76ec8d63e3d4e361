"""Fixtures for the linux_user tests: guest programs and the qemu-vs-pyqemu harness.

- ``all_guests``: every program of tests/guests/programs.PROGRAMS built for
  both arches, static and dynamic (Go: static), keyed by (name, arch, link).
- ``qemu_reference(name, arch, link)``: that program's qemu-user run (once per
  session, shared by the tests that check the program and compare pyqemu with it).
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

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.guests.build import ARCHES, GuestBuildError, build_go_guest, build_guest
from tests.guests.programs import PROGRAMS
from tests.guests.run import GuestRun, HarnessError
from tests.guests.run import assert_same_as_qemu as _assert_same_as_qemu
from tests.guests.run import run_guest as _run_guest


def guest_params() -> list[tuple[str, str, str]]:
    """(name, arch, "static"/"dynamic") of every guest build: C both ways, Go static only."""
    return [
        (name, arch, link)
        for name in sorted(PROGRAMS)
        for arch in ARCHES
        for link in (("static",) if PROGRAMS[name].go else ("dynamic", "static"))
    ]


def _build(name: str, arch: str, link: str) -> Path:
    if PROGRAMS[name].go:
        return build_go_guest(name, arch)
    return build_guest(name, arch, static=link == "static")


@pytest.fixture(scope="session")
def all_guests() -> dict[tuple[str, str, str], Path]:
    """Every guest program built (cached), keyed by guest_params(); built in parallel."""
    params = guest_params()
    try:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            paths = list(pool.map(lambda p: _build(*p), params))
    except GuestBuildError as exc:
        pytest.fail(str(exc))
    return dict(zip(params, paths, strict=True))


@pytest.fixture(scope="session")
def qemu_reference(
    all_guests: dict[tuple[str, str, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str, str], GuestRun]:
    """reference(name, arch, link): the program's run under qemu-<arch> with its spec's
    arguments, in a fresh directory (which it must leave empty); run once per session."""
    runs: dict[tuple[str, str, str], GuestRun] = {}

    def reference(name: str, arch: str, link: str) -> GuestRun:
        key = (name, arch, link)
        if key not in runs:
            cwd = tmp_path_factory.mktemp(f"qemu-{name}-{arch}-{link}")
            try:
                result = _run_guest("qemu", arch, all_guests[key], PROGRAMS[name].args, cwd=cwd)
            except HarnessError as exc:
                pytest.fail(str(exc))
            assert list(cwd.iterdir()) == [], f"{name} left files behind under qemu"
            runs[key] = result
        return runs[key]

    return reference


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
