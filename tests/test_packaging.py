"""The wheel installs pyqemu as ``pyqemu.<folder>`` and nothing else.

Builds a wheel from a copy of the source tree, installs it into a fresh
virtualenv (dependencies from the package index, no host site-packages), and
checks from another folder that the console scripts run, that
``pyqemu.common.block`` imports, and that no bare ``common``, ``img_tool`` or
``tests`` leaked into site-packages. The wheel's file list must hold every
package folder of the tree, so a new subfolder can never be left out.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: left out of the copy the wheel is built from (build output, caches, images)
IGNORED = [
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".venv",
    "venv",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".benchmarks",
]
MAX_COPIED_FILE = 16 << 20  # skip stray disk images in a developer's tree


def setup_folders() -> list[str]:
    """The ``FOLDERS`` list of setup.py, read without running setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "FOLDERS" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no FOLDERS list")


def console_scripts() -> list[str]:
    """The names in pyproject's ``[project.scripts]``."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return sorted(tomllib.load(f)["project"].get("scripts", {}))


def package_dirs(root: Path, folder: str) -> list[Path]:
    """Every folder under ``root/folder`` (itself included) that has an ``__init__.py``."""
    return sorted(
        Path(dirpath).relative_to(root)
        for dirpath, _, filenames in os.walk(root / folder)
        if "__init__.py" in filenames and "__pycache__" not in Path(dirpath).parts
    )


def python_files(root: Path, folder: str) -> list[Path]:
    """Every ``.py`` file under ``root/folder``."""
    return sorted(
        p.relative_to(root)
        for p in (root / folder).rglob("*.py")
        if "__pycache__" not in p.relative_to(root).parts
    )


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = {n for n in names for pattern in IGNORED if fnmatch.fnmatch(n, pattern)}
    for n in names:
        path = os.path.join(folder, n)
        if os.path.isfile(path) and os.path.getsize(path) > MAX_COPIED_FILE:
            skipped.add(n)
    return skipped


def clean_env() -> dict[str, str]:
    """The environment without anything that would put the source tree on sys.path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def check(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; fail the test with its output if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@dataclass(frozen=True)
class Installed:
    src: Path  # the copy of the tree the wheel was built from
    wheel: Path
    names: list[str]  # the wheel's file list
    venv: Path
    elsewhere: Path  # an empty folder to run from
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, capture_output=True, text=True, cwd=self.elsewhere, env=self.env, timeout=300
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel from a copy of the tree and install it into a fresh venv."""
    base = tmp_path_factory.mktemp("packaging")
    src, dist, venv, elsewhere = (base / n for n in ("src", "dist", "venv", "elsewhere"))
    shutil.copytree(REPO, src, ignore=_ignore, symlinks=True)
    elsewhere.mkdir()
    env = clean_env()

    check(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)],
        cwd=base,
        env=env,
        timeout=600,
    )
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()

    check([sys.executable, "-m", "venv", str(venv)], cwd=base, env=env, timeout=300)
    check(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        cwd=elsewhere,
        env=env,
        timeout=600,
    )
    return Installed(src, wheel, names, venv, elsewhere, env)


def test_setup_lists_every_top_level_package() -> None:
    """A new top-level folder with an ``__init__.py`` must be in setup.py's FOLDERS."""
    top = {
        p.name
        for p in REPO.iterdir()
        if p.is_dir() and (p / "__init__.py").is_file() and p.name != "tests"
    }
    assert top == set(setup_folders())


def test_every_python_folder_is_a_package() -> None:
    """A folder holding ``.py`` files without ``__init__.py`` would be left out of the wheel."""
    for folder in setup_folders():
        for py in python_files(REPO, folder):
            assert (REPO / py.parent / "__init__.py").is_file(), f"{py.parent} has no __init__.py"


def test_wheel_holds_every_package(installed: Installed) -> None:
    names = set(installed.names)
    for folder in setup_folders():
        dirs = package_dirs(installed.src, folder)
        assert Path(folder) in dirs, f"{folder}/ has no __init__.py"
        for d in dirs:
            assert f"pyqemu/{d.as_posix()}/__init__.py" in names, f"{d} missing from the wheel"
        for py in python_files(installed.src, folder):
            assert f"pyqemu/{py.as_posix()}" in names, f"{py} missing from the wheel"


def test_wheel_has_nothing_else_top_level(installed: Installed) -> None:
    top = {name.split("/")[0] for name in installed.names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and next(iter(dist_info)).startswith("pyqemu-"), top
    assert top - dist_info == {"pyqemu"}


def test_library_imports_from_the_venv(installed: Installed) -> None:
    proc = installed.run(
        [
            str(installed.python),
            "-c",
            "import pyqemu.common.block as b; print(b.__file__); print(b.open_image.__name__)",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    where, name = proc.stdout.split()
    assert Path(where).resolve().is_relative_to(installed.venv.resolve()), where
    assert name == "open_image"


@pytest.mark.parametrize("name", ["common", "img_tool", "tests", "system", "io_tool", "linux_user"])
def test_bare_folder_names_do_not_import(installed: Installed, name: str) -> None:
    proc = installed.run([str(installed.python), "-c", f"import {name}"])
    assert proc.returncode != 0, f"'import {name}' worked in the venv: it leaked top-level"
    assert "ModuleNotFoundError" in proc.stderr, proc.stderr


def test_console_scripts_are_installed(installed: Installed) -> None:
    scripts = console_scripts()
    assert "pyqemu-img" in scripts
    for script in scripts:
        assert (installed.venv / "bin" / script).is_file(), f"{script} not installed"


def test_pyqemu_img_version_runs(installed: Installed) -> None:
    proc = installed.run([str(installed.venv / "bin" / "pyqemu-img"), "--version"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "version" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_demo_runs_on_the_wheel_install(installed: Installed) -> None:
    """The README's first Quick start command: the main job, on an installed pyqemu."""
    tmp = installed.elsewhere.parent / "demo-tmp"
    tmp.mkdir(exist_ok=True)
    path = f"{installed.venv / 'bin'}{os.pathsep}{installed.env['PATH']}"
    env = dict(installed.env, PATH=path, TMPDIR=str(tmp))
    proc = subprocess.run(
        ["bash", str(installed.src / "examples" / "demo.sh")],
        capture_output=True,
        text=True,
        cwd=installed.elsewhere,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo: OK" in proc.stdout
    assert "No errors were found on the image." in proc.stdout
    assert "file format: qcow2" in proc.stdout
    assert not any(tmp.iterdir()), "demo left files behind"
