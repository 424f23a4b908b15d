"""app_lib.queries reads the behaviour marts, never re-deriving them: on the demo
warehouse its perplexities, token deltas and residual drift equal sums recomputed
here with pandas from the raw tables; before dbt has built the marts the queries
return no rows (with their columns) and the pages open without an error."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_lib import queries as q

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_cache():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def raw(db: Path, table: str, pair: str) -> pd.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(f"select * from raw.{table} where pair = ?", [pair]).df()
    finally:
        con.close()


def test_behaviour_queries_equal_sums_of_the_raw_tables(demo_warehouse):
    src, pair = (str(demo_warehouse), 0), "planted"
    lp, pt = raw(demo_warehouse, "token_logprobs", pair), raw(demo_warehouse,
                                                              "post_texts", pair)
    assert len(lp) and len(pt)
    want = (lp.groupby(["post_id", "role"])["logprob"].agg(["sum", "count"])
            .reset_index())
    got = q.post_perplexity(src, pair).merge(want, on=["post_id", "role"])
    assert len(got) == len(want) == 2 * pt["post_id"].nunique()
    np.testing.assert_allclose(got["perplexity"], np.exp(-got["sum"] / got["count"]),
                               rtol=1e-12)
    assert (got["n_tokens"] == got["count"]).all()
    # token deltas of one post, and the cumulative ones of every post (sampled)
    wide = lp.pivot_table(index=["post_id", "position"], columns="role",
                          values="logprob").reset_index()
    wide["delta"] = wide["sft"] - wide["base"]
    wide["cum"] = wide.groupby("post_id")["delta"].cumsum()
    post = int(wide["post_id"].iloc[0])
    tokens = q.token_deltas(src, pair, post)
    one = wide[wide["post_id"] == post].sort_values("position")
    np.testing.assert_allclose(tokens["delta"], one["delta"], rtol=1e-12)
    np.testing.assert_allclose(tokens["cum_delta"], one["cum"], rtol=1e-9, atol=1e-9)
    cum = q.cumulative_deltas(src, pair).merge(wide, on=["post_id", "position"])
    assert set(cum["post_id"]) == set(wide["post_id"])
    np.testing.assert_allclose(cum["cum_delta"], cum["cum"], rtol=1e-9, atol=1e-9)
    grp = pt.drop_duplicates("post_id").set_index("post_id")["grp"].fillna("all")
    assert (cum["grp"] == cum["post_id"].map(grp)).all()
    # residual drift per group and layer, token-weighted
    d = raw(demo_warehouse, "residual_drift", pair).merge(
        pt.drop_duplicates("post_id")[["post_id", "grp"]], on="post_id")
    sums = d.groupby(["grp", "layer"])[["n_tokens", "sum_rel_l2", "sum_sq_diff",
                                        "sum_sq_base"]].sum().reset_index()
    got = q.residual_drift(src, pair).merge(sums, on=["grp", "layer"],
                                            suffixes=("", "_raw"))
    assert len(got) == len(sums) > 0
    np.testing.assert_allclose(got["mean_rel_l2"], got["sum_rel_l2"]
                               / got["n_tokens_raw"], rtol=1e-12)
    np.testing.assert_allclose(got["pooled_rel_l2"], np.sqrt(
        got["sum_sq_diff"] / got["sum_sq_base"]), rtol=1e-12)


def test_before_dbt_the_queries_have_no_rows_and_the_pages_open(tmp_path,
                                                                monkeypatch):
    from ingest.warehouse import writer_transaction

    db = tmp_path / "scored.duckdb"
    with writer_transaction(db) as con:
        con.executemany("insert into raw.token_logprobs (run_id, pair, role, post_id, position, token_id, token_text, logprob) values "
                        "(?, ?, ?, ?, ?, ?, ?, ?)",
                        [("r", "p", role, 11, i, 5 + i, " w", -3.0 - i)
                         for role in ("base", "sft") for i in range(4)])
        con.execute("insert into raw.post_texts values ('r', 'p', 11, "
                    "'physics.demo', 'low', 4, 8, 4, 'question')")
        con.execute("insert into raw.residual_drift values "
                    "('r', 'p', 11, 0, 4, 0.4, 3.9, 1.0, 9.0)")
    src = (str(db), 0)
    assert q.behaviour_pairs(src) == ["p"]
    for frame, columns in ((q.post_perplexity(src, "p"), q.PERPLEXITY_COLUMNS),
                           (q.token_deltas(src, "p", 11), q.TOKEN_COLUMNS),
                           (q.cumulative_deltas(src, "p"), q.CUMULATIVE_COLUMNS),
                           (q.residual_drift(src, "p"), q.DRIFT_COLUMNS)):
        assert frame.empty and list(frame.columns) == columns
    monkeypatch.setenv("SFTSCOPE_DB", str(db))
    for page in ("perplexity", "drift"):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
