"""Helpers of the fault suite: warehouse dumps, a lock holder, output checks."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from compute.fixtures.planted import PairSpec
from tests.conftest import ROOT, SE_SAMPLES, env_for, query  # noqa: F401

SMALL = PairSpec(hidden=64, intermediate=160, layers=2, heads=2, kv_heads=1, vocab=512)
N_MATRICES = 2 * 7 + 2  # 7 per block + embed_tokens + lm_head
SITE_DIR = SE_SAMPLES / "blender-meta-2013"
SITE = "blender.meta"


def dump(db: Path) -> dict[str, tuple]:
    """Every table of every schema: (row count, order-free hash of all rows). Equal
    dumps = the same contents; a table created or dropped shows too."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [f"{s}.{t}" for s, t in con.execute(
            "select schema_name, table_name from duckdb_tables() order by all"
        ).fetchall()]
        return {n: con.execute(f"select count(*), coalesce(sum(hash(t::varchar)), 0) "
                               f"from {n} t").fetchone() for n in names}
    finally:
        con.close()


def file_digest(path: Path) -> str | None:
    """sha256 of the warehouse file and its WAL (None when absent)."""
    if not path.exists():
        return None
    h = hashlib.sha256(path.read_bytes())
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        h.update(wal.read_bytes())
    return h.hexdigest()


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


HOLDER = textwrap.dedent("""
    import select, sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    con.execute("select count(*) from raw.spectra").fetchall()
    print("held", flush=True)
    select.select([sys.stdin], [], [], float(sys.argv[2]))  # hold_s or a line
    con.close()
    print("released", flush=True)
    time.sleep(60)
""")


@contextlib.contextmanager
def holder(db: Path, hold_s: float = 60) -> Iterator[subprocess.Popen]:
    """A process that holds the warehouse open read-only (as a notebook or the app
    mid-query would) for `hold_s` seconds, or until `release(proc)`; killed on
    exit."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(hold_s)],
                            cwd=ROOT, env=env_for(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "held", (line, proc.stderr.read() if proc.poll() else "")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def release(proc: subprocess.Popen) -> None:
    """Make a `holder` close its connection now (it stays alive)."""
    proc.stdin.write("release\n")
    proc.stdin.flush()
    wait_for_line(proc, "released", timeout=30)


def wait_for_line(proc: subprocess.Popen, marker: str, timeout: float = 120) -> None:
    """Read proc's stdout until a line equal to `marker` (the process must print it
    flushed); fails with the process's output if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before {marker!r}\n{out}\n"
                                 f"{err}")
        if line.strip() == marker:
            return
    raise AssertionError(f"no {marker!r} within {timeout} s")


LOAD_DRIVER = textwrap.dedent("""
    import sys, time
    import ingest.compute_load as cl

    stall = float(sys.argv.pop(1))
    real = cl.replace_pair_rows

    def replace_then_stall(con, table, pair, select_sql, params=None):
        n = real(con, table, pair, select_sql, params)
        if table == "vector_changes":  # spectra replaced, not committed
            print("in-transaction", flush=True)
            time.sleep(stall)
        return n

    cl.replace_pair_rows = replace_then_stall
    sys.exit(cl.main(sys.argv[1:]))
""")


def spawn_load(run_dir: Path, db: Path, stall_s: float) -> subprocess.Popen:
    """`python -m ingest.compute_load run_dir --db db`, but stalling `stall_s` seconds
    inside its transaction (after replacing the spectra) and saying so on stdout:
    the real loader, one internal step wrapped; the product has no hook for this."""
    return subprocess.Popen(
        [sys.executable, "-c", LOAD_DRIVER, str(stall_s), str(run_dir), "--db", str(db)],
        cwd=ROOT, env=env_for(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
