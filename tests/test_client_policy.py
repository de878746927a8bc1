"""The raftlite client's retry classifier, statement scanner, conversions and error
mapping (pure), and its retry behaviour against scripted peers: fake nodes on loopback
that answer the wire protocol as a test dictates (close the connection after a write
arrived, answer 10250 / 10506, know no leader), counting every request they receive."""

import asyncio
import datetime
import socket
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, strategies as st

import raftlite.client as client
from raftlite.client import aio
from raftlite.client.cluster import (
    Decision, Failure, RequestKind, RetryPolicy, decide, describe_statement, failure_of, parse_addresses,
    plan_statement,
)
from raftlite.client.connection import ConnectionBroken, RequestFailed
from raftlite.client.errors import error_from_failure
from raftlite.client.types import (
    DATETIME, NUMBER, STRING, description_type_codes, parameter_to_wire, parameters_to_wire, value_from_wire,
)
from raftlite.core.wire import (
    ClientRequest, ClusterRequest, DbResponse, ExecSqlRequest, FailureResponse, Iso8601,
    LeaderRequest, NodeInfo, OpenRequest, QuerySqlRequest, RequestReader, ResultResponse, RowsResponse,
    ServerResponse, ServersResponse, UnixTime, WelcomeResponse, encode_response,
)

pytestmark = pytest.mark.timeout(60)

K = RequestKind
F = Failure
D = Decision


# -- the classifier --------------------------------------------------------------------

# The policy table of raftlite.client.cluster, written out in full.
EXPECTED = {
    (K.READ, F.NOT_SENT): D.RETRY, (K.READ, F.NOT_LEADER): D.RETRY, (K.READ, F.BUSY): D.RETRY,
    (K.READ, F.LEADERSHIP_LOST): D.RETRY, (K.READ, F.BROKEN_AFTER_SEND): D.RETRY, (K.READ, F.OTHER): D.FAIL,
    (K.BEGIN, F.NOT_SENT): D.RETRY, (K.BEGIN, F.NOT_LEADER): D.RETRY, (K.BEGIN, F.BUSY): D.RETRY,
    (K.BEGIN, F.LEADERSHIP_LOST): D.RETRY, (K.BEGIN, F.BROKEN_AFTER_SEND): D.RETRY, (K.BEGIN, F.OTHER): D.FAIL,
    (K.WRITE, F.NOT_SENT): D.RETRY, (K.WRITE, F.NOT_LEADER): D.RETRY, (K.WRITE, F.BUSY): D.RETRY,
    (K.WRITE, F.LEADERSHIP_LOST): D.OUTCOME_UNKNOWN, (K.WRITE, F.BROKEN_AFTER_SEND): D.OUTCOME_UNKNOWN,
    (K.WRITE, F.OTHER): D.FAIL,
    (K.IN_TRANSACTION, F.NOT_SENT): D.TRANSACTION_LOST, (K.IN_TRANSACTION, F.NOT_LEADER): D.TRANSACTION_LOST,
    (K.IN_TRANSACTION, F.BUSY): D.FAIL, (K.IN_TRANSACTION, F.LEADERSHIP_LOST): D.TRANSACTION_LOST,
    (K.IN_TRANSACTION, F.BROKEN_AFTER_SEND): D.TRANSACTION_LOST, (K.IN_TRANSACTION, F.OTHER): D.FAIL,
    (K.COMMIT, F.NOT_SENT): D.TRANSACTION_LOST, (K.COMMIT, F.NOT_LEADER): D.TRANSACTION_LOST,
    (K.COMMIT, F.BUSY): D.FAIL, (K.COMMIT, F.LEADERSHIP_LOST): D.OUTCOME_UNKNOWN,
    (K.COMMIT, F.BROKEN_AFTER_SEND): D.OUTCOME_UNKNOWN, (K.COMMIT, F.OTHER): D.FAIL,
    (K.ROLLBACK, F.NOT_SENT): D.DONE, (K.ROLLBACK, F.NOT_LEADER): D.DONE, (K.ROLLBACK, F.BUSY): D.FAIL,
    (K.ROLLBACK, F.LEADERSHIP_LOST): D.DONE, (K.ROLLBACK, F.BROKEN_AFTER_SEND): D.DONE, (K.ROLLBACK, F.OTHER): D.FAIL,
}


def test_the_policy_table_is_complete_and_as_documented():
    assert len(EXPECTED) == len(K) * len(F)
    for (kind, failure), decision in EXPECTED.items():
        assert decide(kind, failure) is decision, (kind, failure)


def test_opting_in_retries_unknown_autocommit_writes_only():
    for (kind, failure), decision in EXPECTED.items():
        opted = decide(kind, failure, retry_unknown_writes=True)
        if kind is K.WRITE and decision is D.OUTCOME_UNKNOWN:
            assert opted is D.RETRY
        else:
            assert opted is decision, (kind, failure)   # a COMMIT is never re-sent


def test_failures_are_classified_by_code_and_by_whether_the_request_left():
    assert failure_of(RequestFailed(10250, "not leader"), sent=True) is F.NOT_LEADER
    assert failure_of(RequestFailed(10506, "leadership lost"), sent=True) is F.LEADERSHIP_LOST
    assert failure_of(RequestFailed(5, "database is locked"), sent=True) is F.BUSY
    assert failure_of(RequestFailed(517, "busy snapshot"), sent=True) is F.BUSY
    assert failure_of(RequestFailed(1, "no such table: t"), sent=True) is F.OTHER
    assert failure_of(RequestFailed(2067, "UNIQUE constraint failed"), sent=True) is F.OTHER
    assert failure_of(ConnectionBroken("reset"), sent=True) is F.BROKEN_AFTER_SEND
    assert failure_of(ConnectionBroken("refused"), sent=False) is F.NOT_SENT


@given(attempt=st.integers(min_value=0, max_value=10_000), unit=st.floats(min_value=0, max_value=0.999999))
def test_backoff_is_capped_positive_and_jittered_within_bounds(attempt, unit):
    policy = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.5, jitter_fraction=0.5)
    delay = policy.backoff_s(attempt, unit)
    base = min(0.01 * 2 ** min(attempt, 64), 0.5)
    assert 0.5 * base - 1e-12 <= delay <= base + 1e-12
    assert delay <= 0.5


def test_backoff_grows_exponentially_until_the_cap():
    policy = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.1, jitter_fraction=0.0)
    assert [round(policy.backoff_s(attempt, 0.3), 6) for attempt in range(6)] == [0.01, 0.02, 0.04, 0.08, 0.1, 0.1]


def test_bad_policy_and_addresses_are_one_line_interface_errors():
    with pytest.raises(client.InterfaceError, match="timeout must be positive"):
        RetryPolicy(timeout_s=0).validate()
    with pytest.raises(client.InterfaceError, match="not a node address"):
        parse_addresses("127.0.0.1:9001,nonsense")
    with pytest.raises(client.InterfaceError, match="no node address"):
        parse_addresses(" , ")
    assert parse_addresses(" 127.0.0.1:1, [::1]:2 ,127.0.0.1:1") == ("127.0.0.1:1", "[::1]:2")


# -- statements ------------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "SELECT * FROM t", "  select replace(name, 'a', 'b') from t;", "VALUES (1), (2)",
    "WITH x AS (SELECT 1) SELECT * FROM x", "EXPLAIN INSERT INTO t VALUES (1)", "PRAGMA user_version",
    "PRAGMA table_info(t)", "SELECT 'DELETE FROM t; INSERT' AS text -- UPDATE t\n", "/* DROP */ SELECT 1",
    'SELECT "insert" FROM t',
])
def test_reads_are_recognized(sql):
    info = describe_statement(sql)
    assert info.read_only and info.returns_rows and not info.dml and info.statement_count == 1


@pytest.mark.parametrize("sql, returns_rows, dml", [
    ("INSERT INTO t VALUES (1)", False, True),
    ("insert or replace into t values (1)", False, True),
    ("UPDATE t SET x = 1", False, True),
    ("DELETE FROM t RETURNING *", True, True),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False, True),
    ("CREATE TABLE t (x)", False, False),
    ("PRAGMA user_version = 3", False, False),
    ("PRAGMA user_version(3)", True, False),
    ("SELECT * FROM t; DELETE FROM t", False, True),
])
def test_writes_are_never_taken_for_reads(sql, returns_rows, dml):
    info = describe_statement(sql)
    assert not info.read_only
    assert info.returns_rows is returns_rows
    assert info.dml is dml


def test_transaction_effects_and_trigger_bodies():
    assert describe_statement("BEGIN IMMEDIATE").transaction_effects == ("BEGIN",)
    assert describe_statement("BEGIN; INSERT INTO t VALUES (1); COMMIT;").transaction_effects == ("BEGIN", "COMMIT")
    assert describe_statement("END TRANSACTION").transaction_effects == ("COMMIT",)
    assert describe_statement("ROLLBACK TO SAVEPOINT a").transaction_effects == ()
    trigger = describe_statement("CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE u SET n = n + 1; END; SELECT 1")
    assert trigger.statement_count == 2 and trigger.transaction_effects == ()
    assert describe_statement("  ;  ; ").statement_count == 0


def test_statement_plans():
    def plan(sql, *, autocommit=False, in_transaction=False):
        return plan_statement(describe_statement(sql), autocommit=autocommit, in_transaction=in_transaction)

    insert = plan("INSERT INTO t VALUES (1)")
    assert insert.implicit_begin and insert.kind is K.IN_TRANSACTION and insert.in_transaction_after
    assert plan("INSERT INTO t VALUES (1)", autocommit=True).kind is K.WRITE
    assert not plan("INSERT INTO t VALUES (1)", autocommit=True).implicit_begin
    assert plan("CREATE TABLE t (x)").kind is K.WRITE and not plan("CREATE TABLE t (x)").implicit_begin
    assert plan("SELECT 1").kind is K.READ and plan("SELECT 1").use_query
    assert plan("SELECT 1", in_transaction=True).kind is K.IN_TRANSACTION
    assert plan("BEGIN").kind is K.BEGIN and plan("BEGIN").in_transaction_after
    commit = plan("COMMIT", in_transaction=True)
    assert commit.kind is K.COMMIT and not commit.in_transaction_after
    assert plan("ROLLBACK", in_transaction=True).kind is K.ROLLBACK
    whole = plan("BEGIN; INSERT INTO t VALUES (1); COMMIT", autocommit=True)
    assert whole.kind is K.WRITE and not whole.in_transaction_after and not whole.implicit_begin


# -- types and errors ------------------------------------------------------------------

def test_parameters_to_the_wire():
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)
    assert parameters_to_wire([1, 2.5, "x", b"b", bytearray(b"ba"), memoryview(b"m"), None, True, moment,
                               datetime.date(2024, 5, 6)]) == (
        1, 2.5, "x", b"b", b"ba", b"m", None, True, "2024-05-06 07:08:09.123000", "2024-05-06")
    aware = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert parameter_to_wire(aware) == "2024-05-06 07:08:09+02:00"
    with pytest.raises(client.ProgrammingError, match="type dict"):
        parameter_to_wire({})
    with pytest.raises(client.DataError, match="64-bit"):
        parameter_to_wire(1 << 63)
    with pytest.raises(client.ProgrammingError, match="sequence"):
        parameters_to_wire({"a": 1})


def test_values_from_the_wire():
    assert value_from_wire(UnixTime(0)) == datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    assert value_from_wire(Iso8601("2024-05-06 07:08:09")) == datetime.datetime(2024, 5, 6, 7, 8, 9)
    assert value_from_wire(Iso8601("2024-05-06T07:08:09.5+02:00")).utcoffset() == datetime.timedelta(hours=2)
    assert value_from_wire(Iso8601("")) is None
    assert value_from_wire(Iso8601("not a date")) == "not a date"
    assert value_from_wire(UnixTime(1 << 62)) == 1 << 62
    assert [value_from_wire(value) for value in (1, 1.5, "s", b"b", None, False)] == [1, 1.5, "s", b"b", None, False]
    codes = description_type_codes(3, [(None, "a", Iso8601("")), (1, None, UnixTime(5))])
    assert codes[0] == NUMBER and codes[1] == STRING and codes[2] == DATETIME


def test_failures_map_to_pep249_classes_with_their_codes():
    cases = {
        (1, 'near "x": syntax error'): client.OperationalError,
        (2067, "UNIQUE constraint failed: t.x"): client.IntegrityError,
        (1299, "NOT NULL constraint failed"): client.IntegrityError,
        (5, "database is locked"): client.OperationalError,
        (18, "string or blob too big"): client.DataError,
        (1005, "bad request"): client.InterfaceError,
        (12, "no statement with the given id"): client.InternalError,
        (26, "file is not a database"): client.DatabaseError,
    }
    for (code, message), cls in cases.items():
        error = error_from_failure(code, message)
        assert type(error) is cls and error.sqlite_errorcode == code and message in str(error)
    assert error_from_failure(2067, "x").sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
    assert issubclass(client.OutcomeUnknownError, client.OperationalError)
    assert issubclass(client.TransactionLostError, client.OperationalError)
    assert issubclass(client.NoLeaderError, client.OperationalError)
    assert client.apilevel == "2.0" and client.paramstyle == "qmark" and client.threadsafety == 1


# -- scripted peers --------------------------------------------------------------------

CLOSE = object()   # in a script's answer: close the connection (after what precedes it)


class ScriptedNode:
    """A fake node: LEADER, CLIENT, OPEN and CLUSTER get sensible answers (LEADER names
    `self.leader`, itself by default); every other request goes to `script(request,
    connection_number)`, which returns the answers to send (CLOSE to hang up). Every
    request is recorded as (connection_number, request)."""

    def __init__(self, script: Callable | None = None) -> None:
        self.script = script or (lambda request, number: [FailureResponse(code=1, message="unexpected")])
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.node_id = self.listener.getsockname()[1]
        self.leader: tuple[int, str] | None = (self.node_id, self.address)
        self.members: list[NodeInfo] = []
        self.requests: list[tuple[int, object]] = []
        self.on_cluster: list = []
        self._connections: list[socket.socket] = []
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        number = 0
        while not self._stopped:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(target=self._serve, args=(connection, number), daemon=True).start()
            number += 1

    def _answers(self, request, number: int) -> list:
        match request:
            case LeaderRequest():
                node_id, address = self.leader or (0, "")
                return [ServerResponse(node_id=node_id, address=address)]
            case ClientRequest():
                return [WelcomeResponse(heartbeat_timeout_ms=15000)]
            case OpenRequest():
                return [DbResponse(db_id=0)]
            case ClusterRequest():
                members = self.members or [NodeInfo(node_id=self.node_id, address=self.address, role=0)]
                return [ServersResponse(nodes=tuple(members)), *self.on_cluster]
        return self.script(request, number)

    def _serve(self, connection: socket.socket, number: int) -> None:
        reader = RequestReader(expect_handshake=True)
        handshake_done = False
        with connection:
            while True:
                try:
                    data = connection.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                reader.feed(data)
                if not handshake_done:
                    if reader.read_handshake() is None:
                        continue
                    handshake_done = True
                while (request := reader.next_request()) is not None:
                    self.requests.append((number, request))
                    for answer in self._answers(request, number):
                        if answer is CLOSE:
                            connection.shutdown(socket.SHUT_RDWR)
                            return
                        connection.sendall(encode_response(answer))

    def count(self, kind: type, sql: str | None = None) -> int:
        return sum(1 for _, request in self.requests
                   if isinstance(request, kind) and (sql is None or getattr(request, "sql", None) == sql))

    def stop(self) -> None:
        self._stopped = True
        self.listener.close()
        for connection in self._connections:
            try:
                connection.close()
            except OSError:
                pass


@pytest.fixture
def nodes():
    started: list[ScriptedNode] = []

    def make(script=None) -> ScriptedNode:
        node = ScriptedNode(script)
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


INSERT = "INSERT INTO t VALUES (1)"
OK = ResultResponse(last_insert_id=1, rows_affected=1)


def test_a_write_whose_connection_breaks_after_sending_is_unknown_and_sent_once(nodes):
    node = nodes(lambda request, number: [CLOSE])
    connection = client.connect(node.address, database="app", timeout=2, autocommit=True)
    with pytest.raises(client.OutcomeUnknownError, match="may or may not"):
        connection.execute(INSERT)
    assert node.count(ExecSqlRequest, INSERT) == 1
    connection.close()


def test_opting_in_re_sends_a_write_whose_outcome_is_unknown(nodes):
    node = nodes(lambda request, number: [CLOSE] if number == 0 else [OK])
    connection = client.connect(node.address, database="app", timeout=2, autocommit=True, retry_unknown_writes=True)
    assert connection.execute(INSERT).rowcount == 1
    assert node.count(ExecSqlRequest, INSERT) == 2
    connection.close()


def test_leadership_lost_on_a_write_is_unknown_with_its_code_and_not_resent(nodes):
    node = nodes(lambda request, number: [FailureResponse(code=10506, message="leadership lost")])
    connection = client.connect(node.address, database="app", timeout=2, autocommit=True)
    with pytest.raises(client.OutcomeUnknownError) as raised:
        connection.execute(INSERT)
    assert raised.value.sqlite_errorcode == 10506
    assert node.count(ExecSqlRequest, INSERT) == 1


def test_a_read_is_retried_after_leadership_lost_and_a_broken_connection(nodes):
    rows = RowsResponse(columns=("x",), rows=((7,),))
    answers = {0: [FailureResponse(code=10506, message="leadership lost")], 1: [CLOSE]}
    node = nodes(lambda request, number: answers.get(number, [rows]))
    connection = client.connect(node.address, database="app", timeout=5)
    assert connection.execute("SELECT x FROM t").fetchall() == [(7,)]
    assert node.count(QuerySqlRequest) == 3


def test_a_write_refused_as_not_leader_is_retried_on_the_new_leader(nodes):
    new_leader = nodes(lambda request, number: [OK])
    old_leader = nodes()

    def refuse(request, number):
        old_leader.leader = (new_leader.node_id, new_leader.address)   # it learns who won
        return [FailureResponse(code=10250, message="not leader")]

    old_leader.script = refuse
    connection = client.connect(old_leader.address, database="app", timeout=5, autocommit=True)
    assert connection.execute(INSERT).lastrowid == 1
    assert old_leader.count(ExecSqlRequest, INSERT) == 1 and new_leader.count(ExecSqlRequest, INSERT) == 1
    assert connection.session.connected_to == new_leader.address


def test_a_follower_only_address_list_finds_the_leader(nodes):
    leader = nodes(lambda request, number: [OK])
    follower = nodes()
    follower.leader = (leader.node_id, leader.address)
    connection = client.connect(follower.address, database="app", timeout=5, autocommit=True)
    connection.execute(INSERT)
    assert leader.count(ExecSqlRequest, INSERT) == 1 and follower.count(ExecSqlRequest) == 0


def test_an_idle_connection_closed_by_its_peer_is_replaced_before_sending(nodes):
    node = nodes(lambda request, number: [OK])
    node.on_cluster = [CLOSE]   # the first connection is closed right after discovery
    connection = client.connect(node.address, database="app", timeout=5, autocommit=True)
    node.on_cluster = []
    time.sleep(0.2)             # let the close arrive
    connection.execute(INSERT)  # certainly not sent on the dead connection: no unknown outcome
    assert node.count(ExecSqlRequest, INSERT) == 1


def test_a_statement_of_an_open_transaction_is_lost_not_retried(nodes):
    def script(request, number):
        return [OK] if request.sql == "BEGIN" else [CLOSE]

    node = nodes(script)
    connection = client.connect(node.address, database="app", timeout=2)
    with pytest.raises(client.TransactionLostError, match="nothing in it was committed"):
        connection.execute(INSERT)
    assert not connection.in_transaction
    assert node.count(ExecSqlRequest, INSERT) == 1
    connection.rollback()   # nothing to roll back: no error


def test_a_commit_whose_connection_breaks_is_unknown_and_sent_once(nodes):
    node = nodes(lambda request, number: [CLOSE] if request.sql == "COMMIT" else [OK])
    connection = client.connect(node.address, database="app", timeout=2, retry_unknown_writes=True)
    connection.execute(INSERT)
    assert connection.in_transaction
    with pytest.raises(client.OutcomeUnknownError, match="the COMMIT"):
        connection.commit()
    assert node.count(ExecSqlRequest, "COMMIT") == 1 and not connection.in_transaction


def test_busy_autocommit_writes_are_retried_until_they_pass(nodes):
    answers = iter([FailureResponse(code=5, message="database is locked")] * 3)
    node = nodes(lambda request, number: [next(answers, OK)])
    connection = client.connect(node.address, database="app", timeout=5, autocommit=True)
    connection.execute(INSERT)
    assert node.count(ExecSqlRequest, INSERT) == 4


def test_sql_errors_fail_at_once_and_keep_the_connection(nodes):
    node = nodes(lambda request, number: [FailureResponse(code=1, message="no such table: t")])
    connection = client.connect(node.address, database="app", timeout=5)
    with pytest.raises(client.OperationalError, match="no such table"):
        connection.execute("SELECT * FROM t")
    assert node.count(QuerySqlRequest) == 1
    assert connection.session.connected_to == node.address


@pytest.mark.timeout(20)
def test_with_no_leader_known_connect_fails_after_the_timeout(nodes):
    node = nodes()
    node.leader = None
    started = time.monotonic()
    with pytest.raises(client.NoLeaderError, match="knows no leader") as raised:
        client.connect([node.address, "127.0.0.1:1"], database="app", timeout=0.8)
    elapsed = time.monotonic() - started
    assert 0.75 <= elapsed < 3.0
    assert "\n" not in str(raised.value)
    assert node.count(ExecSqlRequest) == 0


# -- the asyncio session follows the same policy -------------------------------------------

def test_asyncio_unknown_write_is_not_resent_and_reads_are_retried(nodes):
    rows = RowsResponse(columns=("x",), rows=((1,),))

    def script(request, number):
        if request.sql == INSERT:
            return [CLOSE]
        return [rows] if number > 0 else [FailureResponse(code=10250, message="not leader")]

    node = nodes(script)

    async def scenario():
        connection = await aio.connect(node.address, database="app", timeout=2, autocommit=True)
        cursor = await connection.execute("SELECT x FROM t")     # refused once, then retried
        assert await cursor.fetchall() == [(1,)]
        with pytest.raises(client.OutcomeUnknownError):
            await connection.execute(INSERT)
        await connection.close()

    asyncio.run(scenario())
    assert node.count(ExecSqlRequest, INSERT) == 1
    assert node.count(QuerySqlRequest) == 2


def test_asyncio_transaction_lost_and_no_leader_timeout(nodes):
    node = nodes(lambda request, number: [OK] if request.sql == "BEGIN" else [CLOSE])

    async def scenario():
        connection = await aio.connect(node.address, database="app", timeout=2)
        with pytest.raises(client.TransactionLostError):
            await connection.execute(INSERT)
        assert not connection.in_transaction
        await connection.close()
        node.leader = None
        started = time.monotonic()
        with pytest.raises(client.NoLeaderError, match="knows no leader"):
            await aio.connect(node.address, database="app", timeout=0.5)
        assert 0.45 <= time.monotonic() - started < 3.0

    asyncio.run(scenario())
