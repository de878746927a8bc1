"""Golden scenario scripts under tests/testdata/sim. RAFTLITE_REWRITE=1 regenerates them."""

import os
import pathlib

import pytest

from raftlite.sim.scenario import run_script

pytestmark = pytest.mark.timeout(60)

SCRIPTS = sorted((pathlib.Path(__file__).parent / "testdata" / "sim").glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_scenario_matches_its_golden_output(path):
    expected = path.read_text()
    actual = run_script(expected)
    if os.environ.get("RAFTLITE_REWRITE"):
        path.write_text(actual)
    assert actual == expected, f"{path.name} differs; rerun with RAFTLITE_REWRITE=1 and review the diff"


def test_unknown_commands_are_reported_in_the_output():
    assert "error: unknown command 'frobnicate'" in run_script("nodes 1\n\nfrobnicate\n")
    assert "error: the first command must be `nodes N`" in run_script("run 5\n")
