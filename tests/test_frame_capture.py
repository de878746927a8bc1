"""Frame-based replication, step 1 (docs/architecture.md §4): a leader connection through the capture
VFS, a follower file that only ever receives applied entries, and a comparison of both
with plain apsw: same rows, integrity ok, and (after a leader checkpoint) the same pages."""

import hashlib
import itertools
import pathlib
import random
import struct
import tempfile

import apsw
import pytest
from hypothesis import currently_in_test_context, event, given, settings, strategies as st

from raftlite.actors import database_files
from raftlite.actors.sqlite_capture import Capture, CaptureVfs, open_leader_connection
from raftlite.core.frames import (
    FRAME_FORMAT_VERSION,
    CommittedTransaction,
    CreateDatabase,
    FrameFormatError,
    decode_database_entry,
    encode_database_entry,
)
from raftlite.core.invariant import InvariantViolation

pytestmark = pytest.mark.timeout(120)

_vfs_numbers = itertools.count()


def _series(count: int) -> str:
    """Rows `value` = 1..count (apsw's SQLite is built without generate_series)."""
    return (f"(WITH RECURSIVE series(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM series "
            f"WHERE value < {int(count)}) SELECT value FROM series)")


@pytest.fixture
def vfs():
    capture_vfs = CaptureVfs(f"raftlite-capture-test-{next(_vfs_numbers)}")
    yield capture_vfs
    capture_vfs.unregister()


class Replica:
    """A leader database and a follower file that only receives encoded entries."""

    def __init__(self, directory: pathlib.Path, vfs: CaptureVfs, name: str = "main", page_size: int = 4096):
        self.leader_path = str(directory / f"{name}-leader.sqlite")
        self.follower_path = str(directory / f"{name}-follower.sqlite")
        self.vfs = vfs
        self.leader, self.capture = open_leader_connection(self.leader_path, vfs, database=name, page_size=page_size)
        assert self.capture.creation is not None
        self.entries_applied = 0
        database_files.create_database(self.follower_path, _round_trip(self.capture.creation))

    def replicate(self) -> list[CommittedTransaction]:
        committed = self.capture.take_committed()
        for transaction in committed:
            database_files.apply_transaction(self.follower_path, _round_trip(transaction))
            self.entries_applied += 1
        return committed

    def checkpoint_leader(self) -> None:
        busy, log_frames, checkpointed = self.leader.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        assert busy == 0 and log_frames == checkpointed

    def close(self) -> None:
        self.leader.close()
        self.vfs.stop_capturing(self.leader_path)


def _round_trip(entry):
    decoded = decode_database_entry(encode_database_entry(entry))
    assert decoded == entry
    return decoded


def _dump(connection: apsw.Connection) -> list:
    """Schema and every row of every table, in a canonical order."""
    schema = connection.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name"
    ).fetchall()
    rows = [schema]
    for (table,) in connection.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall():
        columns = len(connection.execute(f'PRAGMA table_info("{table}")').fetchall())
        order = ", ".join(str(i) for i in range(1, columns + 1))
        rows.append((table, connection.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()))
    return rows


def _follower_view(path: str) -> tuple[list, str]:
    """Open the follower with plain apsw (default VFS), dump it, close it again."""
    connection = apsw.Connection(path)
    try:
        return _dump(connection), connection.execute("PRAGMA integrity_check").get
    finally:
        connection.close()
    # Closing the last connection checkpoints and removes the (empty) -wal again.


def _assert_follower_matches(replica: Replica) -> list:
    replica.replicate()
    leader_dump = _dump(replica.leader)
    follower_dump, integrity = _follower_view(replica.follower_path)
    assert integrity == "ok"
    assert follower_dump == leader_dump
    return leader_dump


def _page_hashes(path: str, page_size: int) -> list[str]:
    data = pathlib.Path(path).read_bytes()
    return [hashlib.sha256(data[i : i + page_size]).hexdigest() for i in range(0, len(data), page_size)]


def _wal_salts(path: str) -> bytes:
    return pathlib.Path(database_files.wal_path(path)).read_bytes()[16:24]


# --- (a) plain statements -----------------------------------------------------------------


def test_new_database_is_created_by_its_entry(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    creation = replica.capture.creation
    assert isinstance(creation, CreateDatabase) and creation.page_size == 4096 and len(creation.pages) == 1
    # Header bytes 18/19 == 2: the page says WAL mode.
    assert bytes(creation.pages[0][18:20]) == b"\x02\x02"
    assert pathlib.Path(replica.follower_path).read_bytes() == pathlib.Path(replica.leader_path).read_bytes()
    assert replica.capture.take_committed() == []
    replica.close()


def test_leader_connection_settings(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    assert leader.execute("PRAGMA journal_mode").get == "wal"
    assert leader.execute("PRAGMA synchronous").get == 0
    assert leader.execute("PRAGMA wal_autocheckpoint").get == 0
    assert leader.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, -1) == 1
    replica.close()


def test_autocommit_statements_replicate(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, value REAL)")
    leader.execute("INSERT INTO t(name, value) VALUES ('a', 1.5), ('b', 2.5), ('c', NULL)")
    leader.execute("UPDATE t SET value = value * 2 WHERE name = 'b'")
    leader.execute("DELETE FROM t WHERE name = 'a'")
    committed = replica.capture.take_committed()
    assert len(committed) == 4  # one entry per autocommit statement
    for transaction in committed:
        assert transaction.database == "main" and transaction.page_size == 4096
        assert all(len(image) == 4096 for image in transaction.pages.values())
        database_files.apply_transaction(replica.follower_path, transaction)
    assert _assert_follower_matches(replica)[1] == ("t", [(2, "b", 5.0), (3, "c", None)])
    replica.close()


def test_explicit_transaction_is_one_entry(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("BEGIN; CREATE TABLE t(k TEXT PRIMARY KEY, v BLOB); "
                   "INSERT INTO t VALUES ('x', x'00ff'), ('y', zeroblob(5000)); "
                   "UPDATE t SET v = x'01' WHERE k = 'x'; DELETE FROM t WHERE k = 'y'; COMMIT")
    (transaction,) = replica.replicate()
    assert transaction.size_after_commit_pages == leader.execute("PRAGMA page_count").get
    assert _assert_follower_matches(replica)[1] == ("t", [("x", b"\x01")])
    replica.close()


# --- (b) rollback -------------------------------------------------------------------------


def test_rollback_captures_nothing(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("CREATE TABLE t(v)")
    replica.replicate()
    leader.execute("BEGIN; INSERT INTO t VALUES (1), (2); UPDATE t SET v = 3; ROLLBACK")
    assert replica.capture.take_committed() == []
    assert _assert_follower_matches(replica)[1] == ("t", [])
    replica.close()


def test_rollback_after_spilling_captures_nothing_and_the_next_commit_is_exact(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t(v) VALUES (randomblob(100))")
    replica.replicate()
    leader.execute("PRAGMA cache_size = 10")
    leader.execute(f"BEGIN; INSERT INTO t(v) SELECT randomblob(900) FROM {_series(3000)}")
    assert replica.capture.uncommitted_frame_count() > 100  # it did spill into the WAL
    leader.execute("ROLLBACK")
    assert replica.capture.take_committed() == []
    # The next transaction overwrites the abandoned frames from the same place; it is
    # smaller, so abandoned frames lie beyond its commit frame and must not leak into it.
    leader.execute("INSERT INTO t(v) VALUES (x'abcd')")
    (transaction,) = replica.replicate()
    assert len(transaction.pages) <= 3
    assert replica.capture.uncommitted_frame_count() == 0
    assert _assert_follower_matches(replica)[1] == ("t", leader.execute("SELECT * FROM t ORDER BY 1").fetchall())
    replica.close()


# --- (c) nondeterministic functions -------------------------------------------------------


def test_nondeterministic_functions_give_identical_rows(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("CREATE TABLE t(r INTEGER, b BLOB, d TEXT)")
    for _ in range(20):
        leader.execute("INSERT INTO t VALUES (random(), randomblob(16), datetime('now'))")
    dump = _assert_follower_matches(replica)
    rows = dump[1][1]
    assert len({row[0] for row in rows}) == 20 and len({row[1] for row in rows}) == 20
    follower = apsw.Connection(replica.follower_path)
    assert follower.execute("SELECT r, b, d FROM t ORDER BY rowid").fetchall() == \
        leader.execute("SELECT r, b, d FROM t ORDER BY rowid").fetchall()
    follower.close()
    replica.close()


# --- (d) a large transaction that spills its cache ---------------------------------------


def test_large_spilling_transaction_replicates_exactly(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("PRAGMA cache_size = 20")
    leader.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
    replica.replicate()
    # ~20 MB: 20,000 rows of 1000 random bytes, with an index that is written all over.
    leader.execute("BEGIN")
    leader.execute(f"INSERT INTO t(k, v) SELECT hex(randomblob(8)), randomblob(1000) FROM {_series(20000)}")
    leader.execute("UPDATE t SET v = randomblob(1000) WHERE id % 3 = 0")
    leader.execute("COMMIT")
    (transaction,) = replica.replicate()
    assert transaction.payload_bytes() > 20_000_000
    assert replica.capture.in_place_rewrites > 0  # the capture pitfall did happen
    _assert_follower_matches(replica)
    replica.checkpoint_leader()
    assert _page_hashes(replica.follower_path, 4096) == _page_hashes(replica.leader_path, 4096)
    replica.close()


# --- (e) schema changes ------------------------------------------------------------------


def test_create_index_and_alter_table_replicate(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("CREATE TABLE t(a INTEGER, b TEXT)")
    leader.execute(f"INSERT INTO t SELECT value, 'row ' || value FROM {_series(500)}")
    leader.execute("CREATE INDEX t_b ON t(b)")
    leader.execute("ALTER TABLE t ADD COLUMN c INTEGER DEFAULT 7")
    leader.execute("ALTER TABLE t RENAME TO u")
    leader.execute("ALTER TABLE u RENAME COLUMN a TO id")
    leader.execute("UPDATE u SET c = id * 2 WHERE id < 10")
    leader.execute("CREATE UNIQUE INDEX u_c ON u(id, c)")
    leader.execute("DROP INDEX t_b")
    dump = _assert_follower_matches(replica)
    assert [row[1] for row in dump[0]] == ["u_c", "u"]
    follower = apsw.Connection(replica.follower_path)
    assert follower.execute("SELECT c FROM u WHERE id = 5").get == 10
    assert "USING COVERING INDEX u_c" in " ".join(
        str(row) for row in follower.execute("EXPLAIN QUERY PLAN SELECT c FROM u WHERE id = 5").fetchall()
    )
    follower.close()
    replica.close()


# --- (f) failing statements --------------------------------------------------------------


def test_failing_statement_captures_nothing(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
    leader.execute("INSERT INTO t VALUES (1, x'01')")
    replica.replicate()
    with pytest.raises(apsw.ConstraintError):
        leader.execute("INSERT INTO t VALUES (1, x'02')")
    with pytest.raises(apsw.ConstraintError):
        leader.execute("INSERT INTO t VALUES (2, NULL)")
    assert replica.capture.take_committed() == []
    # A big statement that spills, then fails on its last row: nothing either.
    leader.execute("PRAGMA cache_size = 10")
    with pytest.raises(apsw.ConstraintError):
        leader.execute(f"INSERT INTO t SELECT value + 10, randomblob(2000) FROM {_series(2000)} "
                       "UNION ALL SELECT 1, x'03'")
    assert replica.capture.take_committed() == []
    # Inside an explicit transaction the failing statement is undone, the rest commits.
    leader.execute("BEGIN; INSERT INTO t VALUES (3, x'03')")
    with pytest.raises(apsw.ConstraintError):
        leader.execute("INSERT INTO t VALUES (3, x'04')")
    leader.execute("COMMIT")
    assert len(replica.replicate()) == 1
    assert _assert_follower_matches(replica)[1] == ("t", [(1, b"\x01"), (3, b"\x03")])
    replica.close()


# --- (g) the WAL restarts after a checkpoint ---------------------------------------------


@pytest.mark.parametrize("mode", ["PASSIVE", "RESTART", "TRUNCATE"])
def test_capture_survives_the_wal_restarting(tmp_path, vfs, mode):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("CREATE TABLE t(v)")
    for value in range(50):
        leader.execute("INSERT INTO t VALUES (?)", (value,))
    replica.replicate()
    salts_before = _wal_salts(replica.leader_path)
    leader.execute(f"PRAGMA wal_checkpoint({mode})")
    for round_number in range(3):
        leader.execute("INSERT INTO t VALUES (?)", (1000 + round_number,))
        leader.execute("UPDATE t SET v = v + 1 WHERE v < 10")
        assert len(replica.replicate()) == 2
        salts_after = _wal_salts(replica.leader_path)
        assert salts_after != salts_before  # a new WAL generation
        salts_before = salts_after
        leader.execute(f"PRAGMA wal_checkpoint({mode})")
    _assert_follower_matches(replica)
    replica.checkpoint_leader()
    assert _page_hashes(replica.follower_path, 4096) == _page_hashes(replica.leader_path, 4096)
    replica.close()


def test_a_reader_keeps_the_wal_from_restarting_and_capture_goes_on(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute("CREATE TABLE t(v)")
    reader, same_capture = open_leader_connection(replica.leader_path, vfs, database="main")
    assert same_capture is replica.capture
    reader.execute("BEGIN; SELECT count(*) FROM t").fetchall()
    leader.execute("INSERT INTO t VALUES (1)")
    leader.execute("PRAGMA wal_checkpoint(PASSIVE)")
    leader.execute("INSERT INTO t VALUES (2)")
    reader.execute("COMMIT")
    # A second writer connection: its commits land in the same capture, in order.
    reader.execute("INSERT INTO t VALUES (3)")
    leader.execute("INSERT INTO t VALUES (4)")
    assert len(replica.replicate()) == 5
    assert _assert_follower_matches(replica)[1] == ("t", [(1,), (2,), (3,), (4,)])
    reader.close()
    replica.close()


def test_reopening_a_leader_appends_to_its_existing_wal(tmp_path, vfs):
    replica = Replica(tmp_path, vfs, page_size=8192)
    replica.leader.execute("CREATE TABLE t(v); INSERT INTO t VALUES (1)")
    replica.replicate()
    replica.close()  # no checkpoint on close: the WAL keeps its frames
    assert pathlib.Path(database_files.wal_path(replica.leader_path)).stat().st_size > 0
    # A fresh capture attaches to a WAL it has not seen start; the page size comes from
    # the database, not from the argument.
    replica.leader, replica.capture = open_leader_connection(replica.leader_path, vfs, database="main")
    assert replica.capture.creation is None and replica.capture.page_size == 8192
    replica.leader.execute("INSERT INTO t VALUES (2); UPDATE t SET v = v * 10")
    assert len(replica.replicate()) == 2  # two autocommit statements
    assert _assert_follower_matches(replica)[1] == ("t", [(10,), (20,)])
    replica.checkpoint_leader()
    assert _page_hashes(replica.follower_path, 8192) == _page_hashes(replica.leader_path, 8192)
    replica.close()


# --- (h) several databases ---------------------------------------------------------------


def test_two_databases_are_captured_independently(tmp_path, vfs):
    first = Replica(tmp_path, vfs, name="first")
    second = Replica(tmp_path, vfs, name="second", page_size=1024)
    first.leader.execute("CREATE TABLE a(v)")
    second.leader.execute("CREATE TABLE b(v)")
    for value in range(10):
        first.leader.execute("INSERT INTO a VALUES (?)", (value,))
        second.leader.execute("INSERT INTO b VALUES (?)", (-value,))
        second.leader.execute("INSERT INTO b VALUES (?)", (value * 100,))
    first_committed = first.capture.take_committed()
    second_committed = second.capture.take_committed()
    assert len(first_committed) == 11 and len(second_committed) == 21
    assert {t.database for t in first_committed} == {"first"}
    assert {(t.database, t.page_size) for t in second_committed} == {("second", 1024)}
    for replica, committed in ((first, first_committed), (second, second_committed)):
        for transaction in committed:
            database_files.apply_transaction(replica.follower_path, transaction)
        _assert_follower_matches(replica)
    first.close()
    second.close()


# --- database files: guards, snapshots ---------------------------------------------------


def test_applying_under_a_wal_with_frames_is_refused(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    replica.leader.execute("CREATE TABLE t(v)")
    (transaction,) = replica.capture.take_committed()
    # The leader's own file has a WAL full of frames: writing pages under it is a bug.
    with pytest.raises(InvariantViolation, match="-wal holds"):
        database_files.apply_transaction(replica.leader_path, transaction)
    with pytest.raises(InvariantViolation):
        database_files.snapshot_database(replica.leader_path)
    replica.close()


def test_snapshot_and_restore(tmp_path, vfs):
    replica = Replica(tmp_path, vfs)
    leader = replica.leader
    leader.execute(f"CREATE TABLE t(v); INSERT INTO t SELECT randomblob(300) FROM {_series(100)}")
    replica.checkpoint_leader()
    image = database_files.snapshot_database(replica.leader_path)
    assert image == database_files.snapshot_database(replica.leader_path)
    restored = str(tmp_path / "restored.sqlite")
    database_files.restore_database(restored, image)
    # Entries after the snapshot apply on top of the restored file.
    replica.replicate()
    leader.execute("DELETE FROM t WHERE rowid % 2 = 0; INSERT INTO t VALUES ('after')")
    for transaction in replica.replicate():
        database_files.apply_transaction(restored, transaction)
    restored_dump, integrity = _follower_view(restored)
    assert integrity == "ok" and restored_dump == _dump(leader)
    database_files.delete_database(restored)
    assert not database_files.database_exists(restored)
    replica.close()


# --- (i) random histories ----------------------------------------------------------------

_CHECKPOINT_MODES = ["PASSIVE", "RESTART", "TRUNCATE"]
_operations = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 40), st.integers(0, 3000)),
    st.tuples(st.just("insert_many"), st.integers(1, 400), st.integers(0, 1500)),
    st.tuples(st.just("update"), st.integers(0, 40), st.integers(0, 3000)),
    st.tuples(st.just("delete"), st.integers(0, 40), st.integers(0, 20)),
    st.tuples(st.just("begin")),
    st.tuples(st.just("commit")),
    st.tuples(st.just("rollback")),
    st.tuples(st.just("savepoint")),
    st.tuples(st.just("rollback_to_savepoint")),
    st.tuples(st.just("checkpoint"), st.sampled_from(_CHECKPOINT_MODES)),
    st.tuples(st.just("replicate")),
)


def _note(what: str) -> None:
    if currently_in_test_context():  # hypothesis statistics; the seeded runs have none
        event(what)


def _random_operation(rng: random.Random) -> tuple:
    """The same operations as `_operations`, drawn from a seeded RNG (long histories)."""
    kind = rng.choice(["insert", "insert_many", "update", "delete", "begin", "commit", "rollback",
                       "savepoint", "rollback_to_savepoint", "checkpoint", "replicate"])
    match kind:
        case "insert" | "update":
            return (kind, rng.randint(0, 40), rng.randint(0, 3000))
        case "insert_many":
            return (kind, rng.randint(1, 400), rng.randint(0, 1500))
        case "delete":
            return (kind, rng.randint(0, 40), rng.randint(0, 20))
        case "checkpoint":
            return (kind, rng.choice(_CHECKPOINT_MODES))
        case _:
            return (kind,)


def _run_history(history, cache_pages: int) -> Capture:
    """Run `history` on a leader, replicating to a follower; check they end up equal."""
    with tempfile.TemporaryDirectory() as directory:
        capture_vfs = CaptureVfs(f"raftlite-capture-test-{next(_vfs_numbers)}")
        replica = Replica(pathlib.Path(directory), capture_vfs)
        leader = replica.leader
        try:
            leader.execute(f"PRAGMA cache_size = {cache_pages}")
            leader.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB); CREATE INDEX t_v ON t(substr(v, 1, 8))")
            in_transaction = False
            savepoints = 0
            for operation in history:
                match operation:
                    case ("insert", key, size):
                        leader.execute("INSERT OR REPLACE INTO t VALUES (?, randomblob(?))", (key, size))
                    case ("insert_many", count, size):
                        leader.execute("INSERT OR REPLACE INTO t SELECT 1000 + abs(random() % 5000), randomblob(?) "
                                       f"FROM {_series(count)}", (size,))
                    case ("update", key, size):
                        leader.execute("UPDATE t SET v = randomblob(?) WHERE k % 41 = ?", (size, key))
                    case ("delete", key, span):
                        leader.execute("DELETE FROM t WHERE k BETWEEN ? AND ? OR k % 97 = ?", (key, key + span, key))
                    case ("begin",) if not in_transaction:
                        leader.execute("BEGIN")
                        in_transaction = True
                    case ("commit",) if in_transaction:
                        leader.execute("COMMIT")
                        in_transaction, savepoints = False, 0
                    case ("rollback",) if in_transaction:
                        if replica.capture.uncommitted_frame_count():
                            _note("rolled back a transaction that had spilled")
                        leader.execute("ROLLBACK")
                        in_transaction, savepoints = False, 0
                    case ("savepoint",) if in_transaction:
                        savepoints += 1
                        leader.execute(f"SAVEPOINT s{savepoints}")
                    case ("rollback_to_savepoint",) if savepoints:
                        leader.execute(f"ROLLBACK TO s{savepoints}")
                    case ("checkpoint", mode) if not in_transaction:
                        leader.execute(f"PRAGMA wal_checkpoint({mode})")
                    case ("replicate",):
                        replica.replicate()
                    case _:
                        pass
            if in_transaction:
                leader.execute("COMMIT")
            if replica.capture.in_place_rewrites:
                _note("frames rewritten in place")
            _assert_follower_matches(replica)
            replica.checkpoint_leader()
            assert _page_hashes(replica.follower_path, 4096) == _page_hashes(replica.leader_path, 4096)
            return replica.capture
        finally:
            replica.close()
            capture_vfs.unregister()


@settings(max_examples=40)
@given(history=st.lists(_operations, min_size=5, max_size=60), cache_pages=st.sampled_from([5, 50, 2000]))
def test_random_histories_replicate(history, cache_pages):
    _run_history(history, cache_pages)


@pytest.mark.parametrize("seed", range(6))
def test_seeded_long_histories_replicate(seed):
    rng = random.Random(seed)
    capture = _run_history([_random_operation(rng) for _ in range(300)], cache_pages=[5, 50][seed % 2])
    assert capture.in_place_rewrites > 0


# --- (j) the entry format ----------------------------------------------------------------


def _sample_transaction() -> CommittedTransaction:
    return CommittedTransaction(
        database="bank", page_size=512, size_after_commit_pages=9,
        pages={1: bytes(range(256)) * 2, 4: b"\x04" * 512, 9: b"\x09" * 512},
    )


def test_entries_round_trip_and_decode_without_copies():
    transaction = _sample_transaction()
    encoded = encode_database_entry(transaction)
    assert encoded[0] == FRAME_FORMAT_VERSION
    decoded = decode_database_entry(encoded)
    assert decoded == transaction and list(decoded.pages) == [1, 4, 9]
    assert all(isinstance(image, memoryview) and image.readonly and image.obj is encoded
               for image in decoded.pages.values())
    assert encode_database_entry(decoded) == encoded  # stable bytes
    # Page order in the mapping does not change the bytes.
    shuffled = CommittedTransaction(database="bank", page_size=512, size_after_commit_pages=9,
                                    pages=dict(reversed(list(transaction.pages.items()))))
    assert encode_database_entry(shuffled) == encoded
    creation = CreateDatabase(database="données", page_size=1024, pages=(b"\x01" * 1024, b"\x02" * 1024))
    assert decode_database_entry(encode_database_entry(creation)) == creation
    empty = CommittedTransaction(database="x", page_size=65536, size_after_commit_pages=1, pages={})
    assert decode_database_entry(encode_database_entry(empty)) == empty


@given(
    page_size=st.sampled_from([512, 1024, 4096, 65536]),
    size=st.integers(1, 50),
    numbers=st.sets(st.integers(1, 50), max_size=6),
    name=st.text(min_size=1, max_size=20),
)
def test_entry_round_trip_property(page_size, size, numbers, name):
    pages = {number: bytes([number]) * page_size for number in sorted(numbers) if number <= size}
    transaction = CommittedTransaction(database=name, page_size=page_size, size_after_commit_pages=size, pages=pages)
    assert decode_database_entry(encode_database_entry(transaction)) == transaction


def _replace(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_malformed_entries_raise_frame_format_error():
    encoded = encode_database_entry(_sample_transaction())
    name_at = struct.calcsize("<BBIIIH")
    numbers_at = name_at + len("bank")
    malformed = {
        "empty": b"",
        "one byte": encoded[:1],
        "unknown version": bytes([FRAME_FORMAT_VERSION + 1]) + encoded[1:],
        "unknown kind": _replace(encoded, 1, b"\x07"),
        "truncated header": encoded[:7],
        "truncated images": encoded[:-1],
        "trailing bytes": encoded + b"\x00",
        "page size not a power of two": _replace(encoded, 2, struct.pack("<I", 1000)),
        "zero size after commit": _replace(encoded, 6, struct.pack("<I", 0)),
        "page beyond the size": _replace(encoded, numbers_at + 8, struct.pack("<I", 10)),
        "page zero": _replace(encoded, numbers_at, struct.pack("<I", 0)),
        "pages not ascending": _replace(encoded, numbers_at + 4, struct.pack("<I", 1)),
        "name not utf-8": _replace(encoded, name_at, b"\xff"),
        "empty name": _replace(encoded, name_at - 2, struct.pack("<H", 0)),
        "create without pages": _replace(encode_database_entry(
            CreateDatabase(database="x", page_size=512, pages=(bytes(512),))), 6, struct.pack("<I", 0)),
    }
    for description, data in malformed.items():
        with pytest.raises(FrameFormatError):
            decode_database_entry(data)
            pytest.fail(description)
    with pytest.raises(FrameFormatError, match="unknown database entry format version"):
        decode_database_entry(malformed["unknown version"])


def test_inconsistent_entries_are_not_encoded():
    bad = [
        CommittedTransaction(database="x", page_size=512, size_after_commit_pages=1, pages={1: b"short"}),
        CommittedTransaction(database="x", page_size=512, size_after_commit_pages=1, pages={2: bytes(512)}),
        CommittedTransaction(database="", page_size=512, size_after_commit_pages=1, pages={}),
        CommittedTransaction(database="x", page_size=3000, size_after_commit_pages=1, pages={}),
        CreateDatabase(database="x", page_size=512, pages=()),
    ]
    for entry in bad:
        with pytest.raises(FrameFormatError):
            encode_database_entry(entry)
    with pytest.raises(FrameFormatError):
        encode_database_entry("not an entry")
