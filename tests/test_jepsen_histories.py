"""The linearizability checker gives the published verdict on every published history.

The histories (Knossos' cas-register data, Porcupine's Jepsen etcd logs) are not in this
repository: they are read from /work/shared/histories, or from $RAFTLITE_HISTORIES.
Where that folder is absent the tests skip and say so; under CI (``CI`` set) its absence
is a failure, so a CI run can never pass without having checked them.
"""

import os
from pathlib import Path

import pytest

from raftlite.jepsen_like.history import read_history
from raftlite.jepsen_like.linearizability import LinearizabilityLimits, check_linearizability
from raftlite.jepsen_like.models import make_model

HISTORIES = Path(os.environ.get("RAFTLITE_HISTORIES", "/work/shared/histories"))
VERDICTS = HISTORIES / "VERDICTS.tsv"


def _published() -> list:
    if not VERDICTS.is_file():
        return [pytest.param(None, None, id="histories-folder-absent")]
    rows = []
    for line in VERDICTS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, expected, _source = line.split("\t")
        rows.append(pytest.param(name, {"true": True, "false": False}[expected], id=name))
    return rows


def _require_histories() -> None:
    if VERDICTS.is_file():
        return
    message = f"published histories not found at {HISTORIES} (set RAFTLITE_HISTORIES to their folder)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, expected", _published())
def test_published_verdict(name, expected):
    _require_histories()
    events = read_history(HISTORIES / name)
    # Both projects start the register at nil: the histories read nil before any write.
    verdict = check_linearizability(events, make_model("cas-register"), limits=LinearizabilityLimits(time_limit_s=50))
    assert verdict.valid is expected, verdict.to_json()["anomalies"][:1]
    if expected is False:
        assert verdict.anomalies and verdict.excerpt
    if name.startswith("porcupine-etcd/"):
        # Porcupine's own reading of the etcd logs (a failed cas returned false, which
        # constrains the order) reaches the same verdicts.
        strict = check_linearizability(events, make_model("etcd-register"),
                                       limits=LinearizabilityLimits(time_limit_s=50))
        assert strict.valid is expected


def test_every_listed_history_exists():
    _require_histories()
    names = [param.values[0] for param in _published()]
    assert len(names) >= 190
    missing = [name for name in names if not (HISTORIES / name).is_file()]
    assert not missing
