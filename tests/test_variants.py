"""Fine-tunes that are not a same-dtype, same-vocabulary full checkpoint: an SFT in
float32 or float16 over a bf16 base, a resized vocabulary, a tied base against an
untied SFT, a PEFT LoRA adapter (compute.fixtures.variants builds them, with planted ranks).
compute.run on each; the signal rank recomputed here from the Parquet rows with the
Gavish-Donoho threshold equals the planted rank; the adapter's dW against PEFT's own
merge and NumPy's SVD of scale * B @ A; refusals of what cannot be compared."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from compute.fixtures.variants import ADDED_TOKENS, LORA, VARIANTS, build_variant
from compute.io.adapters import AdapterError, resolve_sft
from compute.io.checkpoints import CheckpointError, resolve
from compute.plan.pair import pair_plan
from compute.run.cli import main as run_main
from tests.conftest import query, run_dbt, run_py


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    for v in VARIANTS:
        build_variant(out, v)
    return out


@pytest.fixture(scope="module")
def runs(variants, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for v in VARIANTS:
        rc = run_main(["--base", str(variants / v / "base"), "--sft",
                       str(variants / v / "sft"), "--name", v, "--no-load",
                       "--skip-behaviour", "--no-progress", "--device", "cpu",
                       "--out", str(out)])
        assert rc == 0, v
    return out


def load_f64(path) -> dict[str, np.ndarray]:
    """A safetensors file's tensors in fp64 (torch's upcast)."""
    return {k: v.double().numpy() for k, v in load_file(str(path)).items()}


def rows(runs, variant: str) -> list[dict]:
    return [r for f in sorted((runs / variant / "spectra").glob("0*.parquet"))
            for r in pq.read_table(f).to_pylist()]


def gd_signal_rank(r: dict) -> int:
    """#{s_i > max(lambda(beta) sqrt(n) sigma, s_1 n 2^-23)}, written out here."""
    s = np.asarray(r["singular_values"])
    m, n = sorted((r["n_rows"], r["n_cols"]))
    beta = m / n
    lam = math.sqrt(2 * (beta + 1) + 8 * beta / (beta + 1 + math.sqrt(
        beta**2 + 14 * beta + 1)))
    return int(np.sum(s > max(lam * math.sqrt(n) * r["noise_sigma"],
                               s[0] * n * 2.0**-23)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_signal_rank_is_the_planted_rank(variants, runs, variant):
    planted = json.loads((variants / variant / "planted.json").read_text())["ranks"]
    got = rows(runs, variant)
    deltas = {r["tensor"]: r for r in got if r["role"] == "delta"}
    assert sorted(deltas) == sorted(planted)  # every matrix once, lm_head included
    assert len(got) == 3 * len(planted)
    for name, r in deltas.items():
        assert gd_signal_rank(r) == planted[name], (name, r["noise_sigma"])
        if planted[name] == 0:  # the adapter left it alone
            assert r["n_zero"] == r["n_rows"] * r["n_cols"]
            assert max(r["singular_values"]) == 0.0


@pytest.mark.parametrize(("variant", "sft_dtype"), [("fp32_sft", "float32"),
                                                     ("fp16_sft", "float16")])
def test_mixed_dtypes_recorded_per_role(variants, runs, variant, sft_dtype):
    """Each role row names its storage; sigma is the bf16 base's rounding plus the
    SFT's own: with a float32 SFT, the base's alone (np.spacing)."""
    got = rows(runs, variant)
    assert {r["storage_dtype"] for r in got if r["role"] == "base"} == {"bfloat16"}
    assert {r["storage_dtype"] for r in got if r["role"] == "sft"} == {sft_dtype}
    assert {r["storage_dtype"] for r in got if r["role"] == "delta"} == {"float64"}
    base = resolve(str(variants / variant / "base"))
    sft = resolve(str(variants / variant / "sft"))
    name = "model.layers.1.mlp.down_proj.weight"
    b = base.read(name).float().numpy()
    s = sft.read(name).float().numpy()
    ulp_b = np.spacing(np.abs(b)) * 2.0**16  # bf16: fp32's exponents, 16 bits fewer
    ulp_s = np.spacing(np.abs(s).astype(sft_dtype)).astype(np.float64)
    want = math.sqrt(np.mean((np.where(b == 0, 0, ulp_b)**2
                              + np.where(s == 0, 0, ulp_s)**2) / 12))
    delta = next(r for r in got if r["tensor"] == name and r["role"] == "delta")
    assert delta["noise_sigma"] == pytest.approx(want, rel=1e-9)
    if sft_dtype == "float32":
        assert delta["noise_sigma"] == pytest.approx(
            math.sqrt(np.mean(np.where(b == 0, 0, ulp_b)**2 / 12)), rel=1e-4)


def test_resized_vocabulary(variants, runs):
    """The shared rows are compared as the matrices; the added rows are recorded
    with their token strings and norms (NumPy on the SFT's file)."""
    got = rows(runs, "vocab_plus")
    base = resolve(str(variants / "vocab_plus" / "base"))
    vocab = base.config["vocab_size"]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        r = next(r for r in got if r["tensor"] == name and r["role"] == "sft")
        assert (r["n_rows"], r["n_cols"]) == (vocab, 64)
    added = pq.read_table(runs / "vocab_plus" / "spectra" / "added_tokens.parquet"
                          ).to_pylist()
    w = load_f64(variants / "vocab_plus" / "sft" / "model.safetensors")
    assert len(added) == 2 * len(ADDED_TOKENS)
    for a in added:
        row = w[a["tensor"]][a["token_id"]]
        assert a["norm"] == pytest.approx(float(np.linalg.norm(row)), rel=1e-12)
        assert a["token"] == ADDED_TOKENS[a["token_id"] - vocab]


def test_tied_base_compares_its_embedding_with_the_sft_head(variants, runs):
    base = resolve(str(variants / "tied_base" / "base"))
    sft = resolve(str(variants / "tied_base" / "sft"))
    emb = base.read("model.embed_tokens.weight").double()
    head = sft.read("lm_head.weight").double()
    r = next(r for r in rows(runs, "tied_base")
             if r["tensor"] == "lm_head.weight" and r["role"] == "delta")
    want = np.linalg.svd((head - emb).numpy(), compute_uv=False)
    np.testing.assert_allclose(r["singular_values"], want, rtol=0,
                               atol=1e-7 * want[0])
    manifest = json.loads((runs / "tied_base" / "run.json").read_text())
    assert manifest["kinds"]["spectra"]["options"]["vocabulary"][
        "tied_head_compared_with"] == "base's model.embed_tokens.weight"


@pytest.mark.parametrize(("variant", "says"), [
    ("fp32_sft", "storage dtypes differ (base -> SFT: BF16 -> F32)"),
    ("vocab_plus", "resized vocabulary 512 -> 517"),
    ("tied_base", "lm_head compared with the base's model.embed_tokens.weight"),
])
def test_doctor_passes_and_says_what_it_aligns(variants, variant, says, capsys):
    from compute.pairs import doctor

    rc = doctor.main(["--base", str(variants / variant / "base"), "--sft",
                      str(variants / variant / "sft"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "FAIL" not in out, out
    assert says in out


def test_doctor_checks_an_adapter(variants, tmp_path, capsys):
    from compute.pairs import doctor

    argv = ["--base", str(variants / "lora" / "base"), "--no-progress", "--sft"]
    assert doctor.main([*argv, str(variants / "lora" / "sft")]) == 0
    out = capsys.readouterr().out
    assert "LoRA adapter over the base: 4 adapted matrices" in out, out
    assert "saved whole: lm_head.weight" in out
    dora = _adapter_copy(variants, tmp_path, use_dora=True)
    assert doctor.main([*argv, str(dora)]) == 2
    out = capsys.readouterr().out
    assert "FAIL" in out and "a DoRA adapter" in out


def test_adapter_spectra_against_numpy(variants, runs):
    """dW = (alpha/r) B A for every adapted matrix (rank_pattern and alpha_pattern
    honoured), against NumPy's SVD of the file's factors; W_sft = W_base + dW."""
    w = load_f64(variants / "lora" / "sft" / "adapter_model.safetensors")
    got = {(r["tensor"], r["role"]): r for r in rows(runs, "lora")}
    base = resolve(str(variants / "lora" / "base"))
    seen = 0
    for key in w:
        if not key.endswith("lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        a, b = w[key], w[key.replace("lora_A", "lora_B")]
        r = a.shape[0]
        alpha = next((v for k, v in LORA["alpha_pattern"].items()
                      if module.endswith(k)), LORA["lora_alpha"])
        assert r == next((v for k, v in LORA["rank_pattern"].items()
                          if module.endswith(k)), LORA["r"])
        d = alpha / r * b @ a
        name = module + ".weight"
        want = np.linalg.svd(d, compute_uv=False)
        delta = got[name, "delta"]
        np.testing.assert_allclose(delta["singular_values"], want, rtol=0,
                                   atol=1e-7 * want[0])
        assert delta["noise_sigma"] == 0.0 and gd_signal_rank(delta) == r
        wb = base.read(name).double().numpy()
        np.testing.assert_allclose(got[name, "sft"]["singular_values"],
                                   np.linalg.svd(wb + d, compute_uv=False), rtol=0,
                                   atol=1e-7 * want[0])
        seen += 1
    assert seen == 4


def test_peft_merges_the_adapter_as_we_read_it(variants):
    """peft.PeftModel.from_pretrained loads the generated adapter as it is; its
    merged weights equal W_base + our dW for every matrix (fp32 rounding)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = resolve(str(variants / "lora" / "base"))
    adapter = resolve_sft(str(variants / "lora" / "sft"), base)
    model = AutoModelForCausalLM.from_pretrained(str(variants / "lora" / "base"),
                                                 dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(variants / "lora" / "sft")
                                       ).merge_and_unload().state_dict()
    n_adapted = 0
    for name, info in base.tensors.items():
        if len(info.shape) != 2:
            continue
        wb = base.read(name).double().numpy()
        factors = adapter.lowrank(name)
        if factors is None:
            want = adapter.read(name).double().numpy()  # the base's, or lm_head's
        else:
            want = wb + factors[0] @ factors[1]
            n_adapted += 1
        got = merged[name].double().numpy()
        assert np.max(np.abs(got - want)) <= 1e-6 * np.max(np.abs(want)), name
    assert n_adapted == 4 and adapter.full == {"lm_head.weight": adapter.full[
        "lm_head.weight"]}


def test_adapter_from_the_hub_cache(variants, tmp_path):
    """`--sft owner/name` of an adapter repo, offline from the hub cache: the run
    records the hub commit and the adapter."""
    from compute.fixtures.planted import place_in_hub_cache

    cache = tmp_path / "hub"
    place_in_hub_cache(variants / "lora" / "sft", cache, "someone/tiny-lora", "c" * 40)
    out = tmp_path / "runs"
    run_py("-m", "compute.run", "--base", str(variants / "lora" / "base"), "--sft",
           "someone/tiny-lora", "--name", "hub-lora", "--no-load", "--skip-behaviour",
           "--no-progress", "--out", str(out), HF_HUB_OFFLINE="1",
           HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf"))
    manifest = json.loads((out / "hub-lora" / "run.json").read_text())
    assert manifest["sft_revision"] == "c" * 40
    assert manifest["kinds"]["spectra"]["options"]["adapter"]["n_adapted"] == 4
    planted = json.loads((variants / "lora" / "planted.json").read_text())["ranks"]
    for r in rows(out, "hub-lora"):
        if r["role"] == "delta":
            assert gd_signal_rank(r) == planted[r["tensor"]], r["tensor"]


def test_an_adapter_names_its_base(variants, runs, tmp_path, capsys):
    """`--sft ADAPTER` without --base: the base is the one adapter_config.json names
    (here "../base", beside the adapter), and the spectra are those of the run with
    --base; a full checkpoint as --sft still needs --base."""
    out = tmp_path / "runs"
    rc = run_main(["--sft", str(variants / "lora" / "sft"), "--name", "lora",
                   "--no-load", "--skip-behaviour", "--no-progress", "--device", "cpu",
                   "--out", str(out)])
    assert rc == 0
    base = (variants / "lora" / "base").resolve()
    assert f"base: {base} (the adapter's base_model_name_or_path)" in \
        capsys.readouterr().err
    manifest = json.loads((out / "lora" / "run.json").read_text())
    assert manifest["base_model"] == str(base)
    key = ("tensor", "role")
    got = {tuple(r[k] for k in key): r["singular_values"] for r in rows(out, "lora")}
    want = {tuple(r[k] for k in key): r["singular_values"] for r in rows(runs, "lora")}
    assert got == want and len(got) > 0
    with pytest.raises(SystemExit) as exc:
        run_main(["--sft", str(variants / "fp16_sft" / "sft"), "--no-load"])
    assert exc.value.code == 2
    assert "give --base" in capsys.readouterr().err
    folder = _adapter_copy(variants, tmp_path, base_model_name_or_path=None)
    with pytest.raises(SystemExit):
        run_main(["--sft", str(folder), "--no-load"])
    assert "no base_model_name_or_path; give the base with --base" in \
        capsys.readouterr().err


def _adapter_copy(variants, tmp_path, **config):
    folder = tmp_path / "adapter"
    shutil.copytree(variants / "lora" / "sft", folder)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | config))
    return folder


@pytest.mark.parametrize(("config", "message"), [
    ({"use_dora": True}, "a DoRA adapter"),
    ({"peft_type": "IA3"}, "a 'IA3' adapter; sftscope reads LoRA adapters only"),
    ({"rank_pattern": {}}, r"layers.1.self_attn.v_proj has A \[2, 64\].*rank 4"),
    ({"trainable_token_indices": [3, 4]}, "trainable token rows"),
])
def test_adapter_refusals(variants, tmp_path, config, message, capsys):
    folder = _adapter_copy(variants, tmp_path, **config)
    base = resolve(str(variants / "lora" / "base"))
    with pytest.raises(AdapterError, match=message):
        resolve_sft(str(folder), base)
    rc = run_main(["--base", str(variants / "lora" / "base"), "--sft", str(folder),
                   "--name", "x", "--no-load", "--skip-behaviour", "--no-progress",
                   "--out", str(tmp_path / "runs")])
    assert rc == 2 and "adapter_config.json" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "x").exists()


def test_adapter_for_another_base_is_refused(variants, tmp_path):
    """A target module the base lacks, and a factor whose shape does not fit."""
    base = resolve(str(variants / "lora" / "base"))
    folder = _adapter_copy(variants, tmp_path)
    weights = folder / "adapter_model.safetensors"
    w = load_file(str(weights))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({k.replace("layers.0.", "layers.7."): v for k, v in w.items()},
              str(weights))
    with pytest.raises(AdapterError, match=r"adapts model.layers.7.self_attn.q_proj, "
                       r"which the base .* does not have"):
        resolve_sft(str(folder), base)
    w[key] = torch.zeros(4, 32)
    save_file(w, str(weights))
    with pytest.raises(AdapterError, match=r"q_proj's update is 64 x 32, the base's "
                       r"model.layers.0.self_attn.q_proj.weight is \[64, 64\]"):
        resolve_sft(str(folder), base)


def test_other_vocabulary_differences_stay_errors(variants, tmp_path):
    """A smaller SFT vocabulary, or a vocabulary change beside another shape
    change, is refused naming the config key or tensor."""
    src = variants / "vocab_plus"
    base_dir, sft_dir = tmp_path / "base", tmp_path / "sft"
    shutil.copytree(src / "sft", base_dir)  # swapped: the SFT is smaller
    shutil.copytree(src / "base", sft_dir)
    with pytest.raises(CheckpointError, match="config vocab_size"):
        pair_plan(resolve(str(base_dir)), resolve(str(sft_dir)))
    shutil.rmtree(base_dir)
    shutil.copytree(src / "base", base_dir)
    shutil.rmtree(sft_dir)
    shutil.copytree(src / "sft", sft_dir)
    w = load_file(str(sft_dir / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    w[name] = w[name][:80].contiguous()
    save_file(w, str(sft_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="config vocab_size"):
        pair_plan(resolve(str(base_dir)), resolve(str(sft_dir)))


def test_adapter_behaviour_equals_our_merge(variants, tmp_path):
    """The behaviour half loads base + adapter with peft; its SFT log-probs equal
    those of a full checkpoint we merge ourselves (W_base + dW, fp32)."""
    from compute.behaviour.scoring import run_behaviour
    from tests import behaviour_helpers as H

    base_dir = variants / "lora" / "base"
    base = resolve(str(base_dir))
    adapter = resolve_sft(str(variants / "lora" / "sft"), base)
    merged_dir = tmp_path / "merged"
    shutil.copytree(base_dir, merged_dir)
    tensors = {}
    for name in base.tensors:
        w = adapter.read(name).float()
        if (f := adapter.lowrank(name)) is not None:
            w = (w.double() + torch.from_numpy(f[0] @ f[1])).float()
        tensors[name] = w.contiguous()
    save_file(tensors, str(merged_dir / "model.safetensors"))
    prompts = H.prompts(3)
    logprobs = {}
    for label, sft_dir in (("peft", variants / "lora" / "sft"), ("ours", merged_dir)):
        out = tmp_path / label
        run_behaviour(base_dir, sft_dir, prompts, out, run_id="r", pair="p",
                      progress=False, dtype="float32")
        df = H.read(out, "token_logprobs")
        logprobs[label] = df.sort_values(["role", "post_id", "position"]).reset_index()
    a, b = logprobs["peft"], logprobs["ours"]
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a["logprob"], b["logprob"], atol=1e-4)
    sft = a[a["role"] == "sft"]["logprob"].to_numpy()
    base_lp = a[a["role"] == "base"]["logprob"].to_numpy()
    assert np.max(np.abs(sft - base_lp)) > 1e-3  # the adapter changes the model


@pytest.mark.slow
def test_dbt_build_on_the_variants(variants, runs, tmp_path):
    """Every variant loaded, dbt build (models and tests) passes; the marts' signal
    rank equals the planted rank, the adapter's untouched matrices are unchanged
    and left out of the per-module medians."""
    from ingest.compute_load import load_run

    db = tmp_path / "w.duckdb"
    for v in VARIANTS:
        load_run(runs / v, db)
    run_dbt(db, "build", "--quiet")
    planted = {v: json.loads((variants / v / "planted.json").read_text())["ranks"]
               for v in VARIANTS}
    got = query(db, "select pair, tensor, signal_rank, unchanged from "
                "marts.fct_matrix_metrics where role = 'delta'")
    assert len(got) == sum(len(p) for p in planted.values())
    for pair, tensor, signal, unchanged in got:
        assert signal == planted[pair][tensor], (pair, tensor)
        assert unchanged == (planted[pair][tensor] == 0), (pair, tensor)
    summary = {(p, m): (n, u, med) for p, m, n, u, med in query(
        db, "select pair, module, n_matrices, n_unchanged, median_delta_signal_rank "
        "from marts.fct_pair_summary")}
    assert summary["lora", "down_proj"] == (2, 2, None)
    assert summary["lora", "v_proj"] == (2, 0, 3.0)  # ranks 4 and 2
    assert summary["fp32_sft", "v_proj"] == (2, 0, 5.0)
    assert query(db, "select count(*) from staging.stg_compute__added_tokens")[0][0] \
        == 2 * len(ADDED_TOKENS)
    pairs = {r[0]: r[1:] for r in query(
        db, "select pair, adapter_type, adapter_r, n_added_tokens, "
        "tied_head_compared_with, base_storage_dtypes, sft_storage_dtypes "
        "from marts.dim_pairs")}
    assert pairs["lora"][:2] == ("LORA", 4)
    assert pairs["vocab_plus"][2] == len(ADDED_TOKENS)
    assert pairs["tied_base"][3] == "base's model.embed_tokens.weight"
    assert pairs["fp32_sft"][4:] == ("bfloat16", "float32")
    assert pairs["fp16_sft"][4:] == ("bfloat16", "float16")
