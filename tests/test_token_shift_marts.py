"""The token-shift marts and their bootstrap intervals, built by dbt on synthetic raw
rows with a known answer: shares, KL means, bits per token and byte and the top
shifted tokens against pandas on the same rows; the intervals' coverage of a known
group difference over independent replicates, their width against the analytic
standard error, and reproducibility with the seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ingest.warehouse import connect, ensure_raw_schema
from tests.conftest import run_dbt

pytestmark = pytest.mark.slow

REPLICATES = 30  # independent pairs, each with its own draws
POSTS = 40  # per group
TOKENS = 20  # per post (equal: the pooled ratio is the mean over posts)
# per-post SFT - base shift of the mean log-prob, and the shifted-token rate, by group
MU = {"high": -0.3, "low": 0.15}
P_SHIFTED = {"high": 0.10, "low": 0.05}
KL_MEAN = {"high": 0.30, "low": 0.20}
DIFFERENCES = ("select * from marts.fct_group_difference_intervals "
               "where post_type = 'all' order by pair, metric")
SELECT = ["--select", "+fct_group_difference_intervals", "+fct_top_shifted_tokens",
          "+fct_group_token_shift"]


def raw_rows(seed: int) -> dict[str, pd.DataFrame]:
    """REPLICATES pairs x 2 groups x POSTS posts x TOKENS tokens, drawn at once."""
    rng = np.random.default_rng(seed)
    posts = pd.DataFrame(
        [(f"p{r:02d}", grp, 10_000 * g + i) for r in range(REPLICATES)
         for g, grp in enumerate(("high", "low")) for i in range(POSTS)],
        columns=["pair", "grp", "post_id"])
    posts["run_id"] = "run-" + posts["pair"]
    posts["post_type"] = np.where(posts["post_id"] % 2 == 0, "answer", "question")
    posts["site"], posts["n_tokens"], posts["n_words"] = "s", TOKENS, 5
    posts["n_bytes"] = rng.integers(40, 120, len(posts))
    tok = posts.loc[posts.index.repeat(TOKENS), ["run_id", "pair", "post_id", "grp"]]
    tok = tok.reset_index(drop=True)
    n = len(tok)
    tok["position"] = np.tile(np.arange(TOKENS), len(posts))
    grp = tok.pop("grp")
    post_shift = rng.normal(0, 0.5, len(posts)).repeat(TOKENS) + grp.map(MU).to_numpy()
    base = rng.normal(-5.0, 0.5, n)
    sft = base + post_shift + rng.normal(0, 0.3, n)
    assert (sft < 0).all()
    ids = rng.integers(0, 50, n)
    lp = pd.concat([tok.assign(role=role, token_id=ids, logprob=x)
                    for role, x in (("base", base), ("sft", sft))], ignore_index=True)
    lp["token_text"] = "t" + lp["token_id"].astype(str)
    shifted = rng.random(n) < grp.map(P_SHIFTED).to_numpy()
    top_s = np.where(shifted, rng.integers(100, 104, n), ids)
    top_b = rng.integers(200, 204, n)
    kl = rng.exponential(1.0, n) * grp.map(KL_MEAN).to_numpy()
    shift = tok.assign(
        kl_sft_base=kl, kl_base_sft=kl * rng.uniform(0.5, 1.5, n),
        entropy_base=rng.uniform(0, 3, n), entropy_sft=rng.uniform(0, 3, n),
        rank_sft_top_in_base=np.where(shifted, rng.integers(4, 30, n),
                                      rng.integers(1, 4, n)),
        rank_base_top_in_sft=rng.integers(1, 8, n), top_id_base=top_b,
        top_id_sft=top_s, top_text_base=[f"b{i}" for i in top_b],
        top_text_sft=[f"s{i}" for i in top_s])
    return {"token_logprobs": lp, "token_shift": shift, "post_texts": posts}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    db = tmp_path_factory.mktemp("shift_marts") / "w.duckdb"
    raw = raw_rows(17)
    with connect(db) as con:
        ensure_raw_schema(con)
        for table, df in raw.items():
            con.register("df", df)
            con.execute(f"insert into raw.{table} by name select * from df")
            con.unregister("df")
    run_dbt(db, "run", "--quiet", *SELECT)  # (make demo's build runs their data tests)
    return db, raw, frame(db, DIFFERENCES)


def frame(db, sql) -> pd.DataFrame:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def post_table(raw) -> pd.DataFrame:
    lp, sh = raw["token_logprobs"], raw["token_shift"]
    wide = lp.pivot_table(index=["pair", "post_id", "position"], columns="role",
                          values="logprob").reset_index()
    tok = wide.merge(sh, on=["pair", "post_id", "position"])
    tok["shifted"] = tok["rank_sft_top_in_base"] > 3
    per = tok.groupby(["pair", "post_id"]).agg(
        nll_base=("base", "sum"), nll_sft=("sft", "sum"), n=("base", "size"),
        kl=("kl_sft_base", "sum"), shifted=("shifted", "sum")).reset_index()
    per[["nll_base", "nll_sft"]] *= -1 / np.log(2)
    return per.merge(raw["post_texts"][["pair", "post_id", "grp", "n_bytes"]],
                     on=["pair", "post_id"])


def test_post_and_group_measures_against_pandas(built):
    db, raw, _ = built
    want = post_table(raw).set_index(["pair", "post_id"]).sort_index()
    got = frame(db, "select * from marts.fct_post_token_shift").set_index(
        ["pair", "post_id"]).sort_index()
    assert len(got) == len(raw["post_texts"])
    np.testing.assert_allclose(got["bits_per_byte_base"], want.nll_base / want.n_bytes,
                               rtol=1e-12)
    np.testing.assert_allclose(got["delta_bits_per_token"],
                               (want.nll_sft - want.nll_base) / want.n, rtol=1e-9)
    np.testing.assert_allclose(got["mean_kl_sft_base"], want.kl / want.n, rtol=1e-12)
    np.testing.assert_allclose(got["share_shifted"], want.shifted / want.n, rtol=1e-12)

    groups = frame(db, "select * from marts.fct_group_behaviour_intervals "
                   "where post_type = 'all'")
    sums = post_table(raw).groupby(["pair", "grp"]).sum(numeric_only=True)
    for metric, values in (
            ("bits_per_byte_sft", sums.nll_sft / sums.n_bytes),
            ("delta_bits_per_byte", (sums.nll_sft - sums.nll_base) / sums.n_bytes),
            ("bits_per_token_base", sums.nll_base / sums.n),
            ("share_shifted", sums.shifted / sums.n)):
        g = groups[groups.metric == metric].set_index(["pair", "grp"]).sort_index()
        np.testing.assert_allclose(g["estimate"], values.sort_index(), rtol=1e-9)
        assert (g["ci95_low"] <= g["estimate"]).all()
        assert (g["estimate"] <= g["ci95_high"]).all()
        assert set(g["n_resamples"]) == {1000} and set(g["n_posts"]) == {POSTS}

    buckets = frame(db, "select * from marts.fct_group_token_shift "
                    "where post_type = 'all'")
    tok = raw["token_shift"].merge(raw["post_texts"][["pair", "post_id", "grp"]])
    tok["bucket"] = np.where(tok.position < 16, "0-15", "16-63")
    shares = (tok.rank_sft_top_in_base > 3).groupby([tok.pair, tok.grp, tok.bucket])
    b = buckets[buckets.position_bucket != "all"].set_index(
        ["pair", "grp", "position_bucket"]).sort_index()
    np.testing.assert_allclose(b["share_shifted"], shares.mean().sort_index(),
                               rtol=1e-12)
    assert (b["n_tokens"] == shares.size().sort_index()).all()


def test_groups_by_post_type_against_sql_by_hand(built):
    """Every (group, post type) cell and the 'all' type (the seed's groups) against
    SQL written here on the raw tables: pooled bits per byte of the SFT and the
    pooled delta per token; the high - low difference within answers and within
    questions is the difference of those cells; each cell's post count is the raw
    one (half the posts of a group are answers)."""
    import duckdb

    db, _, _ = built
    con = duckdb.connect(str(db), read_only=True)
    try:
        hand = con.execute("""
            with per_post as (
                select p.pair, p.grp, p.post_type, p.post_id, any_value(p.n_bytes) as b,
                       -sum(l.logprob) filter (where l.role = 'sft') / ln(2) as sft,
                       -sum(l.logprob) filter (where l.role = 'base') / ln(2) as base,
                       count(*) filter (where l.role = 'base') as n
                from raw.post_texts p join raw.token_logprobs l using (run_id, post_id)
                group by all
            ), cells as (
                select pair, grp, post_type, count(*) as n_posts, sum(sft) / sum(b)
                           as bpb_sft, (sum(sft) - sum(base)) / sum(n) as delta_bpt
                from per_post group by all
                union all
                select pair, grp, 'all', count(*), sum(sft) / sum(b),
                       (sum(sft) - sum(base)) / sum(n)
                from per_post group by all
            )
            select * from cells order by all""").df()
        got = con.execute("""
            select pair, grp, post_type, any_value(n_posts) as n_posts,
                   max(estimate) filter (where metric = 'bits_per_byte_sft') as bpb_sft,
                   max(estimate) filter (where metric = 'delta_bits_per_token')
                       as delta_bpt
            from marts.fct_group_behaviour_intervals group by all order by all""").df()
        diffs = con.execute("""
            select pair, post_type, difference, n_posts_a, n_posts_b
            from marts.fct_group_difference_intervals
            where metric = 'delta_bits_per_token' order by all""").df()
    finally:
        con.close()
    assert len(got) == len(hand) == REPLICATES * 2 * 3
    assert (got["n_posts"].to_numpy() == hand["n_posts"].to_numpy()).all()
    assert set(hand[hand.post_type != "all"]["n_posts"]) == {POSTS // 2}
    np.testing.assert_allclose(got["bpb_sft"], hand["bpb_sft"], rtol=1e-12)
    np.testing.assert_allclose(got["delta_bpt"], hand["delta_bpt"], rtol=1e-9)
    cell = hand.set_index(["pair", "grp", "post_type"])["delta_bpt"]
    assert len(diffs) == REPLICATES * 3
    for row in diffs.itertuples():
        want = cell[(row.pair, "high", row.post_type)] - cell[(row.pair, "low",
                                                                row.post_type)]
        assert row.difference == pytest.approx(want, rel=1e-9)


def test_top_shifted_tokens_against_pandas(built):
    db, raw, _ = built
    tok = raw["token_shift"].merge(raw["post_texts"][["pair", "post_id", "grp"]])
    got = frame(db, "select * from marts.fct_top_shifted_tokens "
                "where post_type = 'all'")
    promoted = tok[tok.rank_sft_top_in_base > 3].groupby(["pair", "grp", "top_id_sft"])
    want = pd.DataFrame({"n": promoted.size(), "kl": promoted.kl_sft_base.sum()})
    g = got[got.direction == "promoted"].set_index(["pair", "grp", "token_id"])
    assert len(g) == len(want)  # 4 promoted tokens per group: all kept
    g = g.loc[want.index]
    assert (g["n_shifted"] == want["n"]).all()
    np.testing.assert_allclose(g["kl_mass"], want["kl"], rtol=1e-12)
    first = g[g.rank_by_count == 1].reset_index()
    top = want.reset_index().sort_values(["n", "kl"], ascending=False).groupby(
        ["pair", "grp"]).head(1)
    assert sorted(zip(first.pair, first.grp, first.token_id, strict=True)) == sorted(
        zip(top.pair, top.grp, top.top_id_sft, strict=True))
    demoted = tok[tok.rank_base_top_in_sft > 3]
    assert got[got.direction == "demoted"]["n_shifted"].sum() == len(demoted)


def test_token_shift_by_post_type_against_sql_by_hand(built):
    """fct_group_token_shift's (group, post type) cells over all positions and the
    'all' type against SQL written here on the raw tables (shift classes: SFT's
    top-1 ranked > 3 by the base is shifted; token-weighted KL); and
    fct_top_shifted_tokens within answers against pandas on the answers' tokens."""
    import duckdb

    db, raw, _ = built
    con = duckdb.connect(str(db), read_only=True)
    try:
        hand = con.execute("""
            with tok as (
                select p.pair, p.grp, p.post_type, s.post_id, s.kl_sft_base,
                       s.rank_sft_top_in_base > 3 as shifted
                from raw.token_shift s join raw.post_texts p using (run_id, post_id)
            )
            select pair, grp, post_type, count(distinct post_id) as n_posts,
                   count(*) as n_tokens, avg(shifted::int) as share_shifted,
                   avg(kl_sft_base) as mean_kl
            from tok group by all
            union all
            select pair, grp, 'all', count(distinct post_id), count(*),
                   avg(shifted::int), avg(kl_sft_base)
            from tok group by all
            order by all""").df()
        got = con.execute("""
            select pair, grp, post_type, n_posts, n_tokens, share_shifted,
                   mean_kl_sft_base as mean_kl
            from marts.fct_group_token_shift where position_bucket = 'all'
            order by all""").df()
        keys = con.execute("select count(*), count(distinct group_bucket_key) "
                           "from marts.fct_group_token_shift").fetchone()
    finally:
        con.close()
    assert keys[0] == keys[1]
    assert len(got) == len(hand) == REPLICATES * 2 * 3
    assert set(got.post_type) == {"answer", "question", "all"}
    assert (got[["pair", "grp", "post_type"]].to_numpy()
            == hand[["pair", "grp", "post_type"]].to_numpy()).all()
    assert (got.n_posts.to_numpy() == hand.n_posts.to_numpy()).all()
    assert (got.n_tokens.to_numpy() == hand.n_tokens.to_numpy()).all()
    np.testing.assert_allclose(got.share_shifted, hand.share_shifted, rtol=1e-12)
    np.testing.assert_allclose(got.mean_kl, hand.mean_kl, rtol=1e-12)

    posts = raw["post_texts"][["pair", "post_id", "grp", "post_type"]]
    tok = raw["token_shift"].merge(posts)
    answers = tok[(tok.post_type == "answer") & (tok.rank_sft_top_in_base > 3)]
    want = answers.groupby(["pair", "grp", "top_id_sft"]).agg(
        n=("kl_sft_base", "size"), kl=("kl_sft_base", "sum"))
    top = frame(db, "select * from marts.fct_top_shifted_tokens where post_type = "
                "'answer' and direction = 'promoted'").set_index(
        ["pair", "grp", "token_id"])
    assert len(top) == len(want)
    top = top.loc[want.index]
    assert (top["n_shifted"] == want["n"]).all()
    np.testing.assert_allclose(top["kl_mass"], want["kl"], rtol=1e-12)
    shares = top.groupby(level=["pair", "grp"])["share_of_shifted"].sum()
    np.testing.assert_allclose(shares, 1.0, rtol=1e-12)


def test_intervals_cover_the_known_difference(built):
    """Each replicate is an independent sample; the true high - low difference is
    known from the generating distributions. A 95% interval should cover it in
    about 95% of the replicates (percentile intervals run a little short at 40
    posts) and exclude 0 where the shift is large."""
    _, _, iv = built
    truth = {
        # pooled over equal-length posts: -(mean log-prob shift) / ln 2
        "delta_bits_per_token": -(MU["high"] - MU["low"]) / np.log(2),
        "share_shifted": P_SHIFTED["high"] - P_SHIFTED["low"],
        "mean_kl_sft_base": KL_MEAN["high"] - KL_MEAN["low"],
    }
    for metric, true in truth.items():
        rows = iv[iv.metric == metric]
        assert len(rows) == REPLICATES
        covered = ((rows.ci95_low <= true) & (true <= rows.ci95_high)).sum()
        assert covered >= 25, (metric, covered)
        assert (rows.difference - true).abs().mean() < 2 * rows.se_bootstrap.mean()
    shift = iv[iv.metric == "delta_bits_per_token"]
    assert shift["excludes_zero"].mean() > 0.9
    assert (shift["difference"] > 0).all()  # SFT moved the high group down further


def test_interval_width_matches_the_analytic_standard_error(built):
    """Equal-length posts: the pooled delta is the mean of the posts' deltas, so the
    bootstrap se of the group difference should be close to sqrt(s_a^2/n_a +
    s_b^2/n_b) (times sqrt((n-1)/n), the bootstrap's plug-in variance)."""
    _, raw, iv = built
    per = post_table(raw)
    per["delta"] = (per.nll_sft - per.nll_base) / per.n
    sd = per.groupby(["pair", "grp"])["delta"].std(ddof=0).unstack()
    analytic = np.sqrt(sd["high"] ** 2 / POSTS + sd["low"] ** 2 / POSTS)
    rows = iv[iv.metric == "delta_bits_per_token"].set_index("pair")
    ratio = rows["se_bootstrap"] / analytic.loc[rows.index]
    assert ratio.between(0.85, 1.15).all(), ratio.describe()
    width = (rows.ci95_high - rows.ci95_low) / (2 * 1.959964 * analytic)
    assert width.between(0.8, 1.2).all(), width.describe()


def test_bootstrap_reproducible_with_its_seed(built):
    """The resamples are fixed by their seed: two reads give the same resamples and
    the marts' intervals; another seed (the table redraws every run when its seed or
    count changes) moves the intervals by Monte Carlo error only."""
    db, _, first = built
    resampled = ("select pair, grp, post_type, metric, "
                 "quantile_cont(value, 0.025) as low, "
                 "quantile_cont(value, 0.975) as high, count(*) as n "
                 "from intermediate.int_behaviour_bootstrap group by all order by all")
    groups = ("select pair, grp, post_type, metric, ci95_low as low, "
              "ci95_high as high, "
              "n_resamples as n from marts.fct_group_behaviour_intervals order by all")
    once = frame(db, resampled)
    pd.testing.assert_frame_equal(frame(db, resampled), once)
    pd.testing.assert_frame_equal(frame(db, groups), once, check_dtype=False)
    assert set(once["n"]) == {1000}

    run_dbt(db, "run", "--quiet", "--select", "int_behaviour_bootstrap+",
            "--vars", "{bootstrap_seed: 11, bootstrap_resamples: 500}")
    other = frame(db, DIFFERENCES)
    assert set(other["seed"]) == {11} and set(other["n_resamples"]) == {500}
    assert set(first["seed"]) == {6197}
    # the point estimate does not depend on the seed (to the last bits of a sum that
    # DuckDB's parallel aggregation may add in another order)
    np.testing.assert_allclose(other["difference"], first["difference"], rtol=1e-12,
                               atol=1e-15)
    assert (other["ci95_low"] != first["ci95_low"]).mean() > 0.9
    np.testing.assert_allclose(other["ci95_low"], first["ci95_low"],
                               atol=0.5 * first["se_bootstrap"].max())
    again = frame(db, resampled)
    assert set(again["n"]) == {500}
    pd.testing.assert_frame_equal(frame(db, groups), again, check_dtype=False)
