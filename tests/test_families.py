"""Every causal-LM family transformers ships, as transformers itself saves it.

compute.fixtures.families builds a tiny base/SFT pair per family with the family's own
config class and `save_pretrained` (planted low-rank updates); compute.run's spectra are
held to the saved files: every matrix (and every part of a fused one, every expert)
once per role, the planted rank found by the noise-aware threshold (recomputed here
from the Gavish-Donoho closed form of tests/references.py, not the dbt SQL),
||dW||_F^2 against NumPy on the saved bits, and the module types compute.naming gives
a block's matrices against the names below: a release of transformers that renames
or re-lays a tensor fails here. The QUICK families run in `make test`; every other
family is marked `family_tail` (make test-families; left out without --family-tail)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from compute.fixtures.families import (
    QUICK,
    FamilyError,
    build_family_pair,
    causal_families,
)
from compute.run.cli import main as run_main
from tests.references import gd_lambda

ATTN = {"q_proj", "k_proj", "v_proj", "o_proj"}
LLAMA = ATTN | {"gate_proj", "up_proj", "down_proj"}
FC = ATTN | {"up_proj", "down_proj"}  # fc1/fc2, c_fc/c_proj, dense_h_to_4h/...
MOE = LLAMA | {"router"}
# module types of layer 0's matrices (a fused one's own name beside its parts')
MODULES: dict[str, set[str]] = {
    **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo",
                     "olmo2", "stablelm", "cohere", "granite"], LLAMA),
    **dict.fromkeys(["phi", "gptj", "opt", "starcoder2"], FC),
    "phi3": LLAMA | {"qkv_proj", "gate_up_proj"},
    "gpt2": FC | {"c_attn"}, "gpt_bigcode": FC | {"c_attn"},
    "gpt_neox": FC | {"query_key_value"}, "falcon": FC | {"query_key_value"},
    "bloom": FC | {"query_key_value"}, "mpt": FC | {"Wqkv"},
    "codegen": FC | {"qkv_proj"}, "mixtral": MOE, "qwen3_moe": MOE,
    # multi-head latent attention: its own projections (both tiny layers dense)
    "deepseek_v3": {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                    "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen2_moe": MOE | {"shared_expert.gate_proj", "shared_expert.up_proj",
                        "shared_expert.down_proj", "shared_expert_gate"},
}


def spectra(family: str, base: Path, sft: Path, out: Path) -> pd.DataFrame:
    code = run_main(["--base", str(base), "--sft", str(sft), "--name", family,
                     "--out", str(out), "--no-load", "--skip-behaviour",
                     "--vectors", "0", "--no-progress"])
    assert code == 0, family
    files = sorted((out / family / "spectra").glob("*.parquet"))
    rows = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return rows[rows.role.notna()]  # not the 1-D tensors (vectors.parquet)


def signal_rank(s: np.ndarray, m: int, n: int, sigma: float) -> int:
    """#{s_i > max(lambda(beta) sqrt(max(m, n)) sigma, s_1 max(m, n) 2^-23)}."""
    short, long_ = sorted((m, n))
    floor = s[0] * long_ * 2.0 ** -23
    return int(np.sum(s > max(gd_lambda(short / long_) * np.sqrt(long_) * sigma,
                              floor)))


def check_family(family: str, root: Path) -> set[str]:
    """Build, run and check one family; returns layer 0's module types."""
    base, sft = build_family_pair(family, root / family)
    truth = json.loads((root / family / "planted.json").read_text())
    rows = spectra(family, base, sft, root / "runs")
    whole = rows[rows.part.isna()]
    parts = rows[rows.part.notna()]
    # every matrix of the saved files once per role, nothing else but parts
    assert sorted(whole.groupby("tensor").role.apply(sorted).items()) == sorted(
        (t, ["base", "delta", "sft"]) for t in truth["ranks"])
    assert set(parts.source_tensor) <= {t.split("[")[0] for t in truth["ranks"]}
    assert (parts.groupby("tensor").role.count() == 3).all()
    delta = rows[rows.role == "delta"]
    for r in delta.itertuples():
        s = np.asarray(r.singular_values)
        src = r.tensor if pd.isna(r.part) else r.tensor.rsplit("[", 1)[0]
        want = min(truth["ranks"][src], r.n_rows, r.n_cols)
        assert signal_rank(s, r.n_rows, r.n_cols, r.noise_sigma) == want, r.tensor
        np.testing.assert_allclose(float(np.sum(s * s)), r.frobenius_sq, rtol=1e-6)
        if pd.isna(r.part):
            np.testing.assert_allclose(r.frobenius_sq, truth["frobenius_sq"][r.tensor],
                                       rtol=1e-6, err_msg=r.tensor)
    return set(delta[delta.layer == 0].module)


def test_every_quick_family_has_its_module_names():
    assert set(MODULES) == set(QUICK)


@pytest.mark.parametrize("family", QUICK)
def test_family_spectra_ranks_and_module_names(family, tmp_path):
    """A tensor transformers renames (say q_proj to query) turns up as an unknown
    module here, or as a matrix missing from the planted truth."""
    assert check_family(family, tmp_path) == MODULES[family]


# -- the behaviour half on the families whose classes refuse sdpa -----------------


@pytest.mark.parametrize(("family", "attn"), [
    ("llama", "sdpa"), ("gemma2", "eager"), ("bloom", "eager"), ("mpt", "eager")])
def test_attention_is_chosen_per_model_class(family, attn, tmp_path):
    from compute.behaviour.scoring import attention_for

    base, _ = build_family_pair(family, tmp_path / family)
    assert attention_for(base) == attn
    assert attention_for(base, "eager") == "eager"
    if attn == "eager":
        with pytest.raises(ValueError, match=r"^--attn sdpa: \w+ForCausalLM does not "
                           r"support it in transformers; use --attn eager"):
            attention_for(base, "sdpa")


@pytest.mark.parametrize("family", [
    "gemma2", "bloom", *(pytest.param(f, marks=pytest.mark.slow)
                         for f in ("mpt", "mixtral"))])
def test_behaviour_half_equals_a_transformers_forward_pass(family, tmp_path):
    """compute.run's log-probs of both models, post by post, against the model's own
    full logits (tests/behaviour_helpers.Reference, eager, one post at a time)."""
    from tests.behaviour_helpers import Reference, prompts, read

    base, sft = build_family_pair(family, tmp_path / family, tokenizer=True)
    posts = prompts(2)
    posts.to_parquet(tmp_path / "prompts.parquet")
    code = run_main(["--base", str(base), "--sft", str(sft), "--name", family,
                     "--out", str(tmp_path / "runs"), "--no-load", "--skip-spectra",
                     "--prompts", str(tmp_path / "prompts.parquet"), "--no-progress"])
    assert code == 0
    run = json.loads((tmp_path / "runs" / family / "run.json").read_text())
    assert run["kinds"]["behaviour"]["options"]["attn_implementation"] == (
        "sdpa" if family == "mixtral" else "eager")
    got = read(tmp_path / "runs" / family, "token_logprobs")
    for role, folder in (("base", base), ("sft", sft)):
        ref = Reference(folder)
        for post in posts.itertuples():
            rows = got[(got.role == role) & (got.post_id == post.post_id)]
            want = ref.post(post.text).numpy()
            assert len(rows) == len(want) > 5
            np.testing.assert_allclose(rows.sort_values("position").logprob, want,
                                       atol=1e-4, rtol=0)


@pytest.mark.slow
def test_failed_behaviour_half_loads_the_spectra_and_names_the_command(
        tmp_path, capsys):
    """A BLOOM pair saved without a tokenizer: the spectra finish, the behaviour
    half cannot start; the spectra are loaded all the same, the run exits 2 and
    names the command that completes it (--skip-spectra, never --force), which,
    once the tokenizer is there, adds the behaviour and keeps the spectra."""
    import shlex

    from compute.fixtures.planted import save_tokenizer, train_tokenizer
    from tests.behaviour_helpers import prompts
    from tests.conftest import query

    base, sft = build_family_pair("bloom", tmp_path / "bloom")
    prompts(2).to_parquet(tmp_path / "prompts.parquet")
    db = tmp_path / "w.duckdb"
    args = ["--base", str(base), "--sft", str(sft), "--name", "bloom", "--out",
            str(tmp_path / "runs"), "--db", str(db), "--prompts",
            str(tmp_path / "prompts.parquet"), "--vectors", "0", "--no-progress",
            "--force"]
    capsys.readouterr()
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert "error: behaviour:" in err and "partial result: spectra finished and " \
        "loaded into the warehouse" in err
    again = shlex.split(err.strip().splitlines()[-1])
    assert again[:3] == ["python", "-m", "compute.run"] and "--force" not in again
    assert again[-1] == "--skip-spectra"
    n_spectra = query(db, "select count(*) from raw.spectra where pair = 'bloom'")[0][0]
    assert n_spectra == 3 * 15  # 9 tensors, 3 of them fused with 3 parts each
    assert query(db, "select count(*) from raw.token_logprobs")[0][0] == 0
    tok = train_tokenizer(512)
    for folder in (base, sft):
        save_tokenizer(tok, folder)
    assert run_main(again[3:]) == 0
    assert query(db, "select count(*) from raw.spectra where pair = 'bloom'"
                 )[0][0] == n_spectra
    assert query(db, "select count(*) from raw.token_logprobs where pair = 'bloom'"
                 )[0][0] > 0


# -- the tail: every other family (make test-families) ---------------------------

# families whose config or model refuses the tiny sizes (or stays above
# compute.fixtures.families.MAX_PARAMS): the test checks that they still do
NOT_BUILT = {
    "ergo", "kimi_linear",  # 4.4M and 5.3M parameters at the tiny size
    "bart", "bigbird_pegasus", "blenderbot", "blt", "cohere_compass_text",
    "cpmant", "dbrx", "dots1", "dots3_note", "dots3_note_text", "emu3",
    "fuyu", "gemma3", "gemma3n", "gemma3n_text", "gemma4", "gemma4_assistant",
    "gemma4_text", "gemma4_unified", "gemma4_unified_assistant", "git",
    "got_ocr2", "gpt_neo", "inkling2_loop_text", "inkling2_text",
    "kolibri1_1", "lfm2_moe", "llama4", "mamba2", "marian", "mbart",
    "mllama", "moss_transcribe_diarize", "musicgen", "musicgen_melody", "mvp",
    "pegasus", "phi4_multimodal", "plbart", "prophetnet", "qwen3_5", "qwen3_5_moe",
    "qwen4_exp", "qwen4_exp_text", "reformer", "roc_bert", "trocr", "whisper", "xlm",
    "zamba", "zamba2"}
# families compute.run refuses before any work, in one line naming the tensors
TWO_NAMES = "cannot tell them apart"  # two matrices read as one heatmap cell
UNKNOWN_3D = "of unknown meaning"  # convolutions of state-space layers, ...
REFUSED = {
    # two stacks of layers (HRM), wrappers (q_proj.linear: Moshi), two `Wo`
    **dict.fromkeys(["hrm_text", "modernbert-decoder", "moshi"], TWO_NAMES),
    "longcat_flash": TWO_NAMES,  # two MLPs per block (mlps.0, mlps.1)
    # weights inside norms (AXK2's W_down) and hyper-connections (hc_fn)
    **dict.fromkeys(["axk2", "hy_v4"], TWO_NAMES),
    "deepseek_v4": "is stored as I64",  # an integer routing table saved as a weight
    # depthwise convolutions [C, 1, K] (Mamba and hybrids), other 3-D/4-D tensors,
    # experts stacked under other names (input_linear)
    **dict.fromkeys(["bailing_hybrid", "bamba", "falcon_h1", "falcon_mamba",
                     "granitemoe", "granitemoehybrid", "granitemoeshared", "jamba",
                     "jetmoe", "lara_mini", "lfm3", "mamba", "minimax", "nemotron_h",
                     "olmo_hybrid", "qwen3_5_moe_text", "qwen3_5_text", "qwen3_next",
                     "recurrent_gemma", "rwkv", "xlnet", "zaya", "inkling_text"],
                    UNKNOWN_3D),
    "aria_text": "but the config's sizes give",  # experts stored [E, in, out]
}
# transformers fuses separate modules into one tensor when it saves these (q, k, v
# into query_key_value; proj_up and gate): the fused tensor's planted rank is the
# sum of its parts', which the fixture's rank-by-block truth does not know
KNOWN = dict.fromkeys(["param2moe", "sarvam_moe", "xlstm"],
                      "fused on saving: the fixture's truth is per part")
# RemBERT's 512 x 1664 output head (planted rank 1): a second value 1.4 x the
# Gavish-Donoho threshold, not yet explained (a noise model that misses how this
# matrix was rounded?)
KNOWN["rembert"] = "a second direction above the threshold in the 512 x 1664 head"
TAIL = [f for f in causal_families() if f not in QUICK]


def _tail_param(family: str):
    if family in KNOWN:
        return pytest.param(family, marks=pytest.mark.xfail(strict=True,
                                                            reason=KNOWN[family]))
    return family


@pytest.mark.family_tail
@pytest.mark.parametrize("family", [_tail_param(f) for f in TAIL])
def test_family_tail(family, tmp_path, capsys):
    """A family that builds is read like the quick ones (without a module list), or
    refused in one line naming its tensors; one that does not build still does not
    (a new transformers release that changes either fails here)."""
    if family in NOT_BUILT:
        with pytest.raises(FamilyError):
            build_family_pair(family, tmp_path / family)
        return
    if family not in REFUSED:
        check_family(family, tmp_path)
        return
    base, sft = build_family_pair(family, tmp_path / family)
    capsys.readouterr()
    code = run_main(["--base", str(base), "--sft", str(sft), "--name", family,
                     "--out", str(tmp_path / "runs"), "--no-load", "--skip-behaviour",
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and REFUSED[family] in err
    assert not (tmp_path / "runs" / family).exists()


def test_lora_recovery_scores_a_class_without_sdpa(tmp_path):
    """compute.lora_recovery loads its models as the behaviour run did, through the
    same choice (the run recorded eager: Gemma-2 refuses sdpa): r = full is the SFT
    itself, token for token."""
    from compute.lora.recovery import parse_args, run
    from tests.behaviour_helpers import prompts

    base, sft = build_family_pair("gemma2", tmp_path / "gemma2", tokenizer=True)
    prompts(2).to_parquet(tmp_path / "prompts.parquet")
    assert run_main(["--base", str(base), "--sft", str(sft), "--name", "gemma2",
                     "--prompts", str(tmp_path / "prompts.parquet"), "--skip-spectra",
                     "--no-load", "--no-progress", "--device", "cpu", "--out",
                     str(tmp_path / "runs")]) == 0
    out = run(parse_args(["--base", str(base), "--sft", str(sft), "--name", "gemma2",
                          "--ranks", "1,full", "--prompts",
                          str(tmp_path / "prompts.parquet"), "--out",
                          str(tmp_path / "runs"), "--no-load", "--no-progress",
                          "--device", "cpu"]))
    posts = pd.concat([pd.read_parquet(f) for f in sorted((out / "posts").glob("*"))])
    full = posts[(posts["rank"] == posts["rank"].max()) & (posts["vectors"] == "sft")]
    assert len(full) == 2  # r = full plus the SFT's 1-D tensors: the SFT
    np.testing.assert_allclose(full["sum_logprob"], full["sum_logprob_sft"], atol=1e-4)
    assert (full["sum_kl_sft_rank"] < 1e-7).all()
