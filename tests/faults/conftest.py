"""Fixtures of the fault suite: a tiny pair and a small warehouse built once.

Most faults are driven in-process (compute.run.main, compute.pairs.doctor.main, ...: the same
code the command lines run, minus a 5-10 s interpreter start on a loaded machine); the
faults that need a second process (SIGKILL, lock contention) use subprocesses that
import only what they need.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compute.fixtures.planted import build_pair
from tests.faults.helpers import SITE, SITE_DIR, SMALL


@pytest.fixture(scope="session")
def small_pair(tmp_path_factory) -> Path:
    """A tiny Qwen2 pair (base/, sft/): 16 matrices, builds in seconds."""
    out = tmp_path_factory.mktemp("faults") / "pair"
    build_pair(out, SMALL)
    return out


@pytest.fixture(scope="session")
def base_warehouse(tmp_path_factory, small_pair) -> tuple[Path, Path]:
    """(warehouse, runs folder): pair 'small' (spectra, loaded by compute.run) and the
    site blender.meta. Read-only for tests: use the `wh` fixture to change it."""
    from compute.run.cli import main as run_main
    from ingest.stackexchange import LoadOptions, load

    work = tmp_path_factory.mktemp("faults_wh")
    db, runs = work / "warehouse.duckdb", work / "runs"
    load(SITE_DIR, LoadOptions(site=SITE, db=db, workers=1, progress=False))
    rc = run_main(["--base", str(small_pair / "base"), "--sft", str(small_pair / "sft"),
                   "--name", "small", "--out", str(runs), "--db", str(db),
                   "--skip-behaviour", "--no-progress"])
    assert rc == 0
    return db, runs


@pytest.fixture
def wh(base_warehouse, tmp_path) -> Path:
    """A private copy of the base warehouse."""
    db = tmp_path / "warehouse.duckdb"
    shutil.copyfile(base_warehouse[0], db)
    return db


@pytest.fixture
def pair_copy(small_pair, tmp_path) -> Path:
    """A private copy of the tiny pair, to damage."""
    out = tmp_path / "pair"
    shutil.copytree(small_pair, out)
    return out
