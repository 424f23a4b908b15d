"""raw.training_log: the loader (python -m ingest.training_log) and its mart.

Row counts are checked against the CSV file itself; a bad file is refused naming the
file and the line, and leaves the warehouse as it was; loading twice replaces.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ingest import training_log as tl
from tests.conftest import query, run_py

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_LOG = ROOT / "models" / "demo" / "training_log.csv"
HEADER = ",".join(tl.COLUMNS)


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def test_shipped_log_loads_and_reloads_without_duplicates(tmp_path):
    db = tmp_path / "w.duckdb"
    rows = csv_rows(SHIPPED_LOG)
    other = write(tmp_path / "other.csv", "base,0,0,0,0,,7.6,7.6,0",
                  "base,1,0.5,64,0.001,7.5,,,0.1")
    assert tl.load_log(other, "other", db) == 2
    for _ in range(2):
        proc = run_py("-m", "ingest.training_log", str(SHIPPED_LOG.parent), "--pair",
                      "demo", db=db)
        assert f"raw.training_log {len(rows)} rows" in proc.stdout
        got = query(db, "select role, step, train_loss, heldout_post_loss "
                    "from raw.training_log where pair = 'demo' order by role, step")
        assert len(got) == len(rows)
    want = sorted((r["role"], int(r["step"]),
                   float(r["train_loss"]) if r["train_loss"] else None,
                   float(r["heldout_post_loss"]) if r["heldout_post_loss"] else None)
                  for r in rows)
    assert got == want
    assert query(db, "select count(*) from raw.training_log where pair = 'other'") \
        == [(2,)]
    # both phases, each with an evaluation before its first step
    assert {(r["role"], r["step"]) for r in rows if r["heldout_post_loss"]} >= {
        ("base", "0"), ("sft", "0")}


@pytest.mark.parametrize(("lines", "message"), [
    (["base,0,0,0,0,,7.6,7.6,0", "base,1,0.5,x,0.001,7.5,,,0.1"],
     "line 3: tokens_seen = 'x' is not int"),
    (["base,0,0,0,0,,nan,7.6,0"], "line 2: heldout_post_loss = nan is not finite"),
    (["tuned,0,0,0,0,,7.6,7.6,0"], "line 2: role 'tuned' is not one of base, sft"),
    (["base,0,0,0,0,,7.6,7.6,0", "base,0,0,0,0,,7.6,7.6,0"],
     "line 3: step 0 of base appears twice"),
    ([",0,0,0,0,,7.6,7.6,0"], "line 2: role is empty"),
])
def test_bad_file_named_and_nothing_changed(tmp_path, lines, message):
    db = tmp_path / "w.duckdb"
    tl.load_log(write(tmp_path / "good.csv", "sft,0,0,0,0,,5,5,0"), "demo", db)
    bad = write(tmp_path / "bad.csv", *lines)
    proc = run_py("-m", "ingest.training_log", str(bad), "--pair", "demo", db=db,
                  check=False)
    assert proc.returncode == 2
    assert f"{bad}: {message}" in proc.stderr
    assert "Nothing was changed" in proc.stderr
    assert query(db, "select role, step from raw.training_log") == [("sft", 0)]


def test_missing_column_and_missing_file(tmp_path):
    path = tmp_path / "training_log.csv"
    path.write_text("role,step\nbase,0\n")
    with pytest.raises(tl.TrainingLogError, match="line 1: missing column"):
        tl.read_log(tmp_path)
    with pytest.raises(tl.TrainingLogError, match="no such file"):
        tl.read_log(tmp_path / "nowhere")


def test_training_curve_mart(demo_warehouse):
    """dbt's fct_training_curve: every row of the file, SFT after pretraining on one
    axis, perplexity = exp(loss)."""
    rows = csv_rows(SHIPPED_LOG)
    got = query(demo_warehouse, "select role, step, global_step, heldout_post_loss, "
                "heldout_post_perplexity from marts.fct_training_curve "
                "where pair = 'demo'")
    assert len(got) == len(rows)
    last_base = max(int(r["step"]) for r in rows if r["role"] == "base")
    for role, step, global_step, loss, ppl in got:
        assert global_step == step + (last_base if role == "sft" else 0)
        if loss is not None:
            assert ppl == pytest.approx(2.718281828459045 ** loss)
