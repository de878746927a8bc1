"""A sweep spread over processes or a Dask cluster gives the same results as one process.

A run depends only on its seed and the code, so whatever the spread, the per-seed records
(trace hash, verdict, counts) must be identical once sorted by seed, and the failing
seeds the same. The planted bug (a candidate counting its own vote before it is durable)
makes every seed fail under the durability checker, so the failing set is not empty.
"""

import io
import json

import pytest

from raftlite.core.raft import SAFE, UnsafeSwitches
from raftlite.sim.nemesis import NEMESIS_KINDS
from raftlite.sim.sweep import sweep

SEEDS = range(1, 7)


def records(**spread) -> tuple[list[dict], list[int]]:
    out = io.StringIO()
    unsafe = spread.pop("unsafe", SAFE)
    result = sweep(seeds=SEEDS, nodes=3, nemesis=NEMESIS_KINDS, nemesis_text="all", duration_s=2.0,
                   fault_points=("slow-persist", "crash-before-sync"), unsafe=unsafe, progress=None,
                   out=io.StringIO(), jsonl=out, **spread)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(line["seed"] for line in lines) == list(SEEDS)
    return sorted(lines, key=lambda line: line["seed"]), [summary.seed for summary in result.failures]


@pytest.mark.timeout(600)
def test_two_processes_and_dask_agree_with_one_process():
    one, failing = records(jobs=1)
    assert records(jobs=2) == (one, failing)
    assert records(jobs=2, dask="local") == (one, failing)
    assert len({line["trace_hash"] for line in one}) == len(SEEDS)   # the seeds really differ


@pytest.mark.timeout(600)
def test_the_failing_seeds_are_the_same_spread_or_not():
    planted = UnsafeSwitches(self_vote_before_persist=True)
    one, failing = records(jobs=1, unsafe=planted)
    assert failing == list(SEEDS)
    assert records(jobs=2, unsafe=planted) == (one, failing)
