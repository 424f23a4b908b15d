"""The SQL console refuses anything but one read-only query, and limits what runs;
the app's connections are read-only, bounded in their retries, and file-blind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from app_lib import db, sqlguard
from app_lib.sqlguard import QueryRefused, check, run_readonly


@pytest.fixture
def wh(tmp_path) -> Path:
    path = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create schema marts")
    con.execute("create table marts.t as select range as i, range % 7 as g "
                "from range(100)")
    con.close()
    (tmp_path / "secret.csv").write_text("a\n1\n")
    return path


ALLOWED = [
    "select * from marts.t",
    "  SELECT 1;  ",
    "with a as (select 1 as x) select * from a",
    "from marts.t limit 3",
    "describe marts.t",
    "show tables",
    "summarize marts.t",
    "pivot marts.t on g using count(*)",
    "values (1), (2)",
    "select 'attach' as word, 'copy; drop' as s  -- set load",
    "/* install */ select i from marts.t",
]

REFUSED = [
    ("", "Nothing"),
    ("select 1; select 2", "One statement"),
    ("attach '/tmp/x.duckdb' as x", "ATTACH"),
    ("copy marts.t to '/tmp/t.csv'", "COPY"),
    ("export database '/tmp/x'", "EXPORT"),
    ("install httpfs", "INSTALL"),
    ("load httpfs", "LOAD"),
    ("pragma version", "PRAGMA"),
    ("set threads = 1", "SET"),
    ("call pragma_version()", "CALL"),
    ("create table x (i int)", "CREATE"),
    ("insert into marts.t values (1, 1)", "INSERT"),
    ("update marts.t set i = 0", "UPDATE"),
    ("delete from marts.t", "DELETE"),
    ("drop table marts.t", "DROP"),
    ("checkpoint", "CHECKPOINT"),
    ("select * from read_csv('/etc/passwd')", "read_csv"),
    ("select * from read_parquet('x.parquet')", "read_parquet"),
    ("select * from read_text('/etc/passwd')", "read_text"),
    ("select * from glob('/*')", "glob"),
    ("select * from '/etc/passwd'", "file"),
    ("select * from marts.t join 'x.csv' using (i)", "file"),
    ("select * from query('select 1')", "query"),
    ("select * from parquet_scan('x')", "parquet_scan"),
    ("with x as (select 1) insert into marts.t select 1, 1", "INSERT"),
    ("explain select 1", "EXPLAIN"),
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_check_allows_read_only_queries(sql):
    assert check(sql)


@pytest.mark.parametrize(("sql", "why"), REFUSED)
def test_check_refuses(sql, why):
    with pytest.raises(QueryRefused, match=f"(?i){why}"):
        check(sql)


def test_run_readonly_rows_and_limit(wh):
    res = run_readonly("select * from marts.t order by i", path=wh)
    assert len(res.frame) == 100 and not res.truncated
    res = run_readonly("select * from marts.t order by i", max_rows=10, path=wh)
    assert len(res.frame) == 10 and res.truncated
    assert res.frame["i"].tolist() == list(range(10))
    assert len(run_readonly("describe marts.t", path=wh).frame) == 2
    pivot = "pivot (select g from marts.t) on g using count(*)"
    assert run_readonly(pivot, path=wh).frame.shape == (1, 7)
    # past the parser, a file named as a table is still unreadable
    with pytest.raises(duckdb.Error):
        run_readonly(f"select * from marts.t, '{wh.parent / 'secret.csv'}'", path=wh)


def test_run_readonly_time_limit(wh):
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="stopped"):
        run_readonly("select count(*) from range(1000000000000) a", timeout_s=0.5,
                     path=wh)
    assert time.monotonic() - started < 10
    # the warehouse is usable afterwards
    assert len(run_readonly("from marts.t", path=wh).frame) == 100


def test_connection_itself_cannot_write_or_read_files(wh):
    """Even past the parser: read_only, external access off, configuration locked."""
    secret = wh.parent / "secret.csv"
    with db.connect(wh) as con:
        for sql in (f"select * from read_csv('{secret}')", f"from '{secret}'",
                    f"attach '{wh.parent / 'other.duckdb'}' as o",
                    f"copy marts.t to '{wh.parent / 'out.csv'}'",
                    "set enable_external_access = true",
                    "create table marts.x (i int)", "delete from marts.t"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    assert not (wh.parent / "out.csv").exists()
    assert not (wh.parent / "other.duckdb").exists()


def test_missing_warehouse(tmp_path):
    with pytest.raises(db.WarehouseMissing):
        db.query("select 1", path=tmp_path / "nope.duckdb")
    assert not (tmp_path / "nope.duckdb").exists()


def test_busy_warehouse_bounded_retry(wh, monkeypatch):
    """A writer in another process holds the file: a bounded number of tries,
    then WarehouseBusy naming it; once it lets go, reads work again."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)"), str(wh)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(db, "ATTEMPTS", 3)
        monkeypatch.setattr(db, "FIRST_PAUSE_S", 0.05)
        before = db.retry_count()
        started = time.monotonic()
        with pytest.raises(db.WarehouseBusy, match=f"PID {holder.pid}.*tried 3 times"):
            db.query("select 1", path=wh)
        assert time.monotonic() - started < 5
        assert db.retry_count() - before == 2
    finally:
        holder.kill()
        holder.wait()
    assert db.query("select count(*) as n from marts.t", path=wh)["n"][0] == 100


def test_limits_are_modest():
    assert sqlguard.MAX_ROWS <= 100_000 and sqlguard.TIMEOUT_S <= 60
