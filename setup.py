"""Build script: install each top-level folder as ``pyqemu.<folder>``.

Subpackages are found by walking each folder, so a new subfolder with an
``__init__.py`` can never be left out of the wheel.
"""

from setuptools import find_packages, setup

FOLDERS = ["common", "img_tool", "io_tool", "nbd_server", "linux_user", "bsd_user", "system"]

packages: list[str] = []
package_dir: dict[str, str] = {}
for folder in FOLDERS:
    for sub in [""] + [f".{p}" for p in find_packages(folder)]:
        name = f"pyqemu.{folder}{sub}"
        packages.append(name)
        package_dir[name] = folder + sub.replace(".", "/")

setup(packages=packages, package_dir=package_dir)
