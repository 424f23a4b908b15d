"""Concurrent use. DuckDB lets one process write a file, and no process write it while
another has it open. Writers (compute_load, compute.run's load, ingest) wait up to
$SFTSCOPE_LOCK_TIMEOUT for the file and then stop naming the holder's PID, changing
nothing; the app's short-lived reads let them in; `dbt run` waits the same way (the
profile's ingest.dbt_lock plugin) and fails naming the holder; two compute runs of one
pair cannot overlap; two loads of different pairs queue one after the other."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compute.run.cli import main as run_main
from ingest import warehouse
from ingest.compute_load import main as load_main
from ingest.stackexchange import main as ingest_main
from tests.conftest import DBT_DIR, ROOT, env_for, run_dbt
from tests.faults.helpers import (
    N_MATRICES,
    SITE,
    SITE_DIR,
    dump,
    holder,
    no_traceback,
    query,
    release,
    spawn_load,
    wait_for_line,
)


def _new_run(small_pair, out, name: str, capsys) -> None:
    """Pair `name` computed into out/name, not loaded."""
    assert run_main(["--base", str(small_pair / "base"), "--sft",
                     str(small_pair / "sft"), "--name", name, "--out", str(out),
                     "--skip-behaviour", "--no-load", "--no-progress"]) == 0
    capsys.readouterr()


def test_loader_waits_then_names_the_holder(base_warehouse, wh):
    """`python -m ingest.compute_load` while a notebook holds the file open."""
    before = dump(wh)
    with holder(wh) as h:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "ingest.compute_load",
             str(base_warehouse[1] / "small"), "--db", str(wh)],
            check=False, cwd=ROOT, env=env_for(SFTSCOPE_LOCK_TIMEOUT="1.5"),
            capture_output=True, text=True, timeout=120)
        waited = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    no_traceback(proc.stderr)
    assert f"is held by PID {h.pid}" in proc.stderr
    assert "waited 1.5 s" in proc.stderr and "Nothing was changed" in proc.stderr
    assert waited >= 1.5
    assert dump(wh) == before


def test_ingest_waits_then_names_the_holder(wh, monkeypatch, capsys):
    monkeypatch.setattr(warehouse, "LOCK_TIMEOUT_S", 1.0)
    before = dump(wh)
    with holder(wh) as h:
        rc = ingest_main([str(SITE_DIR), "--site", SITE, "--db", str(wh),
                          "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert f"is held by PID {h.pid}" in err
    assert dump(wh) == before


def test_compute_run_keeps_its_results_when_the_warehouse_stays_busy(
        small_pair, wh, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(warehouse, "LOCK_TIMEOUT_S", 1.0)
    out = tmp_path / "runs"
    args = ["--base", str(small_pair / "base"), "--sft", str(small_pair / "sft"),
            "--name", "late", "--out", str(out), "--db", str(wh), "--skip-behaviour",
            "--no-progress"]
    before = dump(wh)
    with holder(wh) as h:
        rc = run_main(args)
    err = capsys.readouterr().err
    assert rc == 3, err
    assert f"is held by PID {h.pid}" in err
    assert f"python -m ingest.compute_load {out / 'late'}" in err  # what to do next
    assert dump(wh) == before
    assert len(list((out / "late" / "spectra").glob("0*.parquet"))) == N_MATRICES
    # later, as the message says: the kept results load
    assert load_main([str(out / "late"), "--db", str(wh)]) == 0
    assert query(wh, "select count(*) from raw.spectra where pair = 'late'") == [
        (3 * N_MATRICES,)]


def test_app_reads_while_compute_loads(small_pair, wh, tmp_path, capsys):
    """The app's read path (app_lib.db.query: one short read-only connection per
    query) polls the warehouse while a load holds it for a second: the load goes in
    between two reads, the app's reads retry and succeed, and see the new pair."""
    from app_lib import db as app_db

    out = tmp_path / "runs"
    _new_run(small_pair, out, "fresh", capsys)
    seen, errors, retries, stop = [], [], [], threading.Event()

    def app() -> None:
        while not stop.is_set():
            try:
                seen.append(app_db.query("select count(*) as n from raw.spectra",
                                         path=wh)["n"][0])
            except Exception as exc:
                errors.append(exc)
            time.sleep(0.02)
        retries.append(app_db.retry_count())  # per thread

    reader = threading.Thread(target=app)
    reader.start()
    try:
        time.sleep(0.3)
        load = spawn_load(out / "fresh", wh, stall_s=1.0)
        wait_for_line(load, "in-transaction")
        _, err = load.communicate(timeout=120)
        time.sleep(0.3)
    finally:
        stop.set()
        reader.join()
    assert load.returncode == 0, err
    assert not errors, errors
    assert seen[0] == 3 * N_MATRICES and seen[-1] == 2 * 3 * N_MATRICES
    assert set(seen) == {3 * N_MATRICES, 2 * 3 * N_MATRICES}  # never half a load
    assert retries[0] > 0  # the app did meet the writer, and waited


@pytest.mark.slow
def test_dbt_run_waits_for_the_holder_then_runs(wh):
    """A notebook holds the file when `dbt run` starts: dbt waits, and runs as soon
    as the holder lets go (the holder process stays alive: the lock, not the
    process, is what dbt waits for)."""
    dbt = Path(sys.executable).with_name("dbt")
    with holder(wh) as h:
        proc = subprocess.Popen(
            [str(dbt), "run", "--select", "stg_compute__spectra"], cwd=DBT_DIR,
            env=env_for(wh, SFTSCOPE_LOCK_TIMEOUT="120"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        try:
            head = []
            for line in proc.stdout:  # dbt says this just before it connects
                head.append(line)
                if "Concurrency:" in line:
                    break
            else:
                raise AssertionError("".join(head) + f"exited {proc.wait()}")
            time.sleep(2.0)
            assert proc.poll() is None, "".join(head) + proc.stdout.read()
            release(h)
            released = time.monotonic()
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        took = time.monotonic() - released
    out = "".join(head) + out
    assert proc.returncode == 0, out[-4000:]
    # PASS=2: the model and the on-run-end hook that publishes the snapshot
    assert "PASS=2" in out and "held by" not in out, out[-4000:]
    assert took < 60, took  # it polls: no minute-long sleeps after the release
    assert query(wh, "select count(*) from duckdb_views() where view_name = "
                 "'stg_compute__spectra'") == [(1,)]


@pytest.mark.slow
def test_dbt_run_gives_up_naming_the_holder(wh):
    """The holder never lets go: dbt stops after $SFTSCOPE_LOCK_TIMEOUT, exit 2,
    naming the holder's PID and command line, without a traceback, changing
    nothing."""
    before = dump(wh)
    # held for as long as dbt may take to start (its parse alone can take a minute
    # on a busy machine): killed when dbt has given up
    with holder(wh, hold_s=600) as h:
        proc = run_dbt(wh, "run", "--select", "stg_compute__spectra", check=False,
                       SFTSCOPE_LOCK_TIMEOUT="3")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]
    assert f"is held by PID {h.pid} (" in out and "waited 3 s" in out, out[-4000:]
    no_traceback(out)
    # dbt's own clock, from connecting to giving up: the wait, not dbt's start-up
    waited = float(re.search(r"Finished running .*\(([\d.]+)s\)", out).group(1))
    assert 3 <= waited < 20, waited
    assert dump(wh) == before


def test_second_compute_run_of_the_same_pair_fails_clearly(small_pair, wh, tmp_path,
                                                           capsys):
    out = tmp_path / "runs"
    _new_run(small_pair, out, "busy", capsys)
    manifest = (out / "busy" / "run.json").read_bytes()
    before = dump(wh)
    with open(out / "busy" / ".lock", "a+") as fh:  # as a running compute.run holds it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.truncate(0)
        fh.write("PID 4242")
        fh.flush()
        rc = run_main(["--base", str(small_pair / "base"), "--sft",
                       str(small_pair / "sft"), "--name", "busy", "--out", str(out),
                       "--db", str(wh), "--skip-behaviour", "--no-progress",
                       "--force"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "another compute.run (PID 4242) is working on this pair" in err
    assert (out / "busy" / "run.json").read_bytes() == manifest  # --force did nothing
    assert dump(wh) == before


def test_two_pairs_loading_at_once_queue_and_both_complete(small_pair, wh, tmp_path,
                                                           capsys):
    out = tmp_path / "runs"
    for name in ("first", "second"):
        _new_run(small_pair, out, name, capsys)
    old = query(wh, "select run_id, tensor, role from raw.spectra order by all")
    first = spawn_load(out / "first", wh, stall_s=1.5)
    wait_for_line(first, "in-transaction")  # `first` holds the file, mid-transaction
    second = subprocess.Popen(
        [sys.executable, "-m", "ingest.compute_load", str(out / "second"), "--db",
         str(wh)], cwd=ROOT, env=env_for(SFTSCOPE_LOCK_TIMEOUT="60"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err1 = first.communicate(timeout=120)
    _, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    rows = query(wh, "select pair, count(*), count(distinct (tensor, role)), "
                 "count(distinct run_id) from raw.spectra group by pair order by pair")
    assert rows == [(p, 3 * N_MATRICES, 3 * N_MATRICES, 1)
                    for p in ("first", "second", "small")]
    runs = query(wh, "select pair, count(*) from raw.compute_runs where kind = "
                 "'spectra' group by pair order by pair")
    assert runs == [("first", 1), ("second", 1), ("small", 1)]
    assert query(wh, "select pair, kind from raw.compute_runs group by all "
                 "having count(*) > 1") == []  # one row per (pair, kind)
    assert query(wh, "select run_id, tensor, role from raw.spectra where pair = "
                 "'small' order by all") == old
