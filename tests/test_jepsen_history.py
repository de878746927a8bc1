"""Histories: Jepsen EDN op maps and log lines in, EDN out, invocations paired with completions."""

import pytest

from raftlite.jepsen_like.history import (
    Event,
    HistoryError,
    Keyword,
    build_history,
    detect_format,
    pair_operations,
    parse_edn_history,
    parse_history,
    parse_log_history,
    write_edn_history,
)

pytestmark = pytest.mark.timeout(30)

EDN_LINES = """\
{:type :invoke, :f :cas, :value [1 2], :process 3, :time 100}
{:type :invoke, :f :read, :value nil, :process 0, :time 150}
{:type :fail, :f :cas, :value [1 2], :process 3, :time 200, :error "no leader"}
{:type :ok, :f :read, :value 4, :process 0, :time 250}
{:type :info, :f :kill, :value nil, :process :nemesis, :time 300}
{:type :invoke, :f :write, :value 2, :process 1, :time 400}
"""


def test_edn_one_map_per_line():
    events = parse_edn_history(EDN_LINES)
    assert [event.type for event in events] == ["invoke", "invoke", "fail", "ok", "info", "invoke"]
    first = events[0]
    assert first.f == "cas" and isinstance(first.f, Keyword)
    assert first.value == (1, 2) and first.process == 3 and first.time == 100 and first.index == 0
    assert events[2].extra == ((Keyword("error"), "no leader"),)
    assert events[4].process == "nemesis"


def test_edn_vector_of_maps_as_knossos_writes_it():
    text = "[{:process 0, :type :invoke, :f :read, :value nil}\n {:process 0, :type :ok, :f :read, :value nil}]"
    events = parse_history(text)
    assert [(event.type, event.value) for event in events] == [("invoke", None), ("ok", None)]
    assert events[1].time is None


def test_log_lines_as_in_porcupine_etcd_histories():
    text = (
        "INFO  jepsen.util - 2\t:invoke\t:write\t1\n"
        "INFO  jepsen.util - 3\t:invoke\t:cas\t[3 4]\n"
        "some other logger line\n"
        "INFO  jepsen.util - 2\t:ok\t:write\t1\n"
        "INFO  jepsen.util - 3   :info   :cas    :timed-out\n"      # spaces instead of tabs occur too
    )
    assert detect_format(text) == "log"
    events = parse_log_history(text)
    assert [(event.process, event.type, event.f, event.value) for event in events] == [
        (2, "invoke", "write", 1), (3, "invoke", "cas", (3, 4)), (2, "ok", "write", 1), (3, "info", "cas", "timed-out"),
    ]
    assert isinstance(events[3].value, Keyword)


def test_written_edn_reads_back_identically():
    events = parse_edn_history(EDN_LINES)
    text = write_edn_history(events)
    assert text.splitlines()[0] == "{:type :invoke, :f :cas, :value [1 2], :process 3, :time 100, :index 0}"
    assert parse_edn_history(text) == events
    tricky = build_history([(0, "invoke", "txn", [["append", 1, 'a "quoted"\nline'], ["r", 2, None]]),
                            (0, "ok", "txn", [[Keyword("append"), 1, "x"], [Keyword("r"), 2, [1, 2]]])])
    again = parse_edn_history(write_edn_history(tricky))
    assert again[0].value[0][2] == 'a "quoted"\nline'
    assert again[1].value == ((Keyword("append"), 1, "x"), (Keyword("r"), 2, (1, 2)))


def test_pairing_matches_completions_to_their_process():
    events = parse_edn_history(EDN_LINES)
    operations = pair_operations(events)
    assert [(operation.process, operation.f, operation.type) for operation in operations] == [
        (3, "cas", "fail"), (0, "read", "ok"), (1, "write", "info"),      # never completed: info
    ]
    assert operations[1].value == 4 and operations[1].invoke_value is None
    assert operations[2].complete is None and operations[2].complete_index == float("inf")


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("hello world\n", "neither an EDN op map nor a Jepsen log line"),
    ("{:type :invoke, :f :read\n", "not valid EDN"),
    ("{:f :read, :process 1}\n", "has no :type"),
    ("{:type :started, :f :read, :process 1}\n", ":type must be one of"),
    ("[1 2 3]", "is not an EDN map"),
    ("{:type :invoke, :f :read, :process 1, :time \"noon\"}", ":time must be an integer"),
])
def test_unreadable_histories_name_the_problem(text, message):
    with pytest.raises(HistoryError, match=message):
        parse_history(text)


@pytest.mark.parametrize("rows, message", [
    ([(1, "ok", "read", 1)], "no open invocation"),
    ([(1, "invoke", "read", None), (1, "invoke", "write", 2)], "invokes again"),
    ([(1, "invoke", "read", None), (1, "ok", "write", 2)], "does not match"),
])
def test_malformed_histories_are_refused(rows, message):
    with pytest.raises(HistoryError, match=message):
        pair_operations(build_history(rows))


def test_a_nemesis_info_without_invocation_is_a_note():
    events = build_history([("nemesis", "info", "partition", None), (0, "invoke", "read", None), (0, "ok", "read", 1)])
    assert [operation.process for operation in pair_operations(events)] == [0]
    assert isinstance(events[0], Event)
