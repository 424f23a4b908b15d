"""bench/lora_recovery.py's reading of a recovery's timings, in this process: per rank
the sums of its steps' seconds (both 1-D settings), from timings.json, or from
ranks.parquet's wall seconds where a recovery wrote no timings.json (the timing
itself is the bench's job, not a test's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import lora_recovery as bench  # noqa: E402

STEPS = [  # r = 0 twice, r = 4 twice, full once ('plus norms' only)
    {"rank": 0, "is_full": False, "vectors": "base", "seconds": 2.5, "cpu_seconds": 4.0},
    {"rank": 0, "is_full": False, "vectors": "sft", "seconds": 1.5, "cpu_seconds": 3.0},
    {"rank": 4, "is_full": False, "vectors": "base", "seconds": 1.25,
     "cpu_seconds": 2.0},
    {"rank": 4, "is_full": False, "vectors": "sft", "seconds": 1.0, "cpu_seconds": 2.5},
    {"rank": 64, "is_full": True, "vectors": "sft", "seconds": 3.0, "cpu_seconds": 5.0},
]


def test_per_rank_sums_both_settings_from_timings_json(tmp_path):
    (tmp_path / "timings.json").write_text(json.dumps(
        {"setup": {"seconds": 9.0, "cpu_seconds": 12.0}, "steps": STEPS}))
    setup, steps = bench.recovery_steps(tmp_path)
    assert setup == {"seconds": 9.0, "cpu_seconds": 12.0} and steps == STEPS
    ranks = bench.per_rank(steps)
    assert ranks == {  # by hand: 2.5 + 1.5, 4 + 3; 1.25 + 1, 2 + 2.5; full alone
        "0": {"steps": 2, "seconds": 4.0, "cpu_seconds": 7.0},
        "4": {"steps": 2, "seconds": 2.25, "cpu_seconds": 4.5},
        "full": {"steps": 1, "seconds": 3.0, "cpu_seconds": 5.0}}


def test_a_recovery_without_timings_reads_ranks_parquet(tmp_path):
    pd.DataFrame([{k: s[k] for k in ("rank", "is_full", "vectors", "seconds")}
                  for s in STEPS]).to_parquet(tmp_path / "ranks.parquet")
    setup, steps = bench.recovery_steps(tmp_path)
    assert setup == {} and [s["seconds"] for s in steps] == [2.5, 1.5, 1.25, 1.0, 3.0]
    ranks = bench.per_rank(steps)
    assert ranks["0"] == {"steps": 2, "seconds": 4.0, "cpu_seconds": None}
    assert ranks["full"]["seconds"] == pytest.approx(3.0)
