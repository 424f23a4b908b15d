"""The behaviour marts (dbt) against values computed here from the raw Parquet rows."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from compute.behaviour.scoring import run_behaviour
from ingest.warehouse import connect, ensure_raw_schema

try:
    from tests import behaviour_helpers as H
except ImportError:  # tests/ itself is on sys.path (no package)
    import behaviour_helpers as H

ROOT = Path(__file__).resolve().parent.parent
DBT = ROOT / ".venv" / "bin" / "dbt"
MARTS = ["fct_post_perplexity", "fct_post_perplexity_delta", "fct_group_perplexity",
         "fct_group_perplexity_delta", "fct_token_logprob_delta",
         "fct_residual_drift_by_layer", "fct_residual_drift_by_group",
         "fct_residual_drift_group_difference"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("marts")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pair = H.pair(tmp / "pair")
        prompts = H.prompts(7, first=20)
        out = tmp / "run"
        run_behaviour(*pair, prompts, out, run_id="m1", pair="tiny", batch_size=4,
                      window=48, progress=False)
    finally:
        torch.set_num_threads(threads)
    db = tmp / "w.duckdb"
    with connect(db) as con:
        ensure_raw_schema(con)
        for table in ("token_logprobs", "post_texts", "residual_drift"):
            con.execute(f"insert into raw.{table} by name select * from read_parquet(?)",
                        [str(out / "behaviour" / table / "*.parquet")])
    dbt = str(DBT) if DBT.exists() else shutil.which("dbt")
    env = os.environ | {"SFTSCOPE_DB": str(db), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    res = subprocess.run(
        [dbt, "build", "--select", "+marts.behaviour", "--target-path",
         str(tmp / "target"), "--log-path", str(tmp / "logs")],
        cwd=ROOT / "dbt_project", env=env, capture_output=True, text=True, timeout=300,
        check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    raw = {t: H.read(out, t) for t in ("token_logprobs", "post_texts", "residual_drift")}
    con = duckdb.connect(str(db), read_only=True)
    yield con, raw
    con.close()


def mart(con, name, order):
    return con.execute(f"select * from marts.{name} order by {order}").df()


def test_every_mart_is_built(warehouse):
    con, _ = warehouse
    for name in MARTS:
        assert con.execute(f"select count(*) from marts.{name}").fetchone()[0] > 0, name


def test_post_perplexity_and_delta_by_hand(warehouse):
    con, raw = warehouse
    lp, texts = raw["token_logprobs"], raw["post_texts"].set_index("post_id")
    got = mart(con, "fct_post_perplexity", "post_id, role")
    assert len(got) == 2 * len(texts)
    for r in got.itertuples():
        x = lp[(lp.post_id == r.post_id) & (lp.role == r.role)]["logprob"].to_numpy()
        assert r.n_tokens == len(x) == texts.loc[r.post_id, "n_tokens"]
        assert r.perplexity == pytest.approx(np.exp(-x.mean()), rel=1e-12)
        n_bytes = texts.loc[r.post_id, "n_bytes"]
        assert r.bits_per_byte == pytest.approx(-x.sum() / np.log(2) / n_bytes, rel=1e-12)
        assert r.grp == texts.loc[r.post_id, "grp"]
    wide = got.pivot(index="post_id", columns="role", values="perplexity")
    delta = mart(con, "fct_post_perplexity_delta", "post_id").set_index("post_id")
    np.testing.assert_allclose(delta["delta_perplexity"], wide["sft"] - wide["base"],
                               rtol=1e-12)


def test_group_perplexity_by_hand(warehouse):
    from scipy import stats

    con, _ = warehouse
    posts = mart(con, "fct_post_perplexity", "post_id")
    posts["post_type"] = posts["post_type"].fillna("(unknown)")
    every = mart(con, "fct_group_perplexity", "grp, post_type, role")
    # each group at each post type of its posts and under 'all'
    assert len(every) == 2 * (posts.groupby("grp")["post_type"].nunique().sum() + 2)
    for r in every.itertuples():
        x = posts[(posts.grp == r.grp) & (posts.role == r.role)
                  & ((posts.post_type == r.post_type) | (r.post_type == "all"))]
        assert r.n_posts == len(x)
        assert r.mean_perplexity == pytest.approx(x["perplexity"].mean(), rel=1e-12)
    got = every[every.post_type == "all"]
    assert len(got) == 4
    for r in got.itertuples():
        x = posts[(posts.grp == r.grp) & (posts.role == r.role)]["perplexity"].to_numpy()
        n = len(x)
        half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / np.sqrt(n)
        assert r.n_posts == n
        assert r.mean_perplexity == pytest.approx(x.mean(), rel=1e-12)
        assert r.median_perplexity == pytest.approx(np.median(x), rel=1e-12)
        assert r.ci95_low_perplexity == pytest.approx(x.mean() - half, rel=1e-7)
        assert r.ci95_high_perplexity == pytest.approx(x.mean() + half, rel=1e-7)


def test_cumulative_delta_by_hand(warehouse):
    con, raw = warehouse
    lp = raw["token_logprobs"]
    got = mart(con, "fct_token_logprob_delta", "post_id, position")
    assert len(got) == len(lp) // 2
    for post_id, rows in got.groupby("post_id"):
        base = lp[(lp.post_id == post_id) & (lp.role == "base")].sort_values("position")
        sft = lp[(lp.post_id == post_id) & (lp.role == "sft")].sort_values("position")
        want = np.cumsum(sft["logprob"].to_numpy() - base["logprob"].to_numpy())
        assert rows["position"].tolist() == list(range(len(want)))
        np.testing.assert_allclose(rows["cumulative_delta_logprob"], want, rtol=1e-9,
                                   atol=1e-12)
        assert rows["token_text"].tolist() == base["token_text"].tolist()


def test_residual_drift_aggregates_exactly(warehouse):
    con, raw = warehouse
    dr = raw["residual_drift"].merge(raw["post_texts"][["post_id", "grp"]], on="post_id")
    for name, keys in (("fct_residual_drift_by_layer", ["layer"]),
                       ("fct_residual_drift_by_group", ["grp", "layer"])):
        got = mart(con, name, ", ".join(keys))
        if "post_type" in got:  # the seed's groups: every post type
            got = got[got.post_type == "all"]
        got = got.set_index(keys)
        sums = dr.groupby(keys)[["n_tokens", "sum_rel_l2", "sum_cos", "sum_sq_diff",
                                 "sum_sq_base"]].sum()
        np.testing.assert_allclose(got["mean_rel_l2"], sums.sum_rel_l2 / sums.n_tokens,
                                   rtol=1e-12)
        np.testing.assert_allclose(got["mean_cos"], sums.sum_cos / sums.n_tokens,
                                   rtol=1e-12)
        np.testing.assert_allclose(got["pooled_rel_l2"],
                                   np.sqrt(sums.sum_sq_diff / sums.sum_sq_base),
                                   rtol=1e-12)
        assert (got["n_tokens"] == sums["n_tokens"]).all()


def test_residual_drift_group_difference_against_scipy(warehouse):
    """high - low of the posts' mean relative L2 distance per hidden-state index: the
    mean difference, Welch's standard error and degrees of freedom as SciPy's
    ttest_ind(equal_var=False) gives them, and the interval with t at the degrees
    of freedom rounded down."""
    from scipy import stats

    con, raw = warehouse
    dr = raw["residual_drift"].merge(raw["post_texts"][["post_id", "grp"]], on="post_id")
    dr["post_rel_l2"] = dr["sum_rel_l2"] / dr["n_tokens"]
    got = mart(con, "fct_residual_drift_group_difference", "layer")
    assert got["layer"].tolist() == sorted(dr["layer"].unique())
    for r in got.itertuples():
        a = dr[(dr.layer == r.layer) & (dr.grp == "high")]["post_rel_l2"].to_numpy()
        b = dr[(dr.layer == r.layer) & (dr.grp == "low")]["post_rel_l2"].to_numpy()
        assert len(a) >= 2 and len(b) >= 2
        assert (r.n_posts_a, r.n_posts_b) == (len(a), len(b))
        test = stats.ttest_ind(a, b, equal_var=False)
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert r.difference == pytest.approx(a.mean() - b.mean(), rel=1e-9, abs=1e-15)
        assert r.se == pytest.approx(se, rel=1e-9)
        assert r.df == np.floor(test.df)
        half = stats.t.ppf(0.975, np.floor(test.df)) * se
        assert r.ci95_low == pytest.approx(a.mean() - b.mean() - half, rel=1e-6)
        assert r.ci95_high == pytest.approx(a.mean() - b.mean() + half, rel=1e-6)
        # never narrower than SciPy's interval at the unrounded df
        ci = test.confidence_interval(0.95)
        assert r.ci95_low <= ci.low + 1e-12 and r.ci95_high >= ci.high - 1e-12
