"""The app's SQL console under fault (its own tests, tests/test_app_sql.py, cover the
refusals of the parser check): what slips past the parser is still stopped by the
connection, and the console's slowest query (stopped at its time limit) holds the
warehouse no longer than a writer is willing to wait."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
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


WIDE = "select i, repeat('x', 25000) as s from range(10001) t(i)"  # 250 MB of text
GROWTH = textwrap.dedent("""
    import json, resource, sys
    from app_lib.sqlguard import run_readonly
    if __name__ == "__main__":
        run_readonly("select 1", path=sys.argv[1])  # imports and forkserver warm
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = run_readonly(sys.argv[2], path=sys.argv[1], max_bytes=sys.argv[3])
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"rows": len(r.frame), "cut_bytes": r.cut_bytes,
                          "grew_mb": (after - before) / 1024}))
""")


def _growth(wh, cap: str) -> dict:
    script = wh.parent / "growth.py"  # forkserver children re-import the main file
    script.write_text(GROWTH)
    proc = subprocess.run([sys.executable, str(script), str(wh), WIDE, cap], cwd=ROOT,
                          env=env_for(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_console_caps_the_bytes_of_a_result(wh):
    """10,001 rows of 25 kB strings took the app's process from 157 MB to 873 MB:
    the rows cap (10,000) let them all through. The byte cap (50MB) keeps the first
    rows that fit, 50e6 / (25,000 + 8 + 4) = 1,998.7 rows by Arrow's count of the
    string, its offset and the integer; the app's process grows by less than half
    of what the whole result costs it (measured in the same test)."""
    capped = _growth(wh, "50MB")
    assert capped["cut_bytes"] and 1990 <= capped["rows"] <= 1999, capped
    whole = _growth(wh, "10GB")
    assert not whole["cut_bytes"] and whole["rows"] == 10000, whole
    assert capped["grew_mb"] < whole["grew_mb"] / 2, (capped, whole)


def test_console_byte_cap_reaches_the_page(wh, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SFTSCOPE_DB", str(wh))
    monkeypatch.setattr("app_lib.sqlguard.MAX_BYTES", "1MB")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/sql.py").run()
    at.text_area(key="sql_text").input(WIDE).run()
    at.button(key="sql_run").click().run()
    assert not at.exception and not at.error
    shown = at.dataframe[0].value  # the result, then the schema
    assert len(shown) == 39  # 1e6 // 25,012 bytes a row
    captions = " ".join(c.value for c in at.caption)
    assert "39 row(s) (cut at 1MB of data, SFTSCOPE_CONSOLE_MAX_BYTES)" in captions
    assert query(wh, "select count(*) from raw.spectra") == [(3 * N_MATRICES,)]
