"""The SQL console's resource limits: memory, threads, temporary disk and time are
bounded, a query over any of them is stopped promptly with a message naming the
limit, and the app's own process neither grows nor dies."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from app_lib import db, sqlguard
from app_lib.db import Limits, size_bytes
from app_lib.sqlguard import LimitExceeded, run_readonly

APP = str(Path(__file__).resolve().parent.parent / "app.py")
HUGE_LIST = "select list(range(400000000))"  # one 3.2 GB value
SETTINGS = ("select current_setting('threads') as threads, "
            "current_setting('memory_limit') as memory, "
            "current_setting('max_temp_directory_size') as temp, "
            "current_setting('temp_directory') as temp_directory")


@pytest.fixture
def wh(tmp_path) -> Path:
    path = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create schema marts")
    con.execute("create table marts.t as select range as i from range(100)")
    con.close()
    return path


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_huge_value_is_stopped_at_once_by_the_memory_limit(wh):
    """Under DuckDB's memory_limit alone this query ran past its time limit for a
    minute and grew to 15 GB; with the default limits it stops in seconds."""
    run_readonly("select 1", path=wh)  # the console's server process is up
    before = rss_peak_mb()
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match="more memory") as err:
        run_readonly(HUGE_LIST, path=wh)
    assert time.monotonic() - started < 20  # ~0.2 s on a quiet machine
    assert f"({db.LIMITS.memory}, SFTSCOPE_APP_MEMORY_LIMIT)" in str(err.value)
    assert rss_peak_mb() - before < 300  # the 3.2 GB never came near this process
    assert len(run_readonly("from marts.t", path=wh).frame) == 100


def test_the_limits_reach_duckdb_and_the_temporary_folder_goes(wh):
    limits = Limits("100MB", 1, "10MB")
    row = run_readonly(SETTINGS, path=wh, limits=limits).frame.iloc[0]
    assert row["threads"] == 1
    assert row["memory"] == "95.3 MiB" and row["temp"] == "9.5 MiB"  # 1e8, 1e7 B
    assert "sftscope-console-" in row["temp_directory"]
    assert not Path(row["temp_directory"]).exists()
    # The pages' connections carry the app's limits as well.
    with db.connect(wh) as con:
        threads, memory = con.execute(
            "select current_setting('threads'), current_setting('memory_limit')"
        ).fetchone()
    assert threads == db.LIMITS.threads
    assert memory == duckdb.connect(config={"memory_limit": db.LIMITS.memory}).execute(
        "select current_setting('memory_limit')").fetchone()[0]


def test_a_query_spilling_past_the_temporary_disk_cap_is_stopped(wh):
    sql = ("select max(r) from (select row_number() over (order by hash(i)) as r "
           "from range(20000000) t(i))")
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match="more temporary disk") as err:
        run_readonly(sql, path=wh, limits=Limits("100MB", 1, "10MB"), timeout_s=60)
    assert "(10MB, SFTSCOPE_APP_TEMP_LIMIT)" in str(err.value)
    assert time.monotonic() - started < 30


def test_a_query_deaf_to_interrupts_is_killed_at_the_time_limit(wh):
    """Building a list does not check DuckDB's interrupt (it ran 30 s past a 15 s
    interrupt); the console kills its process instead."""
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="over 1 s"):
        run_readonly("select list(range(40000000))", path=wh, timeout_s=1,
                     limits=Limits("8GB", 1, "1GB"))
    assert time.monotonic() - started < 4


def test_the_console_page_says_which_limit_and_keeps_serving(wh, monkeypatch):
    monkeypatch.setenv("SFTSCOPE_DB", str(wh))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("app_pages/sql.py").run()
    at.text_area(key="sql_text").input(HUGE_LIST).run()
    at.button(key="sql_run").click().run()
    assert not at.exception
    assert "more memory than the console allows" in at.error[0].value
    at.text_area(key="sql_text").input("select count(*) as n from marts.t").run()
    at.button(key="sql_run").click().run()
    assert not at.error
    assert at.dataframe[0].value["n"].tolist() == [100]  # the result, then the schema


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SFTSCOPE_APP_MEMORY_LIMIT", "512MiB")
    monkeypatch.setenv("SFTSCOPE_APP_THREADS", "1")
    monkeypatch.setenv("SFTSCOPE_APP_TEMP_LIMIT", "1.5GB")
    assert Limits.from_env() == Limits("512MiB", 1, "1.5GB")
    assert size_bytes("512MiB") == 512 * 2**20 and size_bytes("1.5GB") == 1_500_000_000
    monkeypatch.setenv("SFTSCOPE_APP_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match=r"SFTSCOPE_APP_MEMORY_LIMIT.*'lots'"):
        Limits.from_env()


def test_limits_are_modest_by_default():
    d = Limits()
    assert size_bytes(d.memory) <= 4 * 10**9 and d.threads <= 4
    assert size_bytes(d.temp) <= 16 * 10**9
    assert sqlguard.PROCESS_HEADROOM <= 2**30
