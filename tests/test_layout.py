"""The package layout of docs/architecture.md §1 and the purity rule of §2."""

import ast
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUBPACKAGES = ["core", "actors", "sim", "io", "io.native", "jepsen_like", "client", "commands"]
FORBIDDEN_EVERYWHERE = {"time", "random", "socket", "asyncio", "simpy", "threading", "subprocess"}
# In actors/, only the SQLite state machine's one named file module may touch `os`.
ACTORS_MODULES_ALLOWED_OS: set[str] = {"database_files"}


def _imported_top_level_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", ["core", "actors"])
def test_deterministic_layers_import_no_io_clock_or_randomness(folder):
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        imported = _imported_top_level_modules(path)
        forbidden = set(FORBIDDEN_EVERYWHERE)
        if folder == "core" or path.stem not in ACTORS_MODULES_ALLOWED_OS:
            forbidden.add("os")
        bad = sorted(imported & forbidden)
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(bad)}")
    assert offenders == []


def test_import_walker_catches_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os.path\nfrom time import monotonic\nimport raftlite.core\n")
    assert _imported_top_level_modules(sample) == {"os", "time", "raftlite"}


def test_every_subpackage_imports_by_its_full_name():
    code = "import " + ", ".join(f"raftlite.{name}" for name in SUBPACKAGES) + "; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_bare_folder_import_fails_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, "-c", "import core"], capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode != 0
    assert "import this package as 'raftlite.core', not 'core'" in result.stderr


def test_python_dash_m_raftlite_shows_help():
    result = subprocess.run(
        [sys.executable, "-m", "raftlite", "--help"], capture_output=True, text=True, cwd="/", timeout=60,
    )
    assert result.returncode == 0
    assert "sim" in result.stdout


@pytest.mark.timeout(300)
def test_wheel_from_git_archive_holds_every_subpackage_and_nothing_else(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the wheel is built from `git archive HEAD`")
    # Build from the committed tree plus the working tree's changes, as a release would:
    # `git stash create` gives a commit of the current state without touching anything.
    tree = subprocess.run(["git", "stash", "create"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or "HEAD"
    source = tmp_path / "source"
    source.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", tree], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    # --no-isolation: the build dependencies (setuptools, cffi) are the test venv's own,
    # so the test needs no network.
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=240,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("raftlite-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {os.path.dirname(name) for name in names if name.endswith("__init__.py")}
    assert packages == {"raftlite"} | {"raftlite/" + name.replace(".", "/") for name in SUBPACKAGES}
    code_files = [name for name in names if not name.startswith("raftlite-") or not ".dist-info/" in name]
    assert not [name for name in code_files if "/tests/" in name or name.startswith("tests/")]
    assert "raftlite/setup.py" not in names
    assert any(name.startswith("raftlite/io/native/_aio") and name.endswith(".so") for name in names)
    assert "raftlite/io/native/_aio_build.py" not in names
    top_level_files = sorted(
        name for name in code_files if name.count("/") == 1 and name.startswith("raftlite/")
    )
    assert top_level_files == ["raftlite/__init__.py", "raftlite/__main__.py", "raftlite/argument_types.py",
                               "raftlite/cli.py", "raftlite/process_cluster.py"]
    assert all(name.startswith(("raftlite/", "raftlite-")) for name in names), "stray files outside the package"

    # The built wheel works when installed: import every sub-package from it.
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=120,
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import raftlite; "
        "assert raftlite.__file__.startswith(sys.argv[1]), raftlite.__file__; "
        + "; ".join(f"import raftlite.{name}" for name in SUBPACKAGES)
        + "; from raftlite.io import native; print(native.BACKEND_NAME)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd="/", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("kernel-aio", "portable")


def test_io_is_the_runtime_only_and_does_not_import_the_client():
    # Not even io/node.py: a joining node asks the cluster to take it in over the admin
    # protocol (io/admin.py), not as a dqlite client.
    offenders = []
    for path in sorted((ROOT / "io").rglob("*.py")):
        package = ["raftlite", *path.relative_to(ROOT).parent.parts]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                # Absolute names, each imported name included: `from .. import client` too.
                base = ".".join(package[:len(package) - node.level + 1] if node.level else [])
                base = ".".join(part for part in (base, node.module or "") if part)
                modules = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            if any(module == "raftlite.client" or module.startswith("raftlite.client.") for module in modules):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
