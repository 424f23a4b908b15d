"""The statistics the marts publish, built by dbt on raw rows with a known answer and
checked against SciPy/NumPy and the Gavish-Donoho references (tests/references.py):
paired t intervals, medians and shares of the perplexity marts at group sizes on both
sides of the t table (df 1 ... 10^4), and the known- and unknown-noise Gavish-Donoho
thresholds at several aspect ratios, with spectra whose gaps pin each threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ingest.warehouse import connect, ensure_raw_schema
from tests.conftest import query, run_dbt
from tests.references import gd_lambda, gd_omega

pytestmark = pytest.mark.slow

# posts per group: df 1, 2, 30 (last table entry), 31, 39 (make demo), 100, 10^4; and
# a single post (no interval)
GROUP_SIZES = [2, 3, 31, 32, 40, 101, 10_001, 1]
# (rows, cols): beta = 0.05, 0.25 (both orientations), 0.5, 0.75, 1
SHAPES = [(20, 400), (64, 256), (256, 64), (100, 200), (96, 128), (128, 128)]
SIGMA = 1e-3
# how far the spectra sit from each threshold: the known-noise one is pinned to
# 0.2%, the unknown-noise one to 1% (its cubic fit of omega(beta) is good to 0.6%)
KNOWN_GAP, UNKNOWN_GAP = 2e-3, 1e-2


def posts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, sft) mean log-probs of n posts: a paired shift with spread, a few ties
    (delta exactly 0) and one post where SFT is much worse."""
    rng = np.random.default_rng(seed)
    base = -rng.uniform(0.5, 3.0, n)
    sft = base + rng.normal(-0.1, 0.3, n)
    sft[::7] = base[::7]  # no change: neither lower nor higher
    sft[n // 2] = base[n // 2] - 1.5
    return base, sft


def spectrum(n_rows: int, n_cols: int) -> tuple[np.ndarray, int, int, int]:
    """Singular values (descending) around both Gavish-Donoho thresholds, and the
    ranks a correct threshold gives: (s, signal rank, MP-edge rank, unknown rank).
    Over half the values equal the median m, placed so that omega(beta) m sits at
    half the known-noise threshold."""
    k, n = min(n_rows, n_cols), max(n_rows, n_cols)
    beta = k / n
    known = gd_lambda(beta) * np.sqrt(n) * SIGMA
    unknown = known / 2
    median = unknown / gd_omega(beta)
    top = [known * (1 + KNOWN_GAP)] * 3 + [known * (1 - KNOWN_GAP)] * 2
    mid = [unknown * (1 + UNKNOWN_GAP)] * 2 + [unknown * (1 - UNKNOWN_GAP)] * 2
    s = np.array(top + mid + [median] * (k - len(top) - len(mid)))
    assert (s == median).sum() > k / 2
    edge = SIGMA * (np.sqrt(n_rows) + np.sqrt(n_cols))
    return s, 3, int((s > edge).sum()), 7


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    db = tmp_path_factory.mktemp("statistics") / "w.duckdb"
    with connect(db) as con:
        ensure_raw_schema(con)
        texts, lp = [], []
        for g, n in enumerate(GROUP_SIZES):
            base, sft = posts(n, seed=g)
            ids = np.arange(n)
            texts.append(pd.DataFrame({"run_id": "r", "pair": f"n{n}", "post_id": ids,
                                       "site": "s", "grp": "high", "n_tokens": 1,
                                       "n_bytes": 4, "n_words": 1}))
            for role, x in (("base", base), ("sft", sft)):
                lp.append(pd.DataFrame({"run_id": "r", "pair": f"n{n}", "role": role,
                                        "post_id": ids, "position": 0, "token_id": 5,
                                        "token_text": "a", "logprob": x}))
        for table, frames in (("post_texts", texts), ("token_logprobs", lp)):
            df = pd.concat(frames)  # noqa: F841 (read by the SQL below)
            con.execute(f"insert into raw.{table} by name select * from df")
        for layer, (m, n) in enumerate(SHAPES):
            s = spectrum(m, n)[0]
            for role, sigma in (("base", None), ("sft", None), ("delta", SIGMA)):
                con.execute(
                    "insert into raw.spectra by name select 'w' as run_id, 'gd' as pair,"
                    " 'b' as base_model, 's' as sft_model, ? as tensor, ? as layer,"
                    " 'q_proj' as module, ? as role, ? as n_rows, ? as n_cols,"
                    " 'bfloat16' as storage_dtype, ? as singular_values,"
                    " ? as frobenius_sq, ? as noise_sigma, 0 as n_zero,"
                    " 0 as n_nonfinite, 'svd64' as method, 'cpu' as device",
                    [f"layers.{layer}.q_proj.weight", layer, role, m, n,
                     (s * (10 if sigma is None else 1)).tolist(),
                     float((s ** 2).sum()) * (100 if sigma is None else 1), sigma])
    run_dbt(db, "run", "--quiet", "--select", "+fct_group_perplexity_delta",
            "+fct_group_perplexity", "+fct_matrix_metrics")
    return db


def rows(db, sql: str) -> list[dict]:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def test_paired_delta_intervals_medians_and_shares(warehouse):
    got = {r["pair"]: r for r in rows(warehouse, "select * from "
                                      "marts.fct_group_perplexity_delta "
                                      "where post_type = 'all'")}
    assert sorted(got) == sorted(f"n{n}" for n in GROUP_SIZES)
    for g, n in enumerate(GROUP_SIZES):
        base, sft = posts(n, seed=g)
        d_ppl = np.exp(-sft) - np.exp(-base)
        d_lp = sft - base
        r = got[f"n{n}"]
        assert r["n_posts"] == n
        assert r["mean_perplexity_base"] == pytest.approx(np.exp(-base).mean(), rel=1e-12)
        assert r["mean_perplexity_sft"] == pytest.approx(np.exp(-sft).mean(), rel=1e-12)
        assert r["mean_delta_perplexity"] == pytest.approx(d_ppl.mean(), rel=1e-11)
        assert r["median_delta_perplexity"] == pytest.approx(np.median(d_ppl), rel=1e-12)
        assert r["share_sft_lower_perplexity"] == pytest.approx(np.mean(d_ppl < 0),
                                                                abs=1e-15)
        assert r["mean_delta_mean_logprob"] == pytest.approx(d_lp.mean(), rel=1e-11)
        if n == 1:  # no spread, no interval
            assert r["t_critical"] is None and r["ci95_low_delta_perplexity"] is None
            continue
        assert r["t_critical"] == pytest.approx(stats.t.ppf(0.975, n - 1), rel=1e-7)
        for name, x in (("delta_perplexity", d_ppl), ("delta_mean_logprob", d_lp)):
            ci = stats.ttest_1samp(x, 0).confidence_interval(0.95)
            assert r[f"ci95_low_{name}"] == pytest.approx(ci.low, rel=1e-7), (n, name)
            assert r[f"ci95_high_{name}"] == pytest.approx(ci.high, rel=1e-7), (n, name)


def test_per_model_intervals(warehouse):
    got = rows(warehouse, "select pair, role, n_posts, mean_perplexity, "
               "median_perplexity, ci95_low_perplexity, ci95_high_perplexity "
               "from marts.fct_group_perplexity where post_type = 'all'")
    assert len(got) == 2 * len(GROUP_SIZES)
    for r in got:
        n = r["n_posts"]
        base, sft = posts(n, seed=GROUP_SIZES.index(n))
        x = np.exp(-(base if r["role"] == "base" else sft))
        assert r["pair"] == f"n{n}"
        assert r["mean_perplexity"] == pytest.approx(x.mean(), rel=1e-12)
        assert r["median_perplexity"] == pytest.approx(np.median(x), rel=1e-12)
        if n > 1:
            ci = stats.ttest_1samp(x, 0).confidence_interval(0.95)
            assert r["ci95_low_perplexity"] == pytest.approx(ci.low, rel=1e-7)
            assert r["ci95_high_perplexity"] == pytest.approx(ci.high, rel=1e-7)


def test_gavish_donoho_thresholds_at_several_aspect_ratios(warehouse):
    got = {(r["n_rows"], r["n_cols"]): r for r in rows(
        warehouse, "select * from marts.fct_matrix_metrics where role = 'delta'")}
    assert sorted(got) == sorted(SHAPES)
    for (m, n), r in got.items():
        beta = min(m, n) / max(m, n)
        s, signal, edge_rank, unknown = spectrum(m, n)
        assert r["gd_threshold"] == pytest.approx(
            gd_lambda(beta) * np.sqrt(max(m, n)) * SIGMA, rel=1e-9), (m, n)
        assert r["mp_edge"] == pytest.approx(SIGMA * (np.sqrt(m) + np.sqrt(n)), rel=1e-12)
        omega = r["gd_unknown_threshold"] / np.median(s)
        assert omega == pytest.approx(gd_omega(beta), abs=0.01), (m, n)
        assert (r["signal_rank"], r["mp_edge_rank"], r["gd_unknown_rank"]) == (
            signal, edge_rank, unknown), (m, n)


def test_noise_aware_ranks_only_for_delta(warehouse):
    """W_base and W_sft carry no noise level: no signal or MP-edge rank for them."""
    got = query(warehouse, "select role, count(*), count(signal_rank), "
                "count(mp_edge_rank), count(gd_unknown_rank) "
                "from marts.fct_matrix_metrics group by role order by role")
    n = len(SHAPES)
    assert got == [("base", n, 0, 0, 0), ("delta", n, n, n, n), ("sft", n, 0, 0, 0)]
