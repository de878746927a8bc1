"""database_files.apply_transactions: a batch written at once leaves exactly the bytes
that applying its transactions one at a time leaves."""

import os

import pytest
from hypothesis import given, settings, strategies as st

from raftlite.actors import database_files
from raftlite.core.frames import CommittedTransaction

PAGE = 512

pytestmark = pytest.mark.timeout(120)


def transaction(size_pages: int, pages: dict[int, int]) -> CommittedTransaction:
    return CommittedTransaction(
        database="db", page_size=PAGE, size_after_commit_pages=size_pages,
        pages={number: bytes([fill]) * PAGE for number, fill in pages.items()},
    )


transactions = st.lists(
    st.integers(min_value=1, max_value=12).flatmap(
        lambda size: st.builds(
            transaction, st.just(size),
            st.dictionaries(st.integers(min_value=1, max_value=size), st.integers(min_value=1, max_value=255), max_size=4),
        )
    ),
    min_size=1, max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(initial_pages=st.integers(min_value=0, max_value=12), batch=transactions)
def test_a_batch_leaves_the_same_file_as_one_transaction_at_a_time(tmp_path_factory, initial_pages, batch):
    directory = tmp_path_factory.mktemp("apply")
    one_by_one, together = str(directory / "a.sqlite"), str(directory / "b.sqlite")
    initial = bytes(range(256)) * (initial_pages * PAGE // 256)
    for path in (one_by_one, together):
        with open(path, "wb") as file:
            file.write(initial)
    for item in batch:
        database_files.apply_transaction(one_by_one, item)
    database_files.apply_transactions(together, batch)
    with open(one_by_one, "rb") as a, open(together, "rb") as b:
        assert a.read() == b.read()


def test_a_shrink_then_a_growth_without_pages_leaves_zeros(tmp_path):
    path = str(tmp_path / "db.sqlite")
    with open(path, "wb") as file:
        file.write(b"\xaa" * (4 * PAGE))
    database_files.apply_transactions(path, [transaction(2, {1: 1}), transaction(4, {4: 4})])
    with open(path, "rb") as file:
        data = file.read()
    assert data == b"\x01" * PAGE + b"\xaa" * PAGE + bytes(PAGE) + b"\x04" * PAGE
    assert os.path.getsize(path) == 4 * PAGE
