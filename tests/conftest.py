"""Shared fixtures: tiny pairs and a warehouse built by the real pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Real Stack Exchange dump files (CC BY-SA; samples/stackexchange/SOURCES.md)
SE_SAMPLES = ROOT / "samples" / "stackexchange"
DBT_DIR = ROOT / "dbt_project"
# Fewer prompts than `make demo` scores, so the session fixture stays quick.
DEMO_VARS = "{prompt_per_group: 12}"


def env_for(db: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    env["PYTHONPATH"] = str(ROOT)
    if db is not None:
        env["SFTSCOPE_DB"] = str(db)
    env.update(extra)
    return env


def run_py(*args: str, db: Path | None = None, check: bool = True, cwd: Path = ROOT,
           timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`python -m ...` as a user runs it, in a subprocess."""
    proc = subprocess.run([sys.executable, *args], check=False, cwd=cwd,
                          env=env_for(db, **env), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def query(db: Path, sql: str, params=None) -> list[tuple]:
    """Rows of `sql` from a short-lived read-only connection to `db`."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def run_dbt(db: Path, *args: str, check: bool = True,
            **env: str) -> subprocess.CompletedProcess:
    dbt = Path(sys.executable).with_name("dbt")
    proc = subprocess.run([str(dbt), *args], check=False, cwd=DBT_DIR,
                          env=env_for(db, **env), capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"dbt {' '.join(args)} failed\n{proc.stdout[-6000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_pair(tmp_path_factory) -> Path:
    """The planted pair (base/, sft/, planted.json; `--pair planted`), built once."""
    from compute.demo import build_pair

    out = tmp_path_factory.mktemp("models") / "demo"
    build_pair(out)
    return out


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory, demo_pair) -> Path:
    """A warehouse built as `make demo` builds it (sample site, prompts, spectra,
    behaviour, the shipped demo pair's training log, dbt build), on the planted pair
    (named 'planted'). Read-only for tests: copy it to change it."""
    work = tmp_path_factory.mktemp("demo_warehouse")
    db = work / "warehouse.duckdb"
    have_site = (ROOT / "ingest" / "demo_site.py").exists()
    if have_site:
        run_py("-m", "ingest.demo_site", str(work / "site"))
        run_py("-m", "ingest.stackexchange", str(work / "site"), "--site",
               "physics.demo", db=db)
        run_dbt(db, "build", "--quiet", "--select", "+prompts", "--vars", DEMO_VARS)
    run_py("-m", "compute.run", "--base", str(demo_pair / "base"), "--sft",
           str(demo_pair / "sft"), "--name", "planted", "--out", str(work / "runs"),
           "--no-progress", *([] if have_site else ["--skip-behaviour"]), db=db)
    run_py("-m", "ingest.training_log", str(ROOT / "models" / "demo"), "--pair",
           "demo", db=db)
    run_dbt(db, "build", "--quiet", "--vars", DEMO_VARS)
    return db
