"""Checkpoint layouts beyond Qwen2.5 (compute.arch.naming, compute.fixtures.checkpoint_layouts, .bin files).

Tiny pairs in each layout with planted ranks go through compute.run and dbt build;
split parts of fused matrices are held to NumPy's SVD of the unfused matrices, cut
out here by this file's own reading of each layout; bad input fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from compute.arch.naming import Layout, LayoutError, block_of, parse_name
from compute.fixtures.checkpoint_layouts import LAYOUTS, TINY, build_layout_pair
from compute.run.cli import main as run_main
from tests.conftest import query, run_dbt

# -- names and splits, no checkpoint ---------------------------------------------


@pytest.mark.parametrize(("name", "layer", "module"), [
    ("transformer.h.3.attn.c_attn.weight", 3, "c_attn"),
    ("h.11.attn.c_proj.weight", 11, "o_proj"),
    ("transformer.h.0.mlp.c_proj.weight", 0, "down_proj"),
    ("transformer.h.0.mlp.c_fc.bias", 0, "up_proj.bias"),
    ("gpt_neox.layers.2.attention.query_key_value.weight", 2, "query_key_value"),
    ("gpt_neox.layers.2.attention.dense.weight", 2, "o_proj"),
    ("gpt_neox.layers.2.mlp.dense_4h_to_h.weight", 2, "down_proj"),
    ("transformer.h.5.self_attention.dense.weight", 5, "o_proj"),  # falcon, bloom
    ("model.layers.7.block_sparse_moe.experts.3.w1.weight", 7, "gate_proj"),
    ("model.layers.7.block_sparse_moe.experts.3.w2.weight", 7, "down_proj"),
    ("model.layers.7.block_sparse_moe.gate.weight", 7, "router"),
    ("model.layers.1.mlp.shared_expert.up_proj.weight", 1, "shared_expert.up_proj"),
    ("language_model.model.layers.4.self_attn.q_proj.weight", 4, "q_proj"),
    ("model.decoder.layers.9.fc1.weight", 9, "up_proj"),
    ("transformer.blocks.1.ffn.up_proj.weight", 1, "up_proj"),
    ("model.layers.0.self_attn.qkv_proj.weight", 0, "qkv_proj"),
    ("model.layers.0.mlp.gate_up_proj.weight", 0, "gate_up_proj"),
    ("model.embed_tokens.weight", None, "embed_tokens"),
    ("transformer.wte.weight", None, "embed_tokens"),
    ("embed_out.weight", None, "lm_head"),
    ("lm_head.weight", None, "lm_head"),
])
def test_any_block_container_gives_the_layer_and_a_stable_module(name, layer, module):
    assert parse_name(name, moe=".experts." in name or "moe" in name) == (layer, module)


def test_expert_index_and_container_path():
    lay = Layout({"num_hidden_layers": 8, "num_local_experts": 4, "hidden_size": 8})
    assert lay.place("model.layers.7.block_sparse_moe.experts.3.w3.weight") == (
        7, "up_proj", 3)
    assert block_of("language_model.model.layers.4.mlp.up_proj.weight") == (
        "language_model.model.layers", 4)


def test_a_layer_beyond_the_configs_count_is_refused_naming_the_tensor():
    lay = Layout({"n_layer": 2, "n_embd": 8, "n_head": 2, "model_type": "gpt2"})
    with pytest.raises(LayoutError, match=r"transformer\.h\.2\.attn\.c_attn.*2 layers"):
        lay.views("transformer.h.2.attn.c_attn.weight", (8, 24))


def test_a_3d_tensor_of_unknown_meaning_is_refused_naming_it():
    lay = Layout({"num_hidden_layers": 2, "hidden_size": 8})
    with pytest.raises(LayoutError, match=r"model\.layers\.0\.conv\.weight.*3-D"):
        lay.views("model.layers.0.conv.weight", (4, 8, 3))
    with pytest.raises(LayoutError, match="stacked experts"):  # sizes fit nothing
        Layout({"num_hidden_layers": 2, "hidden_size": 8, "num_experts": 4,
                "moe_intermediate_size": 6}).views(
            "model.layers.0.mlp.experts.down_proj", (4, 5, 7))


def _rows_of(views, part):
    return next(np.asarray(v.rows) for v in views if v.part == part)


def test_gpt_neox_query_key_value_is_split_per_head():
    """Rows of query_key_value are (heads, 3, head_dim): head h's q rows are
    [3*d*h, 3*d*h + d), its k rows the next d, its v rows the d after."""
    heads, d = 4, 3
    lay = Layout({"model_type": "gpt_neox", "hidden_size": heads * d,
                  "num_attention_heads": heads, "num_hidden_layers": 1})
    views = lay.views("gpt_neox.layers.0.attention.query_key_value.weight",
                      (3 * heads * d, heads * d))
    for k, part in enumerate("qkv"):
        want = [3 * d * h + k * d + j for h in range(heads) for j in range(d)]
        assert _rows_of(views, part).tolist() == want


def test_falcon_query_key_value_is_split_per_kv_group():
    """Falcon (new decoder architecture): per kv group, its q heads then one k and
    one v head: 8 heads, 2 kv heads, d = 2 -> groups of (4 + 2) x 2 rows."""
    lay = Layout({"model_type": "falcon", "hidden_size": 16, "num_attention_heads": 8,
                  "num_kv_heads": 2, "num_hidden_layers": 1})
    views = lay.views("transformer.h.0.self_attention.query_key_value.weight",
                      ((8 + 4) * 2, 16))
    assert _rows_of(views, "q").tolist() == [*range(0, 8), *range(12, 20)]
    assert _rows_of(views, "k").tolist() == [8, 9, 20, 21]
    assert _rows_of(views, "v").tolist() == [10, 11, 22, 23]


def test_codegen_qkv_proj_is_split_per_model_parallel_group():
    """CodeGen: qkv_proj's output is viewed as (4, 3 x local_dim) and split into
    query, value, key in that order (transformers' CodeGenAttention, mp_num = 4):
    hidden 8 -> local_dim 2, group g's q rows [6g, 6g + 2), v the next 2, k last."""
    lay = Layout({"model_type": "codegen", "n_embd": 8, "n_head": 2, "n_layer": 1})
    views = lay.views("transformer.h.0.attn.qkv_proj.weight", (24, 8))
    assert _rows_of(views, "q").tolist() == [0, 1, 6, 7, 12, 13, 18, 19]
    assert _rows_of(views, "v").tolist() == [2, 3, 8, 9, 14, 15, 20, 21]
    assert _rows_of(views, "k").tolist() == [4, 5, 10, 11, 16, 17, 22, 23]


def test_gpt_bigcode_c_attn_multi_query_or_per_head():
    """GPT-BigCode's c_attn (a Linear, [out, in]): with multi_query, [q; k; v] with
    one kv head; without, viewed as (heads, 3 x head_dim): per head."""
    mqa = Layout({"model_type": "gpt_bigcode", "n_embd": 8, "n_head": 2,
                  "n_layer": 1, "multi_query": True})
    views = mqa.views("transformer.h.0.attn.c_attn.weight", (16, 8))  # 8 + 2 x 4
    assert not views[0].transposed
    assert _rows_of(views, "k").tolist() == [8, 9, 10, 11]
    mha = Layout({"model_type": "gpt_bigcode", "n_embd": 8, "n_head": 2,
                  "n_layer": 1, "multi_query": False})
    views = mha.views("transformer.h.0.attn.c_attn.weight", (24, 8))
    assert _rows_of(views, "q").tolist() == [*range(0, 4), *range(12, 16)]
    assert _rows_of(views, "v").tolist() == [*range(8, 12), *range(20, 24)]


def test_grouped_query_qkv_proj_and_stacked_experts_stored_in_out():
    lay = Layout({"model_type": "phi3", "hidden_size": 16, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "num_hidden_layers": 1})
    views = lay.views("model.layers.0.self_attn.qkv_proj.weight", (32, 16))
    assert [(v.tensor.split(".")[-1], v.module, v.shape) for v in views] == [
        ("weight", "qkv_proj", (32, 16)), ("weight[q]", "q_proj", (16, 16)),
        ("weight[k]", "k_proj", (8, 16)), ("weight[v]", "v_proj", (8, 16))]
    moe = Layout({"hidden_size": 8, "num_experts": 2, "moe_intermediate_size": 6,
                  "num_hidden_layers": 1})
    views = moe.views("model.layers.0.mlp.experts.gate_up_proj", (2, 8, 12))
    assert all(v.transposed for v in views)  # [E, in, out]: recorded out x in
    assert [(v.tensor.split(".")[-1], v.expert, v.shape) for v in views] == [
        ("gate_up_proj[0]", 0, (12, 8)), ("gate_up_proj[0][gate]", 0, (6, 8)),
        ("gate_up_proj[0][up]", 0, (6, 8)), ("gate_up_proj[1]", 1, (12, 8)),
        ("gate_up_proj[1][gate]", 1, (6, 8)), ("gate_up_proj[1][up]", 1, (6, 8))]
    w = np.arange(2 * 8 * 12).reshape(2, 8, 12)
    np.testing.assert_array_equal(views[5].take(w), w[1][:, 6:])


def test_views_cut_torch_tensors_as_numpy_arrays(tmp_path):
    """The GPU and svd paths read torch tensors: each view cuts the same bits."""
    import torch

    from compute.io.checkpoints import resolve
    from compute.plan.pair import pair_plan

    for layout in ("gpt2", "stacked_experts"):
        base, sft = build_layout_pair(layout, tmp_path / layout)
        b = resolve(str(base))
        plan = pair_plan(b, resolve(str(sft)))
        for name in plan.matrices:
            arr, t = b.read_array(name)[0], b.read(name)
            assert t.dtype == torch.bfloat16
            for view in plan.views[name]:
                got = view.take(t).view(torch.int16).numpy().view(np.uint16)
                want = view.take(arr)
                assert want.flags.c_contiguous and np.array_equal(got, want), view
                out, inp = view.shape
                assert got.shape == ((inp, out) if view.transposed else (out, inp))


# -- every layout through compute.run and dbt build ------------------------------


@pytest.fixture(scope="module")
def layouts_warehouse(tmp_path_factory) -> tuple[Path, Path]:
    """(folder of the layout pairs, warehouse) with every layout's spectra loaded
    (pair name = layout) and the weights marts built by dbt (models and tests)."""
    root = tmp_path_factory.mktemp("layouts")
    db = root / "warehouse.duckdb"
    for layout in LAYOUTS:
        base, sft = build_layout_pair(layout, root / layout)
        code = run_main(["--base", str(base), "--sft", str(sft), "--name", layout,
                         "--out", str(root / "runs"), "--db", str(db),
                         "--skip-behaviour", "--vectors", "0", "--no-progress"])
        assert code == 0, layout
    run_dbt(db, "build", "--quiet", "--select", "+path:models/marts/weights")
    return root, db


def _frame(db: Path, sql: str, params=None) -> pd.DataFrame:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_matrix_has_three_spectra_its_layer_and_its_planted_rank(
        layouts_warehouse, layout):
    root, db = layouts_warehouse
    truth = json.loads((root / layout / "planted.json").read_text())["ranks"]
    rows = _frame(db, "select tensor, role, layer, module, expert from raw.spectra "
                  "where pair = ?", [layout])
    # every matrix (and every part, every expert) once per role, nothing else
    assert sorted(rows.groupby("tensor").role.apply(sorted).items()) == sorted(
        (t, ["base", "delta", "sft"]) for t in truth)
    # a tensor inside the blocks has its block's index
    for r in rows.drop_duplicates("tensor").itertuples():
        _, layer = block_of(r.tensor)
        assert (None if pd.isna(r.layer) else int(r.layer)) == layer, r.tensor
        assert (".experts." in r.tensor) == (not pd.isna(r.expert)), r.tensor
    # no two matrices share a heatmap cell unless their expert tells them apart
    cells = rows[rows.role == "delta"].dropna(subset=["layer"])
    assert not cells.duplicated(["layer", "module", "expert"]).any()
    # the noise-aware rank finds every planted rank
    got = _frame(db, "select tensor, signal_rank, numerical_rank, n_short from "
                 "marts.fct_matrix_metrics where pair = ? and role = 'delta'", [layout])
    assert dict(zip(got.tensor, got.signal_rank, strict=True)) == truth


@pytest.mark.slow
def test_float32_pair_builds_green_with_the_weight_marts_filled(layouts_warehouse):
    """float32 on both sides: sigma = sqrt(2/12) ulp_f32(w) ~ 1e-9, so the MP edge
    and the Gavish-Donoho threshold both fall below the numerical tolerance
    s_1 max(m, n) 2^-23 and both equal it; the data test holds (the fixture's dbt
    build passed), the marts downstream are filled, the ranks are the planted."""
    root, db = layouts_warehouse
    rows = _frame(db, "select tensor, noise_sigma, mp_edge, gd_threshold, s_max, "
                  "n_rows, n_cols, signal_rank, numerical_rank from "
                  "marts.fct_matrix_metrics where pair = 'llama_fp32' and role = "
                  "'delta'")
    truth = json.loads((root / "llama_fp32" / "planted.json").read_text())["ranks"]
    assert len(rows) == len(truth)
    assert (rows.noise_sigma.between(1e-12, 1e-8)).all()
    floor = rows.s_max * np.maximum(rows.n_rows, rows.n_cols) * 2.0 ** -23
    np.testing.assert_allclose(rows.mp_edge, floor, rtol=1e-12)
    np.testing.assert_allclose(rows.gd_threshold, floor, rtol=1e-12)
    assert (rows.signal_rank == rows.numerical_rank).all()
    assert dict(zip(rows.tensor, rows.signal_rank, strict=True)) == truth
    cells = _frame(db, "select count(*) n, count(delta_signal_rank) k from "
                   "marts.fct_layer_module_metrics where pair = 'llama_fp32'")
    assert cells.n[0] == cells.k[0] == 7 * TINY.layers  # q k v o gate up down


@pytest.mark.slow
def test_split_parts_equal_numpy_svd_of_the_unfused_matrices(layouts_warehouse):
    """Each layout's parts cut out here, by this test's own reading of the layout
    (GPT-2: the columns of the [in, 3h] Conv1D weight; GPT-NeoX: rows (heads, 3, d);
    Phi-3: [q; k; v] and [gate; up] rows), against raw.spectra's `[q]`... rows."""
    root, db = layouts_warehouse
    h, heads, d, kv, inner = (TINY.hidden, TINY.heads, TINY.head_dim, TINY.kv_heads,
                              TINY.intermediate)

    def cut(layout: str, name: str, w: np.ndarray) -> dict[str, np.ndarray]:
        if layout == "gpt2":  # stored [in, out]: out = columns
            return {p: w[:, k * h:(k + 1) * h].T for k, p in enumerate("qkv")}
        if layout == "gpt_neox":
            grid = w.reshape(heads, 3, d, h)
            return {p: grid[:, k].reshape(heads * d, h) for k, p in enumerate("qkv")}
        if name.endswith("gate_up_proj.weight"):
            return {"gate": w[:inner], "up": w[inner:]}
        return {"q": w[:heads * d], "k": w[heads * d:(heads + kv) * d],
                "v": w[(heads + kv) * d:]}

    checked = 0
    for layout in ("gpt2", "gpt_neox", "phi3"):
        weights = {side: {k: v.double().numpy() for k, v in load_file(
            str(root / layout / side / "model.safetensors")).items()}
            for side in ("base", "sft")}
        fused = json.loads((root / layout / "planted.json").read_text())["fused"]
        spectra = _frame(db, "select tensor, role, n_rows, n_cols, singular_values "
                         "from raw.spectra where pair = ? and part is not null",
                         [layout]).set_index(["tensor", "role"])
        for name in fused:
            parts = {side: cut(layout, name, weights[side][name])
                     for side in ("base", "sft")}
            for part in parts["base"]:
                mats = {"base": parts["base"][part], "sft": parts["sft"][part],
                        "delta": parts["sft"][part] - parts["base"][part]}
                for role, m in mats.items():
                    row = spectra.loc[(f"{name}[{part}]", role)]
                    assert (row.n_rows, row.n_cols) == m.shape, (name, part)
                    ref = np.linalg.svd(m, compute_uv=False)
                    np.testing.assert_allclose(row.singular_values, ref,
                                               atol=1e-7 * ref[0], rtol=0)
                    checked += 1
    assert checked == 3 * (3 * 2 + 3 * 2 + 5 * 2)  # roles x (gpt2 + neox + phi3 parts)


@pytest.mark.slow
def test_marts_aggregate_experts_and_list_them(layouts_warehouse):
    _, db = layouts_warehouse
    grid = _frame(db, "select * from marts.fct_layer_module_metrics "
                  "where pair in ('mixtral', 'stacked_experts')")
    experts = _frame(db, "select * from marts.fct_expert_metrics")
    assert set(experts.pair) == {"mixtral", "stacked_experts"}
    for (pair, layer, module), cell in experts.groupby(["pair", "layer", "module"]):
        row = grid[(grid.pair == pair) & (grid.layer == layer)
                   & (grid.module == module)].iloc[0]
        assert row.n_experts == len(cell) == TINY.experts
        assert row.delta_signal_rank == pytest.approx(np.median(cell.delta_signal_rank))
        assert row.max_relative_frobenius_change == pytest.approx(
            cell.relative_frobenius_change.max())
        assert "experts.*." in row.tensor or "[*]" in row.tensor
    routers = grid[grid.module == "router"]
    assert len(routers) == 2 * TINY.layers and (routers.n_experts == 0).all()
    dense = grid[grid.module.isin(["q_proj", "o_proj"])]
    assert (dense.n_matrices == 1).all()
    assert query(db, "select count(*) from marts.fct_expert_metrics where pair = "
                 "'stacked_experts' and module = 'gate_up_proj'")[0][0] == (
        TINY.layers * TINY.experts)


# -- older checkpoints, bad input, the doctor ------------------------------------


def test_bin_checkpoints_give_the_same_spectra_as_safetensors(tmp_path):
    """The llama pair written as pytorch_model.bin (and as two shards) reads back
    the same tensors compute.io.checkpoints reads from safetensors."""
    from compute.io.checkpoints import resolve
    from compute.plan.pair import pair_plan

    plans = {}
    for layout in ("llama", "llama_bin_sharded"):
        base, sft = build_layout_pair(layout, tmp_path / layout)
        b, s = resolve(str(base)), resolve(str(sft))
        plans[layout] = (b, s, pair_plan(b, s))
    (b0, _, p0), (b1, _, p1) = plans["llama"], plans["llama_bin_sharded"]
    assert sorted(p0.matrices) == sorted(p1.matrices)
    assert sorted(p0.vectors) == sorted(p1.vectors)
    assert {t.file for t in b1.tensors.values()} == {
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"}
    for name in p0.matrices + p0.vectors:
        a0, st0 = b0.read_array(name)
        a1, st1 = b1.read_array(name)
        assert st0 == st1 == "bfloat16" and np.array_equal(a0, a1), name


class Payload:
    """Pickled into a .bin: loading it would call print (it must never run)."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_bin_with_pickled_code_is_refused_naming_the_file(tmp_path, capsys):
    import torch

    base, sft = build_layout_pair("llama_bin", tmp_path / "pair")
    state = torch.load(sft / "pytorch_model.bin", weights_only=True)
    state["extra"] = Payload()
    with open(sft / "pytorch_model.bin", "wb") as fh:
        torch.save(state, fh)
    capsys.readouterr()
    code = run_main(["--base", str(base), "--sft", str(sft), "--name", "evil",
                     "--out", str(tmp_path / "runs"), "--no-load", "--no-progress"])
    out = capsys.readouterr()
    assert code == 2
    assert str(sft / "pytorch_model.bin") in out.err and "pickled" in out.err
    assert "pickled code ran" not in out.out + out.err
    assert not (tmp_path / "runs" / "evil").exists()


def test_run_refuses_a_3d_tensor_of_unknown_meaning_before_any_work(tmp_path, capsys):
    import torch

    base, sft = build_layout_pair("llama", tmp_path / "pair")
    for folder in (base, sft):
        tensors = load_file(str(folder / "model.safetensors"))
        tensors["model.layers.1.self_attn.rotary.weight"] = torch.zeros(
            2, 3, 4, dtype=torch.bfloat16)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    code = run_main(["--base", str(base), "--sft", str(sft), "--name", "odd",
                     "--out", str(tmp_path / "runs"), "--no-load", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.layers.1.self_attn.rotary.weight" in err and "3-D" in err
    assert not (tmp_path / "runs" / "odd").exists()


def test_doctor_reports_the_layout_and_what_it_splits(tmp_path):
    import io

    from compute.pairs.doctor import check_pair

    out = io.StringIO()
    base, sft = build_layout_pair("gpt2", tmp_path / "gpt2")
    assert check_pair(str(base), str(sft), out=out, progress=False)
    text = out.getvalue()
    assert "blocks: transformer.h.N (2 layers; config 2)" in text
    assert "Conv1D storage [in, out]: 8 matrices, recorded out x in" in text
    assert "fused c_attn: 2 tensors analysed whole and split into q/k/v" in text
    out = io.StringIO()
    base, sft = build_layout_pair("mixtral", tmp_path / "mixtral")
    assert check_pair(str(base), str(sft), out=out, progress=False)
    assert f"experts: {TINY.experts} per layer (config {TINY.experts}); 2 router" \
        in out.getvalue()


def test_known_pairs_are_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        run_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("smollm2-135m", "llama3.1-8b", "mistral-7b", "gemma2-2b", "olmo2-7b",
                 "mixtral-8x7b", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        assert name in text


@pytest.mark.slow
def test_behaviour_half_runs_on_the_llama_layout_pair(tmp_path):
    """LlamaForCausalLM with a trained tokenizer: compute.run's log-probs of both
    models equal an independent transformers forward pass, post by post."""
    from tests.behaviour_helpers import Reference, prompts, read

    base, sft = build_layout_pair("llama", tmp_path / "llama")
    posts = prompts(3)
    posts.to_parquet(tmp_path / "prompts.parquet")
    code = run_main(["--base", str(base), "--sft", str(sft), "--name", "llama",
                     "--out", str(tmp_path / "runs"), "--no-load", "--skip-spectra",
                     "--prompts", str(tmp_path / "prompts.parquet"), "--no-progress"])
    assert code == 0
    got = read(tmp_path / "runs" / "llama", "token_logprobs")
    for role, folder in (("base", base), ("sft", sft)):
        ref = Reference(folder)
        for post in posts.itertuples():
            rows = got[(got.role == role) & (got.post_id == post.post_id)]
            want = ref.post(post.text).numpy()
            assert len(rows) == len(want) > 5
            np.testing.assert_allclose(rows.sort_values("position").logprob, want,
                                       atol=1e-4, rtol=0)


@pytest.mark.slow
def test_heatmap_page_shows_the_experts(layouts_warehouse, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    _, db = layouts_warehouse
    st.cache_data.clear()
    monkeypatch.setenv("SFTSCOPE_DB", str(db))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/heatmap.py").run()
    at.sidebar.selectbox[0].set_value("mixtral").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Experts" in [h.value for h in at.subheader]
    specs = [json.loads(el.proto.spec) for el in at.get("vega_lite_chart")]
    x_fields = [lay["encoding"]["x"]["field"] for s in specs for lay in s["layer"]]
    assert "module" in x_fields and "expert" in x_fields
    st.cache_data.clear()


@pytest.mark.parametrize(("name", "module"), [
    ("bert.encoder.layer.0.attention.self.query.weight", "q_proj"),
    ("bert.encoder.layer.0.attention.output.dense.weight", "o_proj"),
    ("bert.encoder.layer.0.intermediate.dense.weight", "up_proj"),
    ("bert.encoder.layer.0.output.dense.weight", "down_proj"),
    ("model.decoder.layers.0.encoder_attn.k_proj.weight", "cross_attn.k_proj"),
    ("model.layers.0.self_attn.gate_proj.weight", "attn_gate_proj"),
    ("model.layers.0.mlp.gate_proj.weight", "gate_proj"),
])
def test_encoder_style_cross_attention_and_attention_gates_have_their_own_cells(
        name, module):
    assert parse_name(name)[1] == module


def test_a_scalar_parameter_is_skipped_as_neither_matrix_nor_vector():
    assert "scalar" in Layout.skip("model.layers.0.mlp.act_fn.beta", ())
