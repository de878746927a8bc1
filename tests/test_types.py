"""mypy runs clean over core/ and actors/ (the deterministic heart: the Raft core, its
formats, and the actors the simulator and the real runtime both drive).

The repository root is the package `raftlite` itself, and the checkout folder may have
any name, so mypy cannot be pointed at the checkout directly: it would not know the
package's name (the modules use explicit relative imports), and from the root the
top-level io/ would shadow the standard library's io. So mypy runs from an empty
directory holding only a symlink named `raftlite` to the checkout, with the settings of
pyproject.toml's [tool.mypy] (which also keeps it from judging the other parts).
"""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_mypy_is_clean_over_core_and_actors(tmp_path):
    (tmp_path / "raftlite").symlink_to(ROOT, target_is_directory=True)
    completed = subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "mypy_cache"),   # a fresh cache: no stale answers
            "-p", "raftlite.core", "-p", "raftlite.actors",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=540,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"mypy found problems in core/ or actors/:\n{output}"
