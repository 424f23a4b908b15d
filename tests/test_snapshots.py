"""Readers apart from writers (ingest/snapshot.py): the app reads the published
snapshot, so a writer never waits for it and it never waits for a writer, and a page
sees one committed state: the one before a build or the one after, never a mix. Once
there is a snapshot, readers never read the file itself; a change nothing published
is shown as the last snapshot and a notice naming `python -m ingest.publish`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from app_lib import db
from ingest import snapshot, warehouse

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "warehouse_v1.sql"
TABLES = ("a", "b", "c")

# A writer like dbt: each table rebuilt in its own transaction, one after the other,
# then the state published. Generation k holds k in every table.
WRITER = textwrap.dedent("""
    import sys
    from ingest import snapshot, warehouse

    path, generations = sys.argv[1], int(sys.argv[2])
    for k in range(2, generations + 1):
        with warehouse.connect(path, timeout_s=5) as con:
            for t in ("a", "b", "c"):
                con.execute(f"create or replace table marts.{t} as "
                            f"select {k} as k, range as i from range(20000)")
            snapshot.publish(con, path)
    print("done", flush=True)
""")


@pytest.fixture
def wh(tmp_path) -> Path:
    """Generation 1 in marts.a, b, c, published."""
    path = tmp_path / "warehouse.duckdb"
    with warehouse.connect(path) as con:
        con.execute("create schema marts")
        for t in TABLES:
            con.execute(f"create table marts.{t} as select 1 as k, range as i "
                        "from range(20000)")
        snapshot.publish(con, path)
    return path


def page(path: Path) -> tuple[int, ...]:
    """What a page does: fix the source once, then one query per table."""
    src, _ = db.source()
    assert Path(src).parent.parent == snapshot.root(path)  # a snapshot, not the file
    note = db.notice()  # a publishing writer's work never reads as unpublished
    assert note is None or note.writing, note
    return tuple(int(db.query(f"select max(k) as k from marts.{t}", path=src)["k"][0])
                 for t in TABLES)


def test_pages_during_repeated_builds_see_old_or_new_never_a_mix(wh, monkeypatch):
    monkeypatch.setenv("SFTSCOPE_DB", str(wh))
    generations = 8
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(wh), str(generations)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    seen: list[tuple[int, ...]] = []
    errors: list[BaseException] = []
    retries_before = db.retry_count()

    def reader() -> None:
        while writer.poll() is None:
            try:
                seen.append(page(wh))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    _, err = writer.communicate(timeout=240)
    for t in threads:
        t.join()
    assert writer.returncode == 0, err  # the writer never waited for a reader
    assert not errors, errors[:3]
    assert db.retry_count() == retries_before  # no reader waited for the writer
    assert seen and all(len(set(s)) == 1 for s in seen), [s for s in seen
                                                          if len(set(s)) > 1][:5]
    assert len({s[0] for s in seen}) >= 2  # the readers did see the states change
    assert page(wh) == (generations,) * 3


def test_an_open_reader_does_not_block_a_writer(wh):
    with db.connect(wh) as con:
        assert con.execute("select max(k) from marts.a").fetchone() == (1,)
        with warehouse.connect(wh, timeout_s=1) as writer:  # WarehouseBusy if blocked
            writer.execute("create or replace table marts.a as select 2 as k")
            snapshot.publish(writer, wh)
        # The open connection still reads its state; a new one reads the new state.
        assert con.execute("select max(k) from marts.a").fetchone() == (1,)
    assert db.query("select max(k) as k from marts.a", path=wh)["k"][0] == 2


def test_a_writer_holding_the_file_does_not_block_readers(wh, monkeypatch, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]);"
         " c.execute('create or replace table marts.b as select 9 as k');"
         " print('held', flush=True); time.sleep(60)", str(wh)],
        stdout=subprocess.PIPE, text=True)
    monkeypatch.setenv("SFTSCOPE_DB", str(wh))
    try:
        assert holder.stdout.readline().strip() == "held"
        before = db.retry_count()
        started = time.monotonic()
        assert db.query("select max(k) as k from marts.b", path=wh)["k"][0] == 1
        assert time.monotonic() - started < 2 and db.retry_count() == before
        with warehouse.connect(wh, read_only=True, timeout_s=1) as con:  # ad hoc
            assert con.execute("select max(k) from marts.b").fetchone() == (1,)
        note = db.notice()
        assert note.writing and f"PID {holder.pid}" in note.text
    finally:
        holder.kill()
        holder.wait()
    # Written without publishing (its commit is in the WAL) and free again: readers
    # still read the snapshot, never the file, and are told how to publish it.
    assert (snapshot.root(wh) / "current").exists()
    capsys.readouterr()
    with db.connect(wh) as reader:  # the file stays free for writers meanwhile
        assert reader.execute("select max(k) from marts.b").fetchone() == (1,)
        with warehouse.connect(wh, timeout_s=1):
            pass
    note = db.notice()
    assert note is not None and not note.writing
    assert "changed after its last snapshot" in note.text
    assert f"python -m ingest.publish --db {wh}" in note.text
    with warehouse.connect(wh, read_only=True) as con:  # compute.run.summary's way in
        assert con.execute("select max(k) from marts.b").fetchone() == (1,)
    assert f"warning: {note.text}" in capsys.readouterr().err
    # Publishing it by hand: readers see the change, and nothing more is said.
    out = subprocess.run([sys.executable, "-m", "ingest.publish", "--db", str(wh)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "published" in out.stdout, out.stderr
    assert db.query("select max(k) as k from marts.b", path=wh)["k"][0] == 9
    assert db.notice() is None
    # the command's old name still publishes, and says where it moved
    out = subprocess.run([sys.executable, "-m", "ingest.snapshot", "--db", str(wh)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "published" in out.stdout, out.stderr
    assert "now `python -m ingest.publish`" in out.stderr


def test_a_change_checkpointed_without_publishing_is_noticed(wh):
    """A `duckdb` shell that wrote and closed: the WAL is gone, the header is new."""
    with duckdb.connect(str(wh)) as con:
        con.execute("create or replace table marts.c as select 7 as k")
    assert not wh.with_name(wh.name + ".wal").exists()
    assert snapshot.changed_since(wh, snapshot.current(wh))
    assert db.query("select max(k) as k from marts.c", path=wh)["k"][0] == 1
    # Opening, checkpointing and closing with nothing to write is no change.
    with warehouse.connect(wh) as con:
        snapshot.publish(con, wh)
    for read_only in (True, False):
        with duckdb.connect(str(wh), read_only=read_only) as con:
            con.execute("checkpoint" if not read_only else "select 1")
    assert not snapshot.changed_since(wh, snapshot.current(wh))
    assert snapshot.notice(wh) is None


def test_the_app_says_the_warehouse_changed_after_its_snapshot(wh, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SFTSCOPE_DB", str(wh))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception and not at.warning
    with duckdb.connect(str(wh)) as con:
        con.execute("create or replace table marts.a as select 5 as k")
    at.run()
    assert not at.exception
    assert any("changed after its last snapshot" in w.value
               and "python -m ingest.publish" in w.value for w in at.warning)


def test_publishing_keeps_the_writers_lock(wh):
    """The copy is read in another process: closing the file in the writer's would
    drop DuckDB's lock, and a second writer could open the file alongside."""
    with warehouse.connect(wh) as con:
        con.execute("create or replace table marts.a as select 2 as k")
        snapshot.publish(con, wh)
        assert snapshot.writer(wh) == os.getpid()
        other = subprocess.run(
            [sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1])",
             str(wh)], capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and "lock" in other.stderr, other.stderr
    assert snapshot.writer(wh) is None and snapshot.notice(wh) is None


def test_old_snapshots_are_pruned_after_their_grace(wh, monkeypatch):
    monkeypatch.setattr(snapshot, "GRACE_S", 0.0)
    for _ in range(4):
        time.sleep(0.01)
        with warehouse.connect(wh) as con:
            snapshot.publish(con, wh)
    kept = sorted(p.name for p in snapshot.root(wh).iterdir())
    assert kept == ["4", "5", "current"]
    assert os.readlink(snapshot.root(wh) / "current") == "5"


def test_snapshots_off(wh, monkeypatch, tmp_path):
    monkeypatch.setenv("SFTSCOPE_SNAPSHOTS", "0")
    other = tmp_path / "other.duckdb"
    with warehouse.connect(other) as con:
        assert snapshot.publish(con, other) is None
    assert not snapshot.root(other).exists()
    # Readers read the file itself then, even where snapshots were published before.
    with warehouse.connect(wh) as con:
        con.execute("create or replace table marts.a as select 3 as k")
        assert snapshot.publish(con, wh) is None
    assert db.query("select max(k) as k from marts.a", path=wh)["k"][0] == 3
    assert snapshot.notice(wh) is None


def dbt(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SFTSCOPE_DB": str(path),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    return subprocess.run([str(Path(sys.executable).parent / "dbt"), *args],
                          cwd=ROOT / "dbt_project", env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_dbt_publishes_after_a_good_run_and_not_after_a_failed_one(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(FIXTURE.read_text())
    ok = dbt(path, "run", "--select", "stg_stackexchange__tags")
    assert ok.returncode == 0, ok.stdout[-3000:]
    first = snapshot.current(path)
    assert first is not None and snapshot.notice(path) is None  # dbt has closed it
    with duckdb.connect(str(first), read_only=True) as con:
        assert con.execute("select count(*) from staging.stg_stackexchange__tags"
                           ).fetchone() == (3,)
    with duckdb.connect(str(path)) as con:  # a model that cannot build
        con.execute("alter table raw.se_tags rename column tag_name to renamed")
    bad = dbt(path, "run", "--select", "stg_stackexchange__tags")
    assert bad.returncode == 1
    assert snapshot.current(path) == first  # the last good state stays published
    note = snapshot.notice(path)  # ... and readers are told the file changed since
    assert note is not None and not note.writing
