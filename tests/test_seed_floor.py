"""The seed floor: the demo base, its shipped SFT A (seed 19) and the second fine-tune
B (models/demo-seed29, seed 29), scored by compute.run as the pairs (base, A),
(base, B) and (A, B), and compute.seed_floor on the first two runs' dW vectors;
marts/seeds against NumPy on the checkpoints' own weights (an SVD of each dW) and a
plain transformers forward pass of A and B."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT, query, run_dbt, run_py

pytestmark = pytest.mark.slow

DEMO, SEED = ROOT / "models" / "demo", ROOT / "models" / "demo-seed29"
TEXTS = [
    "The electric field of a point charge falls off as the inverse square of the "
    "distance, and the potential as its inverse.",
    "How do I compute the eigenvalues of a symmetric matrix? I tried numpy's linalg "
    "module but the order of the results confuses me.",
    "Energy is conserved in a closed system, and momentum when no external force acts "
    "on it: both follow from symmetries.",
]
PAIRS = {"demo": (DEMO / "base", DEMO / "sft"),
         "demo-seed29": (DEMO / "base", SEED / "sft"),
         "demo-seeds": (DEMO / "sft", SEED / "sft")}


def test_second_fine_tune_is_what_its_train_json_says():
    """The shipped files are the recorded ones, and it started from the shipped base."""
    summary = json.loads((SEED / "train.json").read_text())
    for rel, digest in summary["sha256"].items():
        assert hashlib.sha256((SEED / rel).read_bytes()).hexdigest() == digest, rel
    assert summary["base"]["sha256"] == hashlib.sha256(
        (DEMO / "base" / "model.safetensors").read_bytes()).hexdigest()
    own = json.loads((DEMO / "train.json").read_text())["config"]
    assert summary["config"] == own | {"seed": summary["config"]["seed"]}
    assert summary["config"]["seed"] != own["seed"]


@pytest.fixture(scope="module")
def floor(tmp_path_factory):
    work = tmp_path_factory.mktemp("seed_floor")
    prompts = work / "prompts.parquet"
    pd.DataFrame({"post_id": [1, 2, 3], "site": "s", "grp": ["low", "high", "high"],
                  "post_type": ["question", "answer", "answer"], "text": TEXTS}
                 ).to_parquet(prompts)
    db = work / "w.duckdb"
    for name, (base, sft) in PAIRS.items():  # vectors as compute.run's default
        vectors = ["--vectors", "0"] if name == "demo-seeds" else []
        run_py("-m", "compute.run", "--base", str(base), "--sft", str(sft), "--name",
               name, "--prompts", str(prompts), "--window", "128", *vectors,
               "--no-progress", "--device", "cpu", "--out", str(work / "runs"),
               db=db)
    run_py("-m", "compute.seed_floor", "--pair", "demo", "--other", "demo-seed29",
           "--out", str(work / "runs"), db=db)
    run_dbt(db, "build", "--quiet", "--select", "+dim_pairs", "+fct_seed_floor_matrices",
            "+fct_seed_floor_summary", "+fct_seed_floor_behaviour",
            "+fct_seed_floor_directions")
    return db


def weights(folder) -> dict[str, np.ndarray]:
    import torch
    from safetensors.torch import load_file

    return {k: v.to(torch.float64).numpy()
            for k, v in load_file(str(folder / "model.safetensors")).items()
            if v.ndim == 2}


def test_matrix_floor_against_numpy(floor):
    """||W_A - W_base|| / ||W_base||, the same for B, ||W_B - W_A|| / ||W_A|| per
    matrix, and per module type the correlation over layers of A's and B's change."""
    base, a, b = weights(DEMO / "base"), weights(DEMO / "sft"), weights(SEED / "sft")
    rows = pd.DataFrame(query(floor, "select tensor, module, relative_change_a, "
                              "relative_change_b, relative_change_between from "
                              "marts.fct_seed_floor_matrices"),
                        columns=["tensor", "module", "a", "b", "ab"])
    assert set(rows["tensor"]) == set(base)
    fro = np.linalg.norm
    for r in rows.itertuples():
        assert r.a == pytest.approx(fro(a[r.tensor] - base[r.tensor])
                                    / fro(base[r.tensor]), rel=1e-6)
        assert r.b == pytest.approx(fro(b[r.tensor] - base[r.tensor])
                                    / fro(base[r.tensor]), rel=1e-6)
        assert r.ab == pytest.approx(fro(b[r.tensor] - a[r.tensor])
                                     / fro(a[r.tensor]), rel=1e-6)
    summary = dict(query(floor, "select module, corr_relative_change from "
                         "marts.fct_seed_floor_summary"))
    for module, g in rows.groupby("module"):
        if len(g) > 1:
            assert summary[module] == pytest.approx(np.corrcoef(g.a, g.b)[0, 1],
                                                    abs=1e-9)
    assert summary["all"] == pytest.approx(np.corrcoef(rows.a, rows.b)[0, 1],
                                           abs=1e-9)


def test_behaviour_floor_against_a_forward_pass(floor):
    """Mean over the posts' tokens of KL(p_B || p_A) and of KL(p_A || p_base), by a
    plain transformers forward pass of each model on [<|endoftext|>, ids] (every
    post fits one window), against fct_seed_floor_behaviour's 'all' row and its
    answers-only row."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(DEMO / "base"))
    models = {k: AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
              .eval() for k, p in (("base", DEMO / "base"), ("a", DEMO / "sft"),
                                   ("b", SEED / "sft"))}
    prefix = tok.convert_tokens_to_ids("<|endoftext|>")
    per_post = []
    for text in TEXTS:
        ids = torch.tensor([[prefix, *tok(text, add_special_tokens=False)["input_ids"]]])
        with torch.inference_mode():
            lp = {k: torch.log_softmax(m(input_ids=ids).logits[0, :-1].double(), -1)
                  for k, m in models.items()}
        kl_ab = (lp["b"].exp() * (lp["b"] - lp["a"])).sum(-1)
        kl_a0 = (lp["a"].exp() * (lp["a"] - lp["base"])).sum(-1)
        per_post.append((float(kl_ab.sum()), float(kl_a0.sum()), kl_ab.numel()))
    got = {(g, t): (n, ab, a0) for g, t, n, ab, a0 in query(
        floor, "select grp, post_type, n_tokens, mean_kl_b_a, mean_kl_a_base "
        "from marts.fct_seed_floor_behaviour")}
    for key, pick in ((("all", "all"), [0, 1, 2]), (("all", "answer"), [1, 2]),
                      (("low", "question"), [0])):
        n = sum(per_post[i][2] for i in pick)
        ab = sum(per_post[i][0] for i in pick) / n
        a0 = sum(per_post[i][1] for i in pick) / n
        assert got[key][0] == n
        assert got[key][1] == pytest.approx(ab, rel=1e-4)
        assert got[key][2] == pytest.approx(a0, rel=1e-4)


def test_direction_floor_against_numpy(floor):
    """Per matrix and side, an SVD of dW_A = W_A - W_base and of dW_B by NumPy:
    share(k) = ||U_A[:, :k]^T U_B[:, :k]||_F^2 / k, the principal angles' cosines
    (the singular values of that product), span_dim = rank of W_base, chance k /
    span_dim; checked where the k-th singular value of both is separated from the
    (k+1)-th (else the top-k subspace itself is not defined). The demo's median over
    the matrices at k = 8 on the left side was 0.81 against chance 8 / 128."""
    base, a, b = weights(DEMO / "base"), weights(DEMO / "sft"), weights(SEED / "sft")
    got = {(t, side, k): (share, chance, span, cos) for t, side, k, share, chance,
           span, cos in query(floor, "select tensor, side, k, share, chance_share, "
                              "span_dim, cosines from marts.fct_seed_floor_directions")}
    assert {k for (_, _, k) in got} == set(range(1, 33))  # compute.run's 32 vectors
    assert {t for (t, _, _) in got} == set(base)
    checked = 0
    for tensor in base:
        (ua, sa, vta), (ub, sb, vtb) = (
            np.linalg.svd(w[tensor] - base[tensor], full_matrices=False)
            for w in (a, b))
        rank = np.linalg.matrix_rank(base[tensor])
        for side, pa, pb in (("left", ua.T, ub.T), ("right", vta, vtb)):
            for k in (1, 4, 8, 16):
                share, chance, span, cos = got[(tensor, side, k)]
                assert span == rank and chance == pytest.approx(k / rank)
                if min(1 - sa[k] / sa[k - 1], 1 - sb[k] / sb[k - 1]) < 1e-3:
                    continue
                cross = pa[:k] @ pb[:k].T
                assert share == pytest.approx(float((cross ** 2).sum()) / k,
                                              abs=2e-5)
                assert cos == pytest.approx(np.linalg.svd(cross, compute_uv=False),
                                            abs=2e-4)
                checked += 1
    assert checked >= 200
    left8 = [v[0] for key, v in got.items() if key[1:] == ("left", 8)]
    assert float(np.median(left8)) > 5 * 8 / 128  # far above chance on the demo


def test_direction_floor_reload_replaces(floor, tmp_path):
    """Loading the same floor file again leaves the same rows, not twice as many;
    a file of something else is refused, naming it, and changes nothing."""
    count = "select count(*) from raw.seed_direction_overlap"
    before = query(floor, count)[0][0]
    file = floor.parent / "runs" / "demo" / "seed_floor" / "demo-seed29.parquet"
    run_py("-m", "ingest.seed_floor", str(file), db=floor)
    assert query(floor, count)[0][0] == before > 0
    bad = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(bad)
    proc = run_py("-m", "ingest.seed_floor", str(bad), db=floor, check=False)
    assert proc.returncode == 2 and str(bad) in proc.stderr
    assert "lacks run_id" in proc.stderr
    assert query(floor, count)[0][0] == before
    # a run without vectors (the A-vs-B run: --vectors 0) or none at all: named
    runs = floor.parent / "runs"
    for pair, other, says in (("demo-seeds", "demo", "demo-seeds/run.json: no "
                               "finished singular vectors"),
                              ("demo", "nope", "nope/run.json: no such file")):
        proc = run_py("-m", "compute.seed_floor", "--pair", pair, "--other", other,
                      "--out", str(runs), db=floor, check=False)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert not (runs / "demo-seeds" / "seed_floor").exists()
    assert not (runs / "demo" / "seed_floor" / "nope.parquet").exists()
    assert query(floor, count)[0][0] == before


@pytest.fixture(scope="module")
def floor_app(floor, tmp_path_factory):
    """The floor's warehouse with every mart built (the pages read them)."""
    import shutil

    db = tmp_path_factory.mktemp("floor_app") / "w.duckdb"
    shutil.copyfile(floor, db)
    run_dbt(db, "run", "--quiet")
    return db


def _pct(x: float) -> str:
    return f"{x:.0%}"


def open_demo(page: str, warehouse, monkeypatch):
    """A page of the app on pair 'demo' (the sidebar's pick, kept across pages)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    monkeypatch.setenv("SFTSCOPE_DB", str(warehouse))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["chosen_pair"] = "demo"
    at.run()
    if page != "overview":
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_app_shows_the_floor_beside_the_change(floor_app, monkeypatch):
    """Overview, Layers, Perplexity, Token shift and Directions of pair 'demo' show
    the seed floor from the marts: the takeaways quote the A-to-B values and the
    tables and charts hold them."""
    import json

    import pyarrow as pa

    from tests.test_app import said

    (a, ab, corr), = query(floor_app, "select median_relative_change_a, "
                           "median_relative_change_between, corr_relative_change "
                           "from marts.fct_seed_floor_summary where module = 'all'")
    at = open_demo("overview", floor_app, monkeypatch)
    assert (f"SFT moved its matrices by {_pct(a)} of their norm (median); a second "
            f"fine-tune with another seed (demo-seed29) differs from it by "
            f"{_pct(ab)}") in said(at), said(at)
    assert f"correlate at {corr:.2f}" in said(at)

    at = open_demo("heatmap", floor_app, monkeypatch)
    assert f"differs from it by {_pct(ab)}" in said(at)
    grid = next(df.value for df in at.dataframe if "q_proj" in df.value.columns)
    stored = dict(query(floor_app, "select layer, relative_change_between from "
                        "marts.fct_seed_floor_matrices where module = 'q_proj'"))
    assert grid["q_proj"].to_dict() == pytest.approx(stored)

    at = open_demo("layers", floor_app, monkeypatch)
    at.selectbox(key="layers_metric").select("relative_frobenius_change").run()
    at.selectbox(key="layers_module").select("q_proj").run()
    assert not at.exception
    el = at.get("vega_lite_chart")[0].proto
    drawn = {(r["pair"], r["layer"]): r["relative_frobenius_change"]
             for d in el.datasets
             for r in pa.ipc.open_stream(d.data.data).read_all().to_pylist()}
    stored = dict(query(floor_app, "select layer, relative_change_between from "
                        "marts.fct_seed_floor_matrices where module = 'q_proj'"))
    assert {layer: v for (p, layer), v in drawn.items()
            if p == "demo: seed floor"} == pytest.approx(stored)
    assert "Seed floor (a second fine-tune" in said(at)

    rows = query(floor_app, "select grp, post_type, mean_kl_a_base, mean_kl_b_a from "
                 "marts.fct_seed_floor_behaviour where pair = 'demo'")
    at = open_demo("perplexity", floor_app, monkeypatch)
    table = next(df.value for df in at.dataframe
                 if "seed floor KL(p_B || p_SFT)" in df.value.columns)
    assert len(table) == len(rows)
    got = {(r["posts"], r["post type"]): r["seed floor KL(p_B || p_SFT)"]
           for _, r in table.iterrows()}
    assert got == pytest.approx({(g, t): ba for g, t, _, ba in rows})
    all_row = next(r for r in rows if r[:2] == ("all", "all"))
    assert f"all: {all_row[2]:.3g} vs seed {all_row[3]:.3g}" in said(at)

    at = open_demo("token_shift", floor_app, monkeypatch)
    compared = at.radio(key="shift_post_type").value
    want = [r for r in rows if r[1] == compared]
    assert want and all(f"{r[2]:.3g} vs seed {r[3]:.3g}" in said(at) for r in want)

    at = open_demo("directions", floor_app, monkeypatch)
    shares = [s for s, in query(floor_app, "select share from "
                                "marts.fct_seed_floor_directions where pair = 'demo' "
                                "and side = 'left' and k = 8")]
    assert f"top-8 subspaces is {float(np.median(shares)):.2g} (median over " \
        f"{len(shares)} matrices" in said(at), said(at)
    assert any("share" in json.dumps(json.loads(c.proto.spec))
               for c in at.get("vega_lite_chart"))
