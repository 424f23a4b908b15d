"""The Token shift page: its pure chart builders on small frames, and the page under
streamlit.testing's AppTest against the demo warehouse (compute.run's token shift
loaded and modelled by dbt, the whole pipeline)."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_lib import shift
from tests.conftest import ROOT, query

GROUPS = pd.DataFrame({
    "grp": ["high", "low"], "metric": ["share_shifted"] * 2, "estimate": [0.08, 0.05],
    "ci95_low": [0.06, 0.04], "ci95_high": [0.10, 0.06]})
DIFFS = pd.DataFrame({
    "metric": ["share_shifted"], "group_a": ["high"], "group_b": ["low"],
    "n_posts_a": [40], "n_posts_b": [38], "difference": [0.03], "ci95_low": [0.01],
    "ci95_high": [0.05], "excludes_zero": [True], "n_resamples": [1000],
    "seed": [6197]})


def test_forest_and_headline():
    f = shift.forest(GROUPS, DIFFS, "share_shifted")
    assert f["kind"].tolist() == ["group", "group", "difference"]
    assert f.iloc[2][["value", "low", "high"]].tolist() == [0.03, 0.01, 0.05]
    spec = shift.difference_chart(f).to_dict()
    assert {"errorbar", "point", "rule"} <= {
        (layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"])
        for layer in spec["layer"]}
    text = shift.headline(DIFFS, "share_shifted")
    assert "high - low: +0.03" in text and "1000 bootstrap resamples" in text
    assert "seed 6197" in text and "the groups differ" in text
    assert "needed" in shift.headline(DIFFS, "mean_kl_sft_base")


def test_classes_long_keeps_every_share():
    df = pd.DataFrame({"grp": ["high", "high"], "position_bucket": ["all", "0-15"],
                       "first_position": [0, 0], "n_tokens": [10, 4],
                       "share_unshifted": [0.7, 0.5], "share_marginal": [0.2, 0.25],
                       "share_shifted": [0.1, 0.25]})
    long = shift.classes_long(df)
    assert len(long) == 6 and set(long["class"]) == {"unshifted", "marginal", "shifted"}
    sums = long.groupby("position_bucket")["share"].sum()
    assert sums.round(12).tolist() == [1.0, 1.0]
    assert shift.classes_chart(df).to_dict()["encoding"]["y"]["stack"] == "normalize"


def test_kl_html_shades_escapes_and_explains():
    df = pd.DataFrame({
        "position": [0, 1], "token_text": ["<b>", " x"], "kl_sft_base": [0.0, 2.0],
        "kl_base_sft": [0.0, 1.5], "entropy_base": [1.0, 2.0],
        "entropy_sft": [1.0, 0.5], "top_text_base": [" a", "&"],
        "top_text_sft": [" a", " b"], "rank_sft_top_in_base": [1, 9],
        "rank_base_top_in_sft": [1, 5], "shift_class": ["unshifted", "shifted"]})
    out = shift.kl_html(df, clip=1.0)
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert out.count("rgba(") == 2 and ",0.00);" in out and ",0.85);" in out
    assert out.count("border-bottom:2px solid #D62728") == 2  # legend + the shifted
    assert "rank under base 9: shifted" in out and "KL(sft||base) 2.0000" in out


@pytest.mark.slow
def test_token_shift_page(demo_warehouse, monkeypatch):
    con = duckdb.connect(str(demo_warehouse), read_only=True)
    try:
        n_raw = con.execute("select count(*) from raw.token_shift").fetchone()[0]
        n_logprobs = con.execute("select count(*) from raw.token_logprobs "
                                 "where role = 'base'").fetchone()[0]
        (n_groups,) = con.execute("select count(distinct grp) from "
                                  "marts.fct_post_token_shift").fetchone()
        (n_diffs,) = con.execute("select count(*) from "
                                 "marts.fct_group_difference_intervals").fetchone()
    finally:
        con.close()
    assert n_raw == n_logprobs > 0  # one shift row per scored token
    # high - low of every measure, within answers, within questions and over both
    assert n_groups == 2 and n_diffs == 11 * 3
    st.cache_data.clear()
    monkeypatch.setenv("SFTSCOPE_DB", str(demo_warehouse))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/token_shift.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("bootstrap resamples" in m.value for m in at.markdown)
    specs = [json.loads(el.proto.spec) for el in at.get("vega_lite_chart")]
    assert len(specs) >= 3
    assert "kl" in at.get("html")[0].proto.body.lower()
    types = at.radio(key="shift_post_type")
    assert types.value == "answer" and len(types.options) == 3  # like with like
    # the page's post list and top tokens are the answers' (the typed marts)
    answers = {p for (p,) in query(demo_warehouse, "select post_id from "
                                   "marts.fct_post_token_shift where post_type = "
                                   "'answer'")}
    listed = {int(o.split()[0]) for o in at.selectbox(key="shift_post").options}
    assert listed == answers
    grp = at.selectbox(key="shift_grp").value
    top = {t for (t,) in query(demo_warehouse, "select token_id from "
                               "marts.fct_top_shifted_tokens where post_type = "
                               "'answer' and grp = ? and direction = 'promoted' "
                               "and rank_by_count <= 20", [grp])}
    drawn = {r["token_id"] for d in at.get("vega_lite_chart")[-1].proto.datasets
             for r in pa.ipc.open_stream(d.data.data).read_all().to_pylist()}
    assert top and drawn == top
    types.set_value("all").run()
    at.selectbox(key="shift_metric").select("mean_kl_sft_base").run()
    at.radio(key="shift_direction").set_value("demoted").run()
    at.radio(key="shift_by").set_value("kl_mass").run()
    post = at.selectbox(key="shift_post")
    post.select(post.options and int(post.options[-1].split()[0])).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.label for m in at.metric] == ["tokens", "mean KL(p_sft || p_base)",
                                            "shifted"]


def test_token_shift_page_before_dbt(tmp_path, monkeypatch):
    """Raw tables only (no marts yet): the page says what to run instead of failing."""
    from ingest.warehouse import connect, ensure_raw_schema

    path = tmp_path / "raw_only.duckdb"
    with connect(path) as con:
        ensure_raw_schema(con)
    st.cache_data.clear()
    monkeypatch.setenv("SFTSCOPE_DB", str(path))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/token_shift.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "No token shift yet" in " ".join(str(i.value) for i in at.info)
    assert "dbt build" in at.code[0].value


def test_top_tokens_chart_labels_every_bar():
    """22 tokens, two of which read alike: 22 bars, each with its own label (the
    axis may not drop labels to avoid overlap), written as show_token writes them."""
    texts = [f" t{i}" for i in range(20)] + ["same", "same"]
    df = pd.DataFrame({"token_id": range(22), "token_text": texts,
                       "n_shifted": range(22, 0, -1), "n_posts": 1,
                       "share_of_shifted": 0.01, "kl_mass": 0.5,
                       "share_of_kl_mass": 0.01, "mean_kl_sft_base": 0.1})
    spec = shift.top_tokens_chart(df, "count").to_dict()
    y = spec["encoding"]["y"]
    assert len(y["sort"]) == 22
    assert y["axis"]["labelOverlap"] is False
    for i, text in enumerate(texts):
        assert f"datum.value == '{i:03d}' ? {json.dumps(shift.show_token(text))}" \
            in y["axis"]["labelExpr"]
    assert spec["height"] == {"step": 20}


@pytest.mark.slow
def test_token_shift_page_with_generated_rows(demo_warehouse, tmp_path, monkeypatch):
    """URIAL's generated rows (three answers, loaded through ingest.generated into a
    copy of the demo warehouse, which holds teacher-forced shift too): the page's
    generated section states the shifted share with its 95% t interval over answers
    and the null (an SFT equal to its base shifts 0%), and draws the classes in a
    chart of their own; the numbers are pandas' over the rows, SciPy's interval;
    the teacher-forced chart keeps its own groups, without the generated one."""
    import shutil

    import numpy as np
    from scipy import stats

    from compute.behaviour import urial
    from ingest.generated import load
    from tests.conftest import run_dbt

    db = tmp_path / "warehouse.duckdb"
    shutil.copyfile(demo_warehouse, db)
    pair = duckdb.connect(str(db), read_only=True).execute(
        "select max(pair) from marts.fct_group_token_shift").fetchone()[0]
    rng = np.random.default_rng(8)
    answers = [urial.Answer(post_id, [0], list(range(n)), {
        "rank_sft_top_in_base": rng.choice([1, 1, 1, 2, 3, 7, 90], size=n),
        **{k: rng.random(n) for k in ("logprob_base", "logprob_sft", "kl_sft_base",
                                      "kl_base_sft", "entropy_base", "entropy_sft")}})
        for post_id, n in ((11, 25), (12, 9), (13, 40))]
    table = urial.rows(answers, "g1", pair)
    assert load(urial.write(table, tmp_path / "runs" / pair), db) == {
        "generated_token_shift": 74}
    run_dbt(db, "build", "--quiet", "--select", "+fct_generated_token_shift")
    df = table.to_pandas()
    per = df.groupby("post_id")["shift_class"].apply(lambda c: (c == "shifted").mean())
    lo, hi = stats.t.interval(0.95, len(per) - 1, loc=per.mean(), scale=stats.sem(per))

    st.cache_data.clear()
    monkeypatch.setenv("SFTSCOPE_DB", str(db))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/token_shift.py").run()
    assert not at.exception, [e.value for e in at.exception]
    (said,) = [m.value for m in at.markdown if "generated tokens in" in m.value]
    assert f"**{(df['rank_in_base'] > 3).mean():.1%} shifted**" in said
    assert "74 generated tokens in 3 answers" in said
    assert f"95% t interval over answers {lo:.1%} to {hi:.1%}" in said
    assert "Null: an SFT equal to its base shifts 0%" in said
    charts = []  # the rows each class chart draws
    for el in at.get("vega_lite_chart"):
        for ds in el.proto.datasets:
            rows = pa.ipc.open_stream(ds.data.data).read_all().to_pylist()
            if rows and {"class", "share", "grp"} <= set(rows[0]):
                charts.append(rows)
    generated = [c for c in charts if {r["grp"] for r in c} == {shift.GENERATED}]
    forced = [c for c in charts if shift.GENERATED not in {r["grp"] for r in c}]
    assert len(generated) == 1 and len(forced) == 1
    got = {(r["position_bucket"], r["class"]): r["share"] for r in generated[0]}
    for cls in ("unshifted", "marginal", "shifted"):
        assert got[("all", cls)] == pytest.approx((df["shift_class"] == cls).mean())
        early = df[df["position"] < 16]
        assert got[("0-15", cls)] == pytest.approx((early["shift_class"] == cls).mean())
