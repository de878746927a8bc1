"""Build glue that pyproject.toml cannot express: the cffi extension and wheel hygiene.

The repository root *is* the package `raftlite`, so setuptools would otherwise ship every
top-level .py file (this one included) as `raftlite/<name>.py`. The build_py override
below keeps build scripts out of the wheel.
"""

from setuptools import setup
from setuptools.command.build_py import build_py

# Top-level files that are build tooling, not part of the installed package.
_NOT_SHIPPED = {("raftlite", "setup"), ("raftlite.io.native", "_aio_build")}


class BuildPyWithoutBuildScripts(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) not in _NOT_SHIPPED]


setup(
    cffi_modules=["io/native/_aio_build.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithoutBuildScripts},
)
