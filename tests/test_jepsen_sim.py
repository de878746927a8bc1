"""jepsen_like in the simulator: a short campaign over every workload and nemesis, the
teeth (each unsafe switch is caught, the safe build passes the same seeds), the
command, the report and the fixtures."""

import json

import pytest

from raftlite.cli import main
from raftlite.core.raft import UnsafeSwitches
from raftlite.jepsen_like.history import parse_history, pair_operations
from raftlite.jepsen_like.nemesis_schedule import NEMESIS_CHOICES
from raftlite.jepsen_like.report import render_report
from raftlite.jepsen_like.runner import JepsenOptions, run_jepsen

pytest_plugins = ["raftlite.jepsen_like.pytest_plugin"]

WORKLOADS = ("register", "bank", "set", "append")

# -- the short campaign: every nemesis kind (each with one workload, in turn), and every
# workload under all of them at once ----------------------------------------------------

CAMPAIGN = [(WORKLOADS[index % len(WORKLOADS)], (kind,), 1) for index, kind in enumerate(NEMESIS_CHOICES)]
CAMPAIGN += [(workload, NEMESIS_CHOICES, 1) for workload in WORKLOADS]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workload,nemesis,seed", CAMPAIGN,
                         ids=[f"{w}-{'all' if len(n) > 1 else n[0]}-seed{s}" for w, n, s in CAMPAIGN])
def test_campaign_run_is_valid(jepsen_run, workload, nemesis, seed):
    from raftlite.jepsen_like.pytest_plugin import assert_valid

    result = jepsen_run(workload=workload, nemesis=nemesis, seed=seed, time_limit_s=5.0)
    assert_valid(result)
    counts = result.counts()
    assert counts["ok"] > 50, result.summary()          # the workload really ran
    assert sum(result.faults.values()) > 0               # and the nemesis really struck
    assert result.heal_ms is not None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workload, nemesis, seed", [("set", ("transfer",), 1), ("register", ("transfer",), 2)])
def test_transfer_during_a_write_does_not_crash_the_leader(workload, nemesis, seed):
    # Writes arriving while leadership is handed over wait for the transfer's end.
    result = run_jepsen(JepsenOptions(workload=workload, nemesis=nemesis, seed=seed, time_limit_s=5.0))
    assert not any(problem.startswith("crash:") for problem in result.problems), result.problems
    assert result.valid is True, result.summary()


# -- teeth: each unsafe switch is found; the safe build passes the same seeds -----------

# Each switch over a fixed range of seeds (never hand-picked ones): caught on at least
# the stated number of them by a history verdict, while the safe build passes them all.
# (The full catalogue, with shares over seeds 1..100, is `raftlite sim mutations`.)
TEETH = [
    # switch, workload, nemesis, seeds, caught at least
    ("acknowledge_before_commit", "register", ("leader-partition",), range(1, 7), 3),   # measured: 5 of 6
    ("read_without_read_index", "append", ("leader-partition",), range(1, 9), 2),      # measured: 2 of 8
    ("skip_fsync", "set", ("kill",), range(1, 5), 3),                                  # measured: 4 of 4
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("switch,workload,nemesis,seeds,minimum", TEETH, ids=[t[0] for t in TEETH])
def test_unsafe_switch_is_caught_and_safe_build_passes(switch, workload, nemesis, seeds, minimum):
    caught = []
    for seed in seeds:
        options = JepsenOptions(workload=workload, nemesis=nemesis, seed=seed, time_limit_s=5.0)
        unsafe = run_jepsen(JepsenOptions(**{**_fields(options), "unsafe": UnsafeSwitches(**{switch: True})}))
        assert unsafe.options.unsafe.enabled() == (switch,)
        if unsafe.valid is False:
            caught.append(seed)
        safe = run_jepsen(options)
        assert safe.valid is True, f"safe build, seed {seed}:\n{safe.summary()}"
    assert len(caught) >= minimum, f"{switch}: caught on seeds {caught} of {list(seeds)}"


@pytest.mark.timeout(240)
def test_vote_before_persist_is_caught_by_crashing_voters_and_safe_build_passes():
    # The targeted nemesis (sim/crash_after_vote.py): isolate the leader, crash each
    # voter right after it grants a vote (unsynced writes lost) and restart it, isolate the
    # winner. With the switch on a voter forgets its vote and term T gets a second leader.
    # Seeds 1..6, fixed: caught on 5 of them when measured, at least 4 required.
    caught = []
    for seed in range(1, 7):
        options = JepsenOptions(workload="register", seed=seed, time_limit_s=10.0, crash_after_vote=True)
        unsafe = run_jepsen(JepsenOptions(**{**_fields(options),
                                             "unsafe": UnsafeSwitches(vote_before_persist=True)}))
        if unsafe.valid is False:
            assert any(problem.startswith("invariant:") and ("election safety" in problem
                                                             or "leader completeness" in problem)
                       for problem in unsafe.problems), unsafe.summary()
            caught.append(seed)
        assert unsafe.faults["crash-after-vote"] >= 1 and unsafe.faults["isolate-new-leader"] >= 1
        safe = run_jepsen(options)
        assert safe.valid is True, f"safe build, seed {seed}:\n{safe.summary()}"
        assert safe.faults["crash-after-vote"] >= 1 and safe.faults["isolate-new-leader"] >= 1
        assert safe.counts()["ok"] > 100
        assert {e.f for e in safe.events if not isinstance(e.process, int)} >= {
            "start-isolate-leader", "start-crash-after-vote", "start-isolate-new-leader"}
    assert len(caught) >= 4, f"vote_before_persist caught on seeds {caught} of 1..6"


def _fields(options: JepsenOptions) -> dict:
    return {name: getattr(options, name) for name in options.__slots__}


@pytest.mark.timeout(60)
def test_acknowledge_before_commit_is_caught_by_the_history_checker():
    # Not by the raft checkers: the anomaly is in what clients saw.
    result = run_jepsen(JepsenOptions(workload="register", nemesis=("leader-partition",), seed=1, time_limit_s=10.0,
                                      unsafe=UnsafeSwitches(acknowledge_before_commit=True)))
    assert result.verdict.valid is False
    assert {anomaly.kind for anomaly in result.verdict.anomalies} == {"nonlinearizable"}
    assert not result.problems


def test_unsafe_switches_default_off():
    assert UnsafeSwitches().enabled() == ()
    assert JepsenOptions().unsafe.enabled() == ()


# -- determinism, history, intervals ----------------------------------------------------

@pytest.mark.timeout(60)
def test_same_seed_gives_the_same_history():
    options = JepsenOptions(workload="append", nemesis=("partition", "crash"), seed=5, time_limit_s=3.0)
    first, second = run_jepsen(options), run_jepsen(options)
    assert [(e.type, e.f, e.value, e.process, e.time) for e in first.events] == \
           [(e.type, e.f, e.value, e.process, e.time) for e in second.events]
    assert first.intervals == second.intervals


@pytest.mark.timeout(60)
def test_history_records_info_processes_and_nemesis_events(jepsen_run):
    result = jepsen_run(workload="register", nemesis="kill", seed=4, time_limit_s=5.0)
    operations = [op for op in pair_operations(result.events) if isinstance(op.process, int)]
    infos = [op for op in operations if op.type == "info"]
    assert infos, "a kill should leave some operation with an unknown outcome"
    # A process that got info never invokes again (a new process number replaces it).
    for info in infos:
        later = [op for op in operations if op.process == info.process and op.invoke_index > info.invoke_index]
        assert not later
    nemesis_events = [e for e in result.events if not isinstance(e.process, int)]
    assert {e.f for e in nemesis_events} >= {"start-kill", "final-heal"}
    assert all(e.type == "info" for e in nemesis_events)
    assert result.intervals and all(i.kind == "kill" and i.end_ms >= i.start_ms for i in result.intervals)
    # Times are simulated nanoseconds from the workload's start, in history order.
    times = [e.time for e in result.events]
    assert times == sorted(times) and times[0] >= 0


@pytest.mark.timeout(60)
def test_membership_grows_and_shrinks_the_cluster():
    result = run_jepsen(JepsenOptions(workload="set", nemesis=("membership",), seed=3, time_limit_s=8.0,
                                      nemesis_interval_ms=(300.0, 600.0)))
    assert result.valid is True, result.summary()
    descriptions = " ".join(interval.description for interval in result.intervals)
    assert "add n" in descriptions and ("promote n" in descriptions or "remove n" in descriptions)


# -- the command and the report ---------------------------------------------------------

@pytest.mark.timeout(60)
def test_command_writes_history_verdict_and_report(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["jepsen", "--runtime", "sim", "--workload", "bank", "--nemesis", "partition,pause",
                   "--time-limit", "4", "--seed", "3", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert "valid: true" in captured.out and "simulated s" in captured.err   # summary and progress
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["valid"] is True and verdict["workload"] == "bank" and verdict["checker"]["valid"] is True
    assert verdict["nemesis"] == ["partition", "pause"]
    events = parse_history((out / "history.edn").read_text())
    assert sum(1 for e in events if e.type == "invoke") == verdict["operations"]["invoke"]
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("argv,message", [
    (["--workload", "nosuch"], "invalid choice"),
    (["--workload", "set", "--nemesis", "partition,earthquake"], "unknown nemesis earthquake"),
    (["--workload", "set", "--runtime", "real", "--nemesis", "clock"], "unknown nemesis clock for --runtime real"),
    (["--workload", "set", "--time-limit", "-1"], "positive"),
])
def test_command_usage_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) if "invalid choice" in message or "positive" in message else _no_exit():
        status = main(["jepsen", *argv, "--out", str(tmp_path / "out")])
        assert status == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("raftlite")


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_command_refuses_an_out_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["jepsen", "--workload", "set", "--out", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_report_has_plots_or_tables(jepsen_run):
    result = jepsen_run(workload="register", nemesis="partition,clock", seed=4, time_limit_s=3.0)
    tables = render_report(result, plots=False)
    assert "ok/s" in tables and "p99 ms" in tables and "<h2>Nemesis</h2>" in tables and "<img" not in tables
    pytest.importorskip("matplotlib")
    plotted = render_report(result, plots=True)
    assert plotted.count("data:image/png;base64,") == 3


# -- the fixtures ------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_sim_cluster_fixture_serves_sql(sim_cluster):
    cluster = sim_cluster(seed=7)
    assert cluster.leader() is not None
    cluster.client.execute("CREATE TABLE t (a INTEGER)")
    cluster.client.execute("INSERT INTO t VALUES (?)", (41,))
    assert cluster.client.query("SELECT a + 1 FROM t").rows == ((42,),)


# -- the longer campaign's script ----------------------------------------------------------

@pytest.mark.timeout(60)
def test_campaign_script_plans_every_pair_and_prints_a_summary(capsys):
    from raftlite.jepsen_like.campaign import main as campaign_main, plan_campaign

    runs = plan_campaign(WORKLOADS, ["each", "all"], [1, 2])
    assert len(runs) == 2 * len(WORKLOADS) * (len(NEMESIS_CHOICES) + 1)
    assert campaign_main(["--seeds", "4", "--workloads", "set", "--nemesis", "pause+clog", "--time-limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "[1/1] set" in out and "ETA" in out and "1 runs in" in out and "pause+clog" in out
    assert campaign_main(["--workloads", "nosuch"]) == 2
