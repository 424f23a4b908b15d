"""Checkpoints sftscope refuses or reads a part of (compute.formats): quantized
(a real bitsandbytes checkpoint written by transformers on the CPU, and the config
of every other format), encoder-decoder, and a multimodal model's language tower
against a text-only base, in transformers 5's naming (Qwen2-VL, saved by
save_pretrained) and in older LLaVA's; hub ids end to end from a hub cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from compute.fixtures.checkpoint_layouts import build_layout_pair
from compute.fixtures.families import build_family_pair, plant, planted_rank
from compute.run.cli import main as run_main
from tests.conftest import query, run_py


def _run(tmp_path, base, sft, name, *extra) -> int:
    return run_main(["--base", str(base), "--sft", str(sft), "--name", name,
                     "--out", str(tmp_path / "runs"), "--no-load", "--skip-behaviour",
                     "--vectors", "0", "--no-progress", *extra])


def _spectra(tmp_path, name) -> pd.DataFrame:
    files = sorted((tmp_path / "runs" / name / "spectra").glob("*.parquet"))
    rows = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return rows[rows.role.notna()]


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_bitsandbytes_checkpoint_is_refused_in_one_line(tmp_path, capsys, mode):
    """The SFT side quantized by transformers + bitsandbytes on the CPU."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base, sft = build_family_pair("llama", tmp_path / "llama")
    q = BitsAndBytesConfig(load_in_4bit=True) if mode == "4bit" else \
        BitsAndBytesConfig(load_in_8bit=True)
    AutoModelForCausalLM.from_pretrained(str(sft), quantization_config=q,
                                         device_map="cpu").save_pretrained(
        tmp_path / "quantized")
    capsys.readouterr()
    assert _run(tmp_path, base, tmp_path / "quantized", "q") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"error: {tmp_path / 'quantized'}: a quantized checkpoint (bitsandbytes "
        f"{mode[0]}-bit); sftscope compares unquantized weights (bf16, fp16, fp32): "
        "use the checkpoint it was quantized from, or dequantize it with "
        "transformers and save_pretrained it in bf16 first")
    assert not (tmp_path / "runs" / "q").exists()


@pytest.mark.parametrize(("config", "named"), [
    ({"quant_method": "gptq", "bits": 4}, "gptq 4-bit"),
    ({"quant_method": "awq", "bits": 4}, "awq 4-bit"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8"),
    ({"quant_method": "compressed-tensors"}, "compressed-tensors"),
    ({"quant_method": "mxfp4"}, "mxfp4"),
])
def test_quantized_configs_are_refused_naming_the_format(tmp_path, capsys, config,
                                                         named):
    base, sft = build_family_pair("llama", tmp_path / "llama")
    cfg = json.loads((sft / "config.json").read_text())
    (sft / "config.json").write_text(json.dumps(cfg | {"quantization_config": config}))
    capsys.readouterr()
    assert _run(tmp_path, base, sft, "q") == 2
    assert f"a quantized checkpoint ({named})" in capsys.readouterr().err


def test_quantized_tensor_names_without_a_config_are_refused(tmp_path, capsys):
    base, sft = build_layout_pair("llama", tmp_path / "llama")
    tensors = load_file(str(sft / "model.safetensors"))
    w = tensors.pop("model.layers.0.self_attn.q_proj.weight")
    tensors["model.layers.0.self_attn.q_proj.qweight"] = w.view(dtype=w.dtype)
    save_file(tensors, str(sft / "model.safetensors"))
    capsys.readouterr()
    assert _run(tmp_path, base, sft, "q") == 2
    assert "a quantized checkpoint (GPTQ/AWQ (tensor model.layers.0.self_attn." \
        "q_proj.qweight))" in capsys.readouterr().err


def test_encoder_decoder_is_refused(tmp_path, capsys):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                   num_heads=4)
    for side in ("base", "sft"):
        T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / side)
    capsys.readouterr()
    assert _run(tmp_path, tmp_path / "base", tmp_path / "sft", "t5") == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: {tmp_path / 'base'}: an encoder-decoder model (t5); sftscope "
        "compares decoder-only causal language models")


def test_llava_style_language_model_prefix_against_its_text_only_base(tmp_path):
    """Older LLaVA: the tower as language_model.model.* and language_model.lm_head,
    beside vision_tower.* and multi_modal_projector.*, the text config nested:
    the same spectra as the text-only pair."""
    base, sft = build_layout_pair("llama", tmp_path / "llama")
    vlm = tmp_path / "llava"
    vlm.mkdir()
    saved = load_file(str(sft / "model.safetensors"))
    tensors = {("language_model." + k if k.startswith(("model.", "lm_head."))
                else k): v for k, v in saved.items()}
    some = next(iter(tensors.values())).clone()
    tensors |= {"vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": some,
                "multi_modal_projector.linear_1.weight": some.clone()}
    save_file(tensors, str(vlm / "model.safetensors"))
    text = json.loads((sft / "config.json").read_text())
    (vlm / "config.json").write_text(json.dumps(
        {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
         "text_config": text, "vision_config": {"model_type": "clip_vision_model"}}))
    assert _run(tmp_path, base, sft, "text") == 0
    assert _run(tmp_path, base, vlm, "llava") == 0
    key = ["tensor", "role"]
    a = _spectra(tmp_path, "text").sort_values(key).reset_index(drop=True)
    b = _spectra(tmp_path, "llava").sort_values(key).reset_index(drop=True)
    assert list(a.tensor) == list(b.tensor) and len(a) == 3 * 16
    for x, y in zip(a.singular_values, b.singular_values, strict=True):
        np.testing.assert_array_equal(x, y)


def _qwen2_vl_pair(tmp_path):
    """A tiny Qwen2-VL (transformers' own classes, save_pretrained: the tower as
    model.language_model.*, the vision tower as model.visual.*) with planted
    updates on its language tower, and its text-only Qwen2 base: the tower's
    weights before the updates, saved by Qwen2ForCausalLM."""
    import torch
    from transformers import (
        Qwen2ForCausalLM,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    text = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
            "max_position_embeddings": 256,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2,
              "mlp_ratio": 2}
    torch.manual_seed(0)
    vlm = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text,
                                                        vision_config=vision))
    tower = vlm.model.language_model
    lm = Qwen2ForCausalLM(vlm.config.text_config)
    lm.model.load_state_dict(tower.state_dict())
    lm.lm_head.load_state_dict(vlm.lm_head.state_dict())
    lm.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    vlm.to(torch.float32)
    plant(tower)
    vlm.to(torch.bfloat16).save_pretrained(tmp_path / "sft")
    return tmp_path / "base", tmp_path / "sft"


@pytest.mark.parametrize("naming", ["as_saved", "language_model"])
def test_qwen2_vl_language_tower_against_its_text_only_base(tmp_path, naming):
    """As transformers saves Qwen2-VL (model.layers.* beside visual.*, the hub's
    layout), and renamed as transformers 5's modules and newer multimodal
    checkpoints name it (model.language_model.*, model.visual.*)."""
    base, sft = _qwen2_vl_pair(tmp_path)
    names = load_file(str(sft / "model.safetensors"))
    assert any(k.startswith("model.layers.") for k in names)
    assert any(k.startswith("visual.") for k in names)
    if naming == "language_model":
        names = {("model.language_model." + k.removeprefix("model.")
                  if k.startswith("model.") else "model." + k
                  if k.startswith("visual.") else k): v for k, v in names.items()}
        save_file(names, str(sft / "model.safetensors"))
    assert _run(tmp_path, base, sft, "vl") == 0
    rows = _spectra(tmp_path, "vl")
    base_matrices = {k for k, v in load_file(str(base / "model.safetensors")).items()
                     if v.ndim == 2}
    assert set(rows.tensor) == base_matrices  # the tower, under text-only names
    from tests.test_families import signal_rank

    for r in rows[rows.role == "delta"].itertuples():
        want = planted_rank(r.tensor.removeprefix("model."), (r.n_rows, r.n_cols)) \
            if r.tensor != "lm_head.weight" else 0
        assert signal_rank(np.asarray(r.singular_values), r.n_rows, r.n_cols,
                           r.noise_sigma) == want, r.tensor


@pytest.mark.slow
def test_named_pair_from_the_hub_cache_offline_with_behaviour(tmp_path):
    """--pair gemma2-2b (a class that refuses sdpa) from a hub cache, offline: the
    tiny Gemma-2 pair placed under google/gemma-2-2b and -it; spectra and behaviour
    loaded, the behaviour scored with eager attention."""
    from compute.fixtures.planted import place_in_hub_cache
    from tests.behaviour_helpers import prompts

    base, sft = build_family_pair("gemma2", tmp_path / "gemma2", tokenizer=True)
    cache = tmp_path / "hub"
    place_in_hub_cache(base, cache, "google/gemma-2-2b", "a" * 40)
    place_in_hub_cache(sft, cache, "google/gemma-2-2b-it", "b" * 40)
    prompts(2).to_parquet(tmp_path / "prompts.parquet")
    db = tmp_path / "w.duckdb"
    run_py("-m", "compute.run", "--pair", "gemma2-2b", "--out", str(tmp_path / "runs"),
           "--prompts", str(tmp_path / "prompts.parquet"), "--vectors", "0",
           "--no-progress", db=db,
           HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf"))
    runs = query(db, "select kind, base_model, sft_revision from raw.compute_runs "
                 "order by kind")
    assert runs == [("behaviour", "google/gemma-2-2b", "b" * 40),
                    ("spectra", "google/gemma-2-2b", "b" * 40)]
    assert query(db, "select count(distinct tensor) from raw.spectra")[0][0] == 15
    assert query(db, "select count(distinct post_id) from raw.token_logprobs"
                 )[0][0] == 2
    options = json.loads((tmp_path / "runs" / "gemma2-2b" / "run.json").read_text())
    assert options["kinds"]["behaviour"]["options"]["attn_implementation"] == "eager"
    shutil.rmtree(cache)


def test_doctor_names_the_quantized_format_and_the_language_tower(tmp_path):
    import io

    from compute.pairs.doctor import check_pair

    base, sft = build_family_pair("llama", tmp_path / "llama")
    cfg = json.loads((sft / "config.json").read_text())
    (sft / "config.json").write_text(json.dumps(
        cfg | {"quantization_config": {"quant_method": "awq", "bits": 4}}))
    out = io.StringIO()
    assert not check_pair(str(base), str(sft), out=out, progress=False)
    assert "a quantized checkpoint (awq 4-bit)" in out.getvalue()
    base, sft = _qwen2_vl_pair(tmp_path / "vl")
    out = io.StringIO()
    assert check_pair(str(base), str(sft), out=out, progress=False), out.getvalue()
    assert f"multimodal: the language tower of {sft} is compared" in out.getvalue()
