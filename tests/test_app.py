"""Every page of the app under streamlit.testing's AppTest: against the demo
warehouse built by the real pipeline, against one with behaviour rows, and against
missing, empty and busy warehouses (a message, never a traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_lib import db
from tests.conftest import query, run_dbt, run_py, shared_dir

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGES = ["overview", "heatmap", "layers", "spectra", "directions", "perplexity",
         "token_shift", "drift", "posts", "sql", "over_training", "attribution"]


@pytest.fixture(autouse=True)
def fresh_cache():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def open_page(page: str, warehouse: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("SFTSCOPE_DB", str(warehouse))
    at = AppTest.from_file(APP, default_timeout=60).run()
    if page != "overview":
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts_of(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("vega_lite_chart")]


def marks(spec: dict) -> set[str]:
    found, stack = set(), [spec]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            mark = node.get("mark")
            if mark is not None:
                found.add(mark if isinstance(mark, str) else mark.get("type"))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def said(at: AppTest) -> str:
    """The page's takeaway (app_lib.ui.takeaway): its sentences, or ''."""
    return " ".join(m.value for m in at.markdown
                    if m.value.startswith(":material/lightbulb:"))


def infos(at: AppTest) -> str:
    return " ".join(str(i.value) for i in at.info)


def count(path: Path, table: str) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(f"select count(*) from {table}").fetchall()[0][0]
    except duckdb.CatalogException:
        return 0
    finally:
        con.close()


@pytest.fixture(scope="module")
def scored_warehouse(demo_warehouse, tmp_path_factory) -> Path:
    """A copy of the demo warehouse that certainly holds behaviour rows and prompts:
    the real ones when the pipeline made them, else a few synthetic ones."""
    path = tmp_path_factory.mktemp("scored") / "warehouse.duckdb"
    shutil.copy(demo_warehouse, path)
    con = duckdb.connect(str(path))
    try:
        con.execute("create schema if not exists marts").fetchall()
        has_prompts = con.execute(
            "select count(*) from duckdb_tables() where schema_name = 'marts' "
            "and table_name = 'prompts'").fetchall()[0][0]
        if not has_prompts:
            rng = np.random.default_rng(0)
            prompts = pd.DataFrame({
                "site": "physics.demo", "post_id": np.arange(101, 107),
                "post_type": "question", "grp": ["low", "high"] * 3,
                "score": [-5, 7, -4, 9, -3, 12],
                "title": [f"Post {i} on <entropy> & heat" for i in range(6)],
                "text": [" ".join(rng.choice(["heat", "entropy", "work", "gas"], 60))
                         for _ in range(6)]})
            prompts["n_chars"] = prompts["text"].str.len()
            con.register("p", prompts)
            con.execute("create table marts.prompts as select * from p").fetchall()
        if not con.execute("select count(*) from raw.token_logprobs").fetchall()[0][0]:
            rng = np.random.default_rng(1)
            posts = con.execute("select post_id, grp, text from marts.prompts "
                                "order by post_id limit 6").df()
            n_layers = con.execute("select max(n_layers) from raw.compute_runs"
                                   ).fetchall()[0][0] or 2
            tok, drift, texts = [], [], []
            for post in posts.itertuples():
                words = post.text.split()[:40]
                for role, shift in (("base", 0.0), ("sft", 0.1)):
                    for i, w in enumerate(words):
                        tok.append(("syn", "planted", role, post.post_id, i, i, f" {w}",
                                    -3.0 - rng.random() + shift * rng.standard_normal()))
                for layer in range(n_layers + 1):
                    drift.append(("syn", "planted", post.post_id, layer, len(words),
                                  0.01 * layer * len(words), 0.99 * len(words),
                                  0.1 * layer, 10.0))
                texts.append(("syn", "planted", post.post_id, "physics.demo", post.grp,
                              len(words), len(" ".join(words)), len(words),
                              "answer" if post.grp == "high" else "question"))
            con.executemany("insert into raw.token_logprobs (run_id, pair, role, post_id, position, token_id, token_text, logprob) values "
                            "(?, ?, ?, ?, ?, ?, ?, ?)", tok).fetchall()
            con.executemany("insert into raw.residual_drift values "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?)", drift).fetchall()
            con.executemany("insert into raw.post_texts values "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?)", texts).fetchall()
    finally:
        con.close()
    return path


@pytest.fixture
def empty_warehouse(tmp_path) -> Path:
    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    return path


@pytest.fixture
def raw_only_warehouse(tmp_path) -> Path:
    """What exists after the first write and before any dbt run: raw tables, empty."""
    from ingest.warehouse import connect, ensure_raw_schema

    path = tmp_path / "raw_only.duckdb"  # not raw.duckdb: its catalog would be "raw"
    with connect(path) as con:
        ensure_raw_schema(con)
    return path


# --- the demo warehouse, as the pipeline built it ---------------------------------

def test_overview(demo_warehouse, monkeypatch):
    at = open_page("overview", demo_warehouse, monkeypatch)
    assert at.title[0].value == "sftscope"
    assert [m.label for m in at.metric] == ["pairs", "weight matrices",
                                            "pairs with behaviour"]
    assert at.metric[0].value == "1"
    pairs = at.dataframe[0].value
    assert pairs["pair"].tolist() == ["planted"]
    assert len(at.dataframe) == 3  # pairs, medians per module, relations
    # the trained demo pair's loss curves (its training log is in the warehouse)
    assert "How the trained pairs learned" in [h.value for h in at.subheader]
    assert len(at.get("vega_lite_chart")) == 1
    # the takeaway: the range of ||dW||_F / ||W_base||_F over the block matrices,
    # the same numbers the mart holds
    lo, hi, n = query(demo_warehouse, "select min(relative_frobenius_change), "
                      "max(relative_frobenius_change), count(*) from "
                      "marts.fct_layer_module_metrics")[0]
    assert (f"**planted**: fine-tuning moved every one of its {n} block matrices by "
            f"{lo:.0%} to {hi:.0%} of its norm") in said(at)
    assert "**planted**: SFT's perplexity against the base's: " in said(at)


def test_heatmap(demo_warehouse, monkeypatch):
    at = open_page("heatmap", demo_warehouse, monkeypatch)
    assert at.selectbox(key="heatmap_metric").value == "relative_frobenius_change"
    assert at.sidebar.selectbox[0].value == "planted"
    assert "Relative Frobenius change" in said(at) and "matrices" in said(at)
    (spec,) = charts_of(at)
    assert "rect" in marks(spec)
    assert "relative_frobenius_change" in json.dumps(spec["layer"][0]["encoding"])
    at.selectbox(key="heatmap_metric").select("delta_signal_rank").run()
    at.toggle(key="heatmap_log").set_value(True).run()
    assert not at.exception
    (spec,) = charts_of(at)
    # a rank: coloured as its share of full rank, the rank printed in the cells
    assert spec["layer"][0]["encoding"]["color"]["field"] == "share_of_full_rank"
    assert spec["layer"][0]["encoding"]["color"]["scale"]["type"] == "log"
    assert spec["layer"][1]["encoding"]["text"]["field"] == "delta_signal_rank"
    assert at.download_button


def test_layers(demo_warehouse, monkeypatch):
    at = open_page("layers", demo_warehouse, monkeypatch)
    assert "Spearman rho" in said(at) or "too few to test a trend" in said(at)
    spec, esd, _ = charts_of(at)
    assert spec["encoding"]["x"]["field"] == "depth"
    at.selectbox(key="layers_module").select("q_proj").run()
    at.selectbox(key="layers_metric").select("relative_signal_rank").run()
    assert not at.exception
    spec, esd, traps = charts_of(at)
    assert spec["encoding"]["y"]["field"] == "relative_signal_rank"
    # the ESD's alpha of the q_proj cells, as fct_layer_module_esd holds them
    lines = esd["layer"][1]
    (el,) = [e for e in at.get("vega_lite_chart")[1].proto.datasets
             if e.name == lines["data"]["name"]]
    drawn = {(r["layer"], r["role"]): r["alpha"]
             for r in pa.ipc.open_stream(el.data.data).read_all().to_pylist()}
    stored = {(layer, role): a for layer, b, s, d in query(demo_warehouse, """
        select layer, base_alpha, sft_alpha, delta_alpha from marts.fct_layer_module_esd
        where module = 'q_proj'""") for role, a in zip(("base", "sft", "delta"),
                                                    (b, s, d), strict=True)}
    assert drawn == pytest.approx(stored)
    # the correlation traps of the q_proj cells (the fixture runs --traps)
    (el,) = [e for e in at.get("vega_lite_chart")[2].proto.datasets
             if e.name == traps["data"]["name"]]
    drawn = {(r["layer"], r["role"]): r["traps"]
             for r in pa.ipc.open_stream(el.data.data).read_all().to_pylist()}
    stored = {(layer, role): n for layer, b, s in query(demo_warehouse, """
        select layer, base_n_traps, sft_n_traps from marts.fct_layer_module_traps
        where module = 'q_proj'""") for role, n in (("base", b), ("sft", s))}
    assert drawn == stored and len(stored) >= 4
    assert any("traps, W_sft:" in m.value for m in at.markdown)
    at.multiselect(key="layers_pairs").set_value([]).run()
    assert "at least one pair" in infos(at)


def test_spectra(demo_warehouse, monkeypatch):
    at = open_page("spectra", demo_warehouse, monkeypatch)
    assert at.selectbox(key="spectra_module").value == "q_proj"
    assert at.select_slider(key="spectra_layer").value == 3  # the middle of 6
    assert "singular values stand above the Gavish-Donoho threshold" in said(at)
    assert "for a flat spectrum" in said(at)
    spectra, energy, esd = charts_of(at)
    assert {"line", "rule", "text"} <= marks(spectra)  # the noise edge drawn
    assert {"line", "rule"} <= marks(esd)  # the ESD tail, its fit, the MP edges
    scale = spectra["layer"][0]["encoding"]["color"]["scale"]
    assert scale["domain"] == ["W_base", "W_sft", "dW = W_sft - W_base"]
    assert "line" in marks(energy)
    at.select_slider(key="spectra_layer").set_value(0).run()
    assert "model.layers.0.self_attn.q_proj.weight" in at.markdown[0].value
    # a matrix outside the blocks: no layer to choose
    outside = [m for m in ("embed_tokens", "lm_head")
               if m in at.selectbox(key="spectra_module").options]
    assert outside
    at.selectbox(key="spectra_module").select(outside[0]).run()
    assert not at.exception
    assert len(charts_of(at)) == 3


def test_posts_and_behaviour_pages_on_demo(demo_warehouse, monkeypatch):
    """Whatever of prompts and behaviour the pipeline has made so far: shown, or a
    clear 'run this' message."""
    scored = count(demo_warehouse, "raw.token_logprobs") > 0
    for page in ("perplexity", "drift"):
        at = open_page(page, demo_warehouse, monkeypatch)
        if scored:
            assert charts_of(at)
        else:
            assert "No " in infos(at) and "compute.run" in at.code[0].value
    at = open_page("posts", demo_warehouse, monkeypatch)
    if count(demo_warehouse, "marts.prompts"):
        assert at.text_input(key="posts_search") is not None
    else:
        assert "ingest.stackexchange" in at.code[0].value


def test_sql_console(demo_warehouse, monkeypatch):
    at = open_page("sql", demo_warehouse, monkeypatch)
    assert said(at).startswith(":material/lightbulb: The warehouse holds ")
    assert "marts.dim_pairs" in at.text_area(key="sql_text").value
    # one schema table (no expander per table), filterable by table, column or text
    assert not at.expander
    schema = at.dataframe[-1].value
    assert "marts.fct_matrix_metrics" in set(schema["table"])
    at.text_input(key="sql_filter").input("signal_rank").run()
    schema = at.dataframe[-1].value
    text = schema["table"] + " " + schema["column"] + " " + schema["comment"].fillna("")
    assert len(schema) and text.str.contains("signal_rank", case=False).all()
    assert schema["column"].str.contains("signal_rank").sum() >= 5
    at.button(key="sql_run").click().run()
    assert not at.exception and not at.error
    result = at.dataframe[0]  # the query's result comes first, full width
    assert result.value["pair"].tolist() == ["planted"]
    assert not at.columns  # nothing beside it
    assert at.get("download_button")
    at.text_area(key="sql_text").input("attach 'x.duckdb' as x").run()
    at.button(key="sql_run").click().run()
    assert "Refused" in at.error[0].value
    at.text_area(key="sql_text").input("select * from read_csv('/etc/passwd')").run()
    at.button(key="sql_run").click().run()
    assert "Refused" in at.error[0].value
    at.text_area(key="sql_text").input("selec pair frm marts.dim_pairs").run()
    at.button(key="sql_run").click().run()
    assert at.error[0].value.startswith("Syntax error: Parser Error")
    assert "Refused" not in at.error[0].value
    at.selectbox(key="sql_example").select("Summarize a table").run()
    at.button(key="sql_run").click().run()
    assert not at.error
    assert "column_name" in at.dataframe[0].value.columns


# --- behaviour rows present ------------------------------------------------------

def test_perplexity(scored_warehouse, monkeypatch):
    at = open_page("perplexity", scored_warehouse, monkeypatch)
    assert "SFT's perplexity against the base's: " in said(at)
    assert "95% interval" in said(at) or "too few for an interval" in said(at)
    assert at.radio(key="ppl_measure").value == "perplexity"
    box, cumulative, tokens = charts_of(at)
    assert "boxplot" in marks(box)
    assert "token_text" in json.dumps(cumulative)
    assert "pointerover" in json.dumps(tokens)
    assert at.get("html")
    assert [m.label for m in at.metric][:3] == ["tokens", "perplexity, base",
                                               "perplexity, SFT"]
    post = at.selectbox(key="ppl_post")
    post.select(post.options and int(post.options[-1].split()[0])).run()
    at.radio(key="ppl_measure").set_value("bits_per_byte").run()
    assert not at.exception
    assert charts_of(at)[0]["layer"][0]["encoding"]["y"]["title"] == "bits per byte"


def test_drift(scored_warehouse, monkeypatch):
    at = open_page("drift", scored_warehouse, monkeypatch)
    assert "The hidden states part most at index" in said(at)
    assert "holds 0" in said(at) or "The groups differ at" in said(at)
    spec, difference = charts_of(at)
    assert difference["layer"][1]["encoding"]["y2"]["field"] == "ci95_high"
    assert spec["encoding"]["x"]["field"] == "layer"
    at.radio(key="drift_measure").set_value("mean_cos").run()
    assert charts_of(at)[0]["encoding"]["y"]["field"] == "mean_cos"


def test_posts(scored_warehouse, monkeypatch):
    at = open_page("posts", scored_warehouse, monkeypatch)
    assert "post(s): " in said(at) and "sign test against 50%" in said(at)
    table = at.dataframe[0].value
    assert len(table) >= 2 and {"perplexity_base", "perplexity_sft"} <= set(table)
    assert at.subheader[0].value  # the first post is shown
    at.text_input(key="posts_search").input("no-such-words-anywhere").run()
    assert not at.exception
    assert "0 post(s)" in " ".join(c.value for c in at.caption)
    at.text_input(key="posts_search").input("").run()
    at.multiselect(key="posts_groups").set_value(["low"]).run()
    assert set(at.dataframe[0].value["grp"]) == {"low"}


# --- no warehouse, an empty one, a busy one --------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_pages_without_warehouse(page, tmp_path, monkeypatch):
    at = open_page(page, tmp_path / "missing.duckdb", monkeypatch)
    assert "No warehouse yet" in infos(at)
    assert "make demo" in at.code[0].value
    assert not (tmp_path / "missing.duckdb").exists()


@pytest.mark.parametrize("page", PAGES)
def test_pages_on_empty_warehouses(page, empty_warehouse, raw_only_warehouse,
                                   monkeypatch):
    for wh in (empty_warehouse, raw_only_warehouse):
        at = open_page(page, wh, monkeypatch)
        if page == "sql":
            assert at.text_area(key="sql_text") is not None
        else:
            assert at.info, f"{page} on {wh.name}: no message"
            assert any(word in at.code[0].value for word in ("dbt build", "make demo"))


def test_busy_warehouse_says_so(demo_warehouse, tmp_path, monkeypatch):
    path = tmp_path / "busy.duckdb"
    shutil.copy(demo_warehouse, path)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(db, "ATTEMPTS", 2)
        monkeypatch.setattr(db, "FIRST_PAUSE_S", 0.05)
        at = open_page("heatmap", path, monkeypatch)
        assert "warehouse is busy" in at.warning[0].value
        assert "tried 2 times" in at.warning[0].value
        assert at.button(key="retry-busy").label == "Retry"
    finally:
        holder.kill()
        holder.wait()
    at.button(key="retry-busy").click().run()
    assert not at.exception and not at.warning
    assert charts_of(at)


@pytest.mark.slow
def test_lora_section_after_make_demos_quick_recovery(demo_warehouse, demo_pair,
                                                      tmp_path, tmp_path_factory,
                                                      monkeypatch):
    """The Perplexity page's "Is SFT a LoRA?" curve after the LoRA recovery `make
    demo` runs (its ranks, read from the Makefile; in the setting of the demo
    warehouse's behaviour run, the matrices alone here to stay quick) and dbt: a
    headline with its interval and the chart, no "run this"."""
    import re

    ranks = re.search(r"^DEMO_LORA_RANKS \?= (\S+)$",
                      (ROOT / "Makefile").read_text(), re.M).group(1)
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(demo_warehouse, path)
    # recovery scores in the behaviour run's own setting: that run's folder
    shutil.copytree(shared_dir(tmp_path_factory) / "demo_warehouse" / "runs" / "planted",
                    tmp_path / "runs" / "planted")
    run_py("-m", "compute.lora_recovery", "--base", str(demo_pair / "base"), "--sft",
           str(demo_pair / "sft"), "--name", "planted", "--ranks", ranks,
           "--vectors", "base", "--out", str(tmp_path / "runs"), "--no-progress",
           db=path)
    run_dbt(path, "build", "--quiet", "--select", "+fct_lora_recovery")
    measured = {r for (r,) in query(path, "select distinct lora_rank from "
                                    "marts.fct_lora_recovery")}
    assert measured == {0, *map(int, ranks.split(","))}
    at = open_page("perplexity", path, monkeypatch)
    assert "No rank-recovery run yet" not in infos(at)
    headline = next(m.value for m in at.markdown
                    if m.value.startswith(("Spectrally ", "No measured rank keeps")))
    assert "95% interval" in headline or "too few posts for an interval" in headline
    # the curve with its intervals, the 90% and 100% guides and their labels
    assert any({"errorbar", "line", "rule", "text"} <= marks(spec)
               and "share of SFT's change (95% interval)" in json.dumps(spec)
               for spec in charts_of(at))
