"""The app's SQL console under fault (its own tests, tests/test_app_sql.py, cover the
refusals of the parser check): what slips past the parser is still stopped by the
connection, and the console's slowest query (stopped at its time limit) holds the
warehouse no longer than a writer is willing to wait."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import duckdb
import pytest

from app_lib.sqlguard import check, run_readonly
from tests.conftest import ROOT, env_for
from tests.faults.helpers import N_MATRICES, dump, query

SLOW = ("with recursive r(i) as (select 1 union all select i + 1 from r) "
        "select count(*) from r")


@pytest.mark.parametrize("sql", [
    'select * from "{secret}"',  # a file as a quoted identifier: a replacement scan
    "select * from \"read_csv\"('{secret}')",  # a quoted function name
])
def test_what_passes_the_parser_check_still_cannot_read_files(sql, wh, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    sql = sql.format(secret=secret)
    check(sql)  # the text check lets these through ...
    with pytest.raises(duckdb.Error, match=r"(?i)permission|cannot access"):
        run_readonly(sql, path=wh)  # ... the connection does not


def test_loader_outwaits_the_consoles_slowest_query(base_warehouse, wh):
    """A console query runs until its time limit while a load wants the file: the
    load waits, gets the file when the query is stopped, and loads in full."""
    before = dump(wh)
    outcome: list[BaseException | None] = []

    def console() -> None:
        try:
            run_readonly(SLOW, path=wh, timeout_s=2.0)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=console)
    reader.start()
    time.sleep(0.3)  # the query is running
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ingest.compute_load", str(base_warehouse[1] / "small"),
         "--db", str(wh)], check=False, cwd=ROOT,
        env=env_for(SFTSCOPE_LOCK_TIMEOUT="30"), capture_output=True, text=True,
        timeout=120)
    waited = time.monotonic() - t0
    reader.join()
    assert isinstance(outcome[0], TimeoutError), outcome
    assert proc.returncode == 0, proc.stderr
    assert waited >= 1.0  # it did wait for the query to be stopped
    assert dump(wh) == before  # the same rows again, replaced in one transaction
    assert query(wh, "select count(*) from raw.spectra") == [(3 * N_MATRICES,)]
