"""ingest.warehouse.writer_transaction, the unit of work of every load: commit and
publish on success; on an error (a dead connection included) roll back, publish
nothing and raise the error that caused it."""

from __future__ import annotations

import duckdb
import pytest

from ingest import snapshot
from ingest.warehouse import connect, transaction, writer_transaction


def _rows(db) -> list[tuple]:
    with connect(db, read_only=True) as con:
        return con.execute("select pair from raw.training_log order by 1").fetchall()


def _insert(con, pair: str) -> None:
    con.execute("insert into raw.training_log (pair, role, step, epoch, tokens_seen, "
                "lr) values (?, 'base', 0, 0, 0, 0)", [pair])


def test_commit_then_publish(tmp_path):
    db = tmp_path / "w.duckdb"
    with writer_transaction(db) as con:
        _insert(con, "a")
    assert snapshot.reader_path(db) != db  # a snapshot was published
    assert _rows(db) == [("a",)]


def test_error_rolls_back_and_publishes_nothing(tmp_path):
    db = tmp_path / "w.duckdb"
    with writer_transaction(db) as con:
        _insert(con, "a")
    published = snapshot.reader_path(db)
    with pytest.raises(ValueError, match="bad row"), writer_transaction(db) as con:
        _insert(con, "b")
        raise ValueError("bad row")
    assert snapshot.reader_path(db) == published
    assert _rows(db) == [("a",)]
    with connect(db) as con:  # the writer's file too, not only the snapshot
        assert con.execute("select count(*) from raw.training_log").fetchone() == (1,)


def test_a_dead_connection_raises_its_own_error(tmp_path):
    """The rollback of a closed connection fails; the error the caller sees is the
    one that broke the load, not that rollback's."""
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    con.execute("create table t (x int)")
    with pytest.raises(KeyboardInterrupt), transaction(con):
        con.execute("insert into t values (1)")
        con.close()
        raise KeyboardInterrupt
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    assert con.execute("select count(*) from t").fetchone() == (0,)
