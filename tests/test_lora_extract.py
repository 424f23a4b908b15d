"""compute.lora.extract and compute.lora.recovery: the extracted adapter against
NumPy's SVD and PEFT, the rank-r models' behaviour on a pair of exact rank, the
raw tables and the dbt marts against sums recomputed here (SciPy's t)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file, save_file

from compute.fixtures.planted import PairSpec, build_pair
from compute.io.checkpoints import resolve
from compute.linalg import ranks
from compute.linalg.spectra import to_float64
from compute.lora import extract as ex
from tests.conftest import query, run_dbt, run_py

SPEC = PairSpec(hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2, vocab=512,
                max_positions=256, seed=1617, rank_fn=lambda module, layer, n: 3)
EXACT_RANK = 3
TEXTS = [
    "The electric field of a point charge falls off as the inverse square of distance.",
    "How do I compute the eigenvalues of a symmetric matrix? I tried numpy's linalg.",
    "Energy is conserved in a closed system, and momentum when no external force acts.",
    "Why is the sky blue? Rayleigh scattering grows as the fourth power of frequency.",
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, Path]:
    """A small planted pair (bf16, rank-3 updates under rounding noise) and an
    exact-rank pair: the same base, an fp32 SFT = W_base + a rank-3 product
    (1-D tensors the base's), so dW has rank 3 up to fp32 rounding."""
    root = tmp_path_factory.mktemp("lora")
    base, sft = build_pair(root / "planted", SPEC)
    exact = root / "exact" / "sft"
    exact.mkdir(parents=True)
    rng = np.random.default_rng(7)
    tensors = {}
    base_ck = resolve(str(base))
    for name in base_ck.tensors:
        w = to_float64(*base_ck.read_array(name))
        if w.ndim == 2:
            m, n = w.shape
            u = np.linalg.qr(rng.standard_normal((m, EXACT_RANK)))[0]
            v = np.linalg.qr(rng.standard_normal((n, EXACT_RANK)))[0]
            w = w + (u * [0.3, 0.15, 0.08]) @ v.T
        tensors[name] = w.astype(np.float32)
    save_file(tensors, str(exact / "model.safetensors"), metadata={"format": "pt"})
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, exact / f.name)
    cfg = json.loads((exact / "config.json").read_text()) | {"torch_dtype": "float32"}
    (exact / "config.json").write_text(json.dumps(cfg))
    prompts = root / "prompts.parquet"
    pd.DataFrame({"post_id": [11, 12, 13, 14], "site": "physics.demo",
                  "grp": ["low", "low", "high", "high"],
                  "post_type": ["answer", "question", "answer", "question"],
                  "text": TEXTS}).to_parquet(prompts)
    return {"base": base, "sft": sft, "exact": exact, "prompts": prompts,
            "root": root}


def numpy_delta(base: Path, sft: Path, name: str) -> np.ndarray:
    """dW from the safetensors files, read with safetensors' own NumPy loader."""
    import torch
    from safetensors.torch import load_file as load_torch

    def read(folder):
        return load_torch(str(folder / "model.safetensors"))[name].to(
            torch.float64).numpy()

    return read(sft) - read(base)


def test_adapter_is_the_truncated_svd(pairs, tmp_path):
    """W_base + (alpha/r) B A equals W_base + U_r S_r V_r^T (NumPy's SVD of dW) for
    every matrix, embeddings included, within fp32 rounding of the factors."""
    base, sft = ex.open_pair(str(pairs["base"]), str(pairs["sft"]))
    tgts = ex.targets(base, sft)
    assert {t.module for t in tgts} >= {"q_proj", "down_proj", "embed_tokens",
                                        "lm_head"}
    out = tmp_path / "r4"
    rows = ex.extract(base, sft, tgts, ex.Choice(rank=4), out, progress=False)
    config = json.loads((out / "adapter_config.json").read_text())
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert config["lora_alpha"] == 4 and not config["rank_pattern"]
    assert len(weights) == 2 * len(tgts) == 2 * len(rows)
    for t in tgts:
        dw = numpy_delta(pairs["base"], pairs["sft"], t.tensor)
        u, s, vt = np.linalg.svd(dw, full_matrices=False)
        want = (u[:, :4] * s[:4]) @ vt[:4]
        key = f"base_model.model.{t.module_path}"
        if t.embedding:  # PEFT: delta = (B A)^T
            got = (weights[f"{key}.lora_embedding_B"].astype(np.float64)
                   @ weights[f"{key}.lora_embedding_A"]).T
        else:
            got = (weights[f"{key}.lora_B.weight"].astype(np.float64)
                   @ weights[f"{key}.lora_A.weight"])
        assert np.abs(got - want).max() <= 1e-6 * s[0], t.tensor
        row = next(r for r in rows if r["tensor"] == t.tensor)
        assert row["rank"] == 4
        assert row["retained_share"] == pytest.approx(
            np.sum(s[:4] ** 2) / np.sum(dw ** 2), rel=1e-9)
    # the project's own adapter reader sees the same dW
    from compute.io.adapters import resolve_sft

    again = resolve_sft(str(out), base)
    t = next(t for t in tgts if t.module == "o_proj")
    left, right = again.lowrank(t.tensor)
    dw = numpy_delta(pairs["base"], pairs["sft"], t.tensor)
    u, s, vt = np.linalg.svd(dw, full_matrices=False)
    assert np.abs(left @ right - (u[:, :4] * s[:4]) @ vt[:4]).max() <= 1e-6 * s[0]


def logits(model, ids) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].double().numpy()


DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"


@pytest.fixture(scope="module")
def demo_run(pairs) -> Path:
    """The trained demo pair (its SFT moved the norms too) scored by compute.run on
    four long posts in windows of 64 tokens."""
    prompts = pairs["root"] / "demo-prompts.parquet"
    texts = [" ".join(TEXTS[i:] + TEXTS[:i]) * 2 for i in range(4)]
    pd.DataFrame({"post_id": [21, 22, 23, 24], "site": "physics.demo",
                  "grp": ["low", "high", "low", "high"],
                  "post_type": ["question", "answer", "answer", "question"],
                  "text": texts}).to_parquet(prompts)
    out = pairs["root"] / "demo-runs"
    run_py("-m", "compute.run", "--base", str(DEMO / "base"), "--sft",
           str(DEMO / "sft"), "--name", "demo", "--prompts", str(prompts),
           "--window", "64", "--skip-spectra", "--no-load", "--no-progress",
           "--device", "cpu", "--out", str(out))
    return out / "demo"


def test_demo_steps_the_true_base_norms_and_the_sft(pairs, demo_run):
    """On the demo pair, in its behaviour run's setting (windows of 64 tokens, every
    post longer): the empty delta is the run's base (log-prob sums within 1e-4),
    every tensor's dW its SFT, and the 1-D tensors alone move the log-probs (the
    step r = 0 'plus norms' is not the base)."""
    from compute.behaviour.merge_score import BehaviourSetting, DeltaScorer, full_deltas

    setting = BehaviourSetting.from_run(demo_run, pairs["root"] / "demo-prompts.parquet")
    assert setting.window == 64 and all(p.n_tokens > 64 for p in setting.posts)
    assert {p.post_type for p in setting.posts} == {"question", "answer"}
    scorer = DeltaScorer(setting)
    lp = run_logprobs(demo_run)
    base, sft = scorer.score({}), scorer.score(full_deltas(setting))
    from compute.plan.pair import pair_plan

    norms = scorer.score(full_deltas(setting, pair_plan(setting.base,
                                                        setting.sft).vectors))
    for p in setting.posts:
        assert np.sum(base[p.post_id].logprob["base"]) == pytest.approx(
            lp.loc[("base", p.post_id), "sum"], abs=1e-4)
        assert np.sum(sft[p.post_id].logprob["base"]) == pytest.approx(
            lp.loc[("sft", p.post_id), "sum"], abs=1e-4)
        assert abs(np.sum(norms[p.post_id].logprob["base"])
                   - lp.loc[("base", p.post_id), "sum"]) > 1e-2


def test_peft_adapter_is_the_model_scored_at_rank_r(pairs, demo_run, tmp_path):
    """The adapter extract_lora --rank 4 writes, loaded by PeftModel.from_pretrained
    on the base (not merged), gives the logits of the model compute.lora_recovery
    scores at r = 4 'matrices at rank r' (the base's 1-D tensors) within 1e-4; the
    'plus norms' model at r = 4 differs."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from compute.behaviour.merge_score import BehaviourSetting, DeltaScorer
    from compute.lora.recovery import Factors, step_deltas
    from compute.plan.pair import pair_plan

    setting = BehaviourSetting.from_run(demo_run, pairs["root"] / "demo-prompts.parquet")
    base, sft = setting.base, setting.sft
    tgts = ex.targets(base, sft)
    out = tmp_path / "r4"
    proc = run_py("-m", "compute.extract_lora", "--base", str(DEMO / "base"), "--sft",
                  str(DEMO / "sft"), "--rank", "4", "--out", str(out), "--no-load",
                  "--no-progress")
    assert proc.returncode == 0
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
        str(DEMO / "base"), dtype=torch.float32), str(out)).eval()
    scorer = DeltaScorer(setting)
    factors = Factors(base, sft, tgts, 4, False)
    vectors = pair_plan(base, sft).vectors
    ours = scorer.model(step_deltas(base, sft, tgts, factors, 4, "base", vectors))
    plus = scorer.model(step_deltas(base, sft, tgts, factors, 4, "sft", vectors))
    ids = list(range(5, 300, 7))
    a, b = logits(peft_model, ids), logits(ours, ids)
    assert np.abs(a - b).max() < 1e-4
    assert np.abs(a - logits(plus, ids)).max() > 1e-2
    assert np.abs(a - logits(scorer.model({}), ids)).max() > 1e-2


def test_min_energy_and_per_module_ranks(pairs, tmp_path):
    """--min-energy picks per matrix the smallest r with that share of ||dW||_F^2
    (NumPy's singular values); mixed ranks go to rank_pattern with alpha_pattern,
    which PEFT (and compute.io.adapters) read back at scale 1."""
    base, sft = ex.open_pair(str(pairs["base"]), str(pairs["sft"]))
    tgts = ex.targets(base, sft, ["q_proj", "up_proj"])
    assert {t.module for t in tgts} == {"q_proj", "up_proj"}
    rows = ex.extract(base, sft, tgts, ex.Choice(min_energy=0.999), tmp_path / "e",
                      progress=False)
    for r in rows:
        s = np.linalg.svd(numpy_delta(pairs["base"], pairs["sft"], r["tensor"]),
                          compute_uv=False)
        c = np.cumsum(s ** 2) / np.sum(s ** 2)
        assert r["rank"] == int(np.argmax(c >= 0.999)) + 1
        assert r["retained_share"] >= 0.999
    config = json.loads((tmp_path / "e" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == config["alpha_pattern"]
    from compute.io.adapters import resolve_sft

    back = resolve_sft(str(tmp_path / "e"), base)
    assert {lo.module: lo.rank for lo in back.lora.values()} == {
        r["module_path"]: r["rank"] for r in rows}
    assert all(lo.scale == 1.0 for lo in back.lora.values())


def test_exact_rank_pair_extraction_keeps_everything(pairs, tmp_path):
    base, sft = ex.open_pair(str(pairs["base"]), str(pairs["exact"]))
    rows = ex.extract(base, sft, ex.targets(base, sft), ex.Choice(rank=EXACT_RANK),
                      tmp_path / "x", progress=False)
    assert min(r["retained_share"] for r in rows) > 1 - 1e-9
    assert max(r["s_next"] / r["s_last"] for r in rows) < 1e-5


WINDOW = 16  # the behaviour run's window: every post is longer


def behaviour_run(pairs, sft: str, name: str) -> Path:
    """compute.run's behaviour half on the prompts, windows of WINDOW tokens."""
    run_py("-m", "compute.run", "--base", str(pairs["base"]), "--sft", str(pairs[sft]),
           "--name", name, "--prompts", str(pairs["prompts"]), "--window",
           str(WINDOW), "--batch-size", "3", "--skip-spectra", "--no-load",
           "--no-progress", "--device", "cpu", "--out", str(pairs["root"] / "runs"))
    return pairs["root"] / "runs" / name


def run_logprobs(run_dir: Path) -> pd.DataFrame:
    """The behaviour run's per-post sums of each role's log-probs, from its files."""
    lp = pd.concat([pd.read_parquet(f) for f in sorted(
        (run_dir / "behaviour" / "token_logprobs").glob("*.parquet"))])
    return lp.groupby(["role", "post_id"])["logprob"].agg(["sum", "count"])


@pytest.fixture(scope="module")
def recovery(pairs) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """compute.lora_recovery on the exact-rank pair: ranks 0, 1, 2, 3 and full, each
    with the base's and the SFT's 1-D tensors, in the behaviour run's setting."""
    from compute.lora.recovery import parse_args, run

    behaviour_run(pairs, "exact", "exact")
    cfg = parse_args(["--base", str(pairs["base"]), "--sft", str(pairs["exact"]),
                      "--name", "exact", "--ranks", "1,2,3,full", "--prompts",
                      str(pairs["prompts"]), "--out", str(pairs["root"] / "runs"),
                      "--no-load", "--no-progress"])
    out = run(cfg)
    posts = pd.concat([pd.read_parquet(f) for f in sorted((out / "posts").glob("*"))])
    return out, posts, pd.read_parquet(out / "ranks.parquet")


def test_rank_zero_is_the_base_and_full_is_the_sft(pairs, recovery):
    """r = 0 scores the base (an independent transformers forward pass of the base
    model over the whole post where it fits the window, and the behaviour run's own
    log-probs of the windows), r = full the SFT; r >= the exact rank equals the SFT
    within 1e-3."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    _, posts, ranks = recovery
    assert sorted(ranks["rank"]) == [0, 0, 1, 1, 2, 2, 3, 3, 64, 64]
    assert ranks.set_index(["rank", "vectors"]).loc[(64, "sft"), "is_full"]
    assert (ranks["window_tokens"] == WINDOW).all()
    base_rows = posts[(posts["rank"] == 0) & (posts["vectors"] == "base")]
    assert (base_rows["n_tokens"] > WINDOW).all()  # every post spans windows
    lp = run_logprobs(pairs["root"] / "runs" / "exact")
    for row in base_rows.itertuples():
        assert row.sum_logprob == pytest.approx(lp.loc[("base", row.post_id), "sum"],
                                                abs=1e-4)
    full = posts[(posts["rank"] == 64) & (posts["vectors"] == "sft")]
    for row in full.itertuples():
        assert row.sum_logprob == pytest.approx(lp.loc[("sft", row.post_id), "sum"],
                                                abs=1e-4)
        assert row.sum_logprob_sft == pytest.approx(row.sum_logprob, abs=1e-4)
    assert (full["sum_kl_sft_rank"] < 1e-7).all()
    # the first window, by a plain forward pass of the base
    tok = PreTrainedTokenizerFast.from_pretrained(str(pairs["base"]))
    model = AutoModelForCausalLM.from_pretrained(str(pairs["base"]),
                                                 dtype=torch.float32).eval()
    prefix = tok.convert_tokens_to_ids("<|endoftext|>")
    for post_id, text in zip([11, 12, 13, 14], TEXTS, strict=True):
        ids = [prefix, *tok(text, add_special_tokens=False)["input_ids"]][:WINDOW]
        with torch.inference_mode():
            lp_ = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0]
                                    .double(), -1)
        first = lp_[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        want = lp.loc[("base", post_id), "sum"]
        assert want < float(first.sum()) - 1  # the rest of the post adds to it
    exact = posts[(posts["rank"] == EXACT_RANK) & (posts["vectors"] == "sft")]
    per_token = (exact["sum_logprob"] - exact["sum_logprob_sft"]).abs() / exact["n_tokens"]
    assert (per_token < 1e-3).all()
    assert (exact["sum_kl_sft_rank"] / exact["n_tokens"] < 1e-6).all()


def test_recovery_refuses_without_the_behaviour_run(pairs, tmp_path):
    """No run.json under --out/<pair>: refused, naming it; nothing written."""
    proc = run_py("-m", "compute.lora_recovery", "--base", str(pairs["base"]),
                  "--sft", str(pairs["exact"]), "--name", "exact", "--prompts",
                  str(pairs["prompts"]), "--out", str(tmp_path / "none"), "--no-load",
                  check=False)
    assert proc.returncode == 2
    assert f"{tmp_path / 'none' / 'exact' / 'run.json'}: no run record" in proc.stderr
    assert not (tmp_path / "none" / "exact" / "lora_recovery").exists()


def test_recovery_grows_with_rank(recovery):
    """The KL from the SFT falls with r (planted singular values 0.3, 0.15, 0.08);
    the energy share is NumPy's sum of the top-r s_i^2 over ||dW||_F^2."""
    _, posts, ranks = recovery
    kl = posts[posts["vectors"] == "sft"].groupby("rank")["sum_kl_sft_rank"].sum()
    assert kl[0] > kl[1] > kl[2] > kl[3]
    assert kl[3] < 1e-4 * kl[0]
    # the exact pair's 1-D tensors are the base's: both steps score the same model
    both = posts.pivot_table(index=["rank", "post_id"], columns="vectors",
                             values="sum_logprob")
    assert np.allclose(both["base"], both["sft"], atol=1e-9)
    ranks = ranks[ranks["vectors"] == "sft"]
    energy = (ranks["retained_sq"] / ranks["frobenius_sq"]).to_numpy()
    assert energy[0] == 0 and np.all(np.diff(energy) >= 0) and energy[-1] == 1
    expected = [0.3 ** 2, 0.3 ** 2 + 0.15 ** 2, 0.3 ** 2 + 0.15 ** 2 + 0.08 ** 2]
    assert energy[1:4] == pytest.approx(np.array(expected) / expected[-1], rel=1e-5)


def test_bad_inputs_are_named(pairs, tmp_path):
    out = tmp_path / "too_big"
    proc = run_py("-m", "compute.extract_lora", "--base", str(pairs["base"]), "--sft",
                  str(pairs["sft"]), "--rank", "65", "--out", str(out), "--no-load",
                  check=False)
    assert proc.returncode == 2
    assert ("--rank 65 is above min(rows, cols) = 64 of lm_head.weight (512 x 64)"
            in proc.stderr)
    assert not out.exists()
    proc = run_py("-m", "compute.extract_lora", "--base", str(pairs["base"]), "--sft",
                  str(pairs["sft"]), "--name", "nowhere", "--rank", "auto", "--out",
                  str(out), "--runs", str(tmp_path / "runs"),
                  "--db", str(tmp_path / "none.duckdb"), check=False)
    assert proc.returncode == 2
    assert "--rank auto: no spectra of pair 'nowhere'" in proc.stderr
    assert not out.exists()


def nan_copy(folder: Path, out: Path, tensor: str) -> Path:
    """A copy of the fp32 checkpoint in `folder` with one NaN in `tensor`."""
    shutil.copytree(folder, out)
    tensors = load_file(str(out / "model.safetensors"))
    tensors[tensor].reshape(-1)[1] = np.nan
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("tensor", ["model.layers.1.post_attention_layernorm.weight",
                                    "model.layers.0.mlp.up_proj.weight"])
def test_recovery_refuses_nan_weights(pairs, recovery, tmp_path, tensor):
    """An SFT with a NaN in a 1-D tensor (checked before anything is read) or in a
    matrix (checked before its SVD): compute.lora_recovery exits 2 with one line
    naming the tensor and the side, and writes no results (before the check it
    gave NaN sums)."""
    sft = nan_copy(pairs["exact"], tmp_path / "nan-sft", tensor)
    runs = tmp_path / "runs"  # the exact pair's behaviour run, its SFT now this copy
    shutil.copytree(pairs["root"] / "runs" / "exact", runs / "nan",
                    ignore=shutil.ignore_patterns("lora_recovery"))
    manifest = json.loads((runs / "nan" / "run.json").read_text())
    manifest |= {"sft_model": str(sft), "sft_revision": resolve(str(sft)).revision}
    (runs / "nan" / "run.json").write_text(json.dumps(manifest))
    proc = run_py("-m", "compute.lora_recovery", "--base", str(pairs["base"]),
                  "--sft", str(sft), "--name", "nan", "--ranks", "1,2", "--prompts",
                  str(pairs["prompts"]), "--out", str(runs), "--no-load",
                  "--no-progress", check=False)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: tensor {tensor}: 1 NaN/Inf "
                                               "value(s) of"), proc.stderr
    assert f"in the SFT ({sft})" in err[0]
    assert not (runs / "nan" / "lora_recovery").exists()
    proc = run_py("-m", "compute.extract_lora", "--base", str(pairs["base"]), "--sft",
                  str(sft), "--rank", "2", "--out", str(tmp_path / "a"), "--no-load",
                  "--no-progress", check=False)
    if tensor.endswith("up_proj.weight"):  # extraction's matrices: the same check
        assert proc.returncode == 2 and f"error: tensor {tensor}: 1 NaN" in proc.stderr
        assert not (tmp_path / "a").exists()


def test_patched_base_is_the_loaded_base_again(pairs, demo_run):
    """DeltaScorer patches one base model in place: after a step with every
    tensor's dW (the SFT) and one with the 1-D tensors only, the empty delta leaves
    it bitwise the base as freshly loaded, and its scores equal a fresh scorer's
    (the SFT's hidden states, kept from the first call, too)."""
    import torch

    from compute.behaviour.merge_score import BehaviourSetting, DeltaScorer, full_deltas
    from compute.plan.pair import pair_plan

    setting = BehaviourSetting.from_run(demo_run, pairs["root"] / "demo-prompts.parquet")
    scorer = DeltaScorer(setting)
    assert scorer.sft_cache == {}  # four posts fit the cache
    first = scorer.score(full_deltas(setting))
    assert len(scorer.sft_cache) > 0
    scorer.score(full_deltas(setting, pair_plan(setting.base, setting.sft).vectors))
    again = scorer.score({})
    fresh = scorer.model({}).state_dict()
    for name, value in scorer.base_model.state_dict().items():
        assert torch.equal(value, fresh[name]), name
    plain = DeltaScorer(setting)
    plain.sft_cache = None  # the SFT run at every call, as before the cache
    for role, got, want in (("sft", first, plain.score(full_deltas(setting))),
                            ("base", again, plain.score({}))):
        for p in setting.posts:
            for key in ("base", "sft"):
                assert np.array_equal(got[p.post_id].logprob[key],
                                      want[p.post_id].logprob[key]), (role, key)
            assert np.array_equal(got[p.post_id].shift["kl_sft_base"],
                                  want[p.post_id].shift["kl_sft_base"]), role
            assert np.array_equal(got[p.post_id].drift, want[p.post_id].drift), role


@pytest.mark.slow
def test_python_ranks_agree_with_int_spectrum_stats(pairs, tmp_path):
    """compute.linalg.ranks mirrors int_spectrum_stats (the definition): the signal,
    numerical and 90%-energy ranks of every dW of the planted pair, from the same
    spectra files, agree with the model's rows; the signal rank is the planted one."""
    import pyarrow.parquet as pq

    db, runs = tmp_path / "w.duckdb", tmp_path / "runs"
    run_py("-m", "compute.run", "--base", str(pairs["base"]), "--sft",
           str(pairs["sft"]), "--name", "planted", "--out", str(runs),
           "--skip-behaviour", "--no-progress", "--vectors", "0", db=db)
    run_dbt(db, "run", "--quiet", "--select", "+int_spectrum_stats")
    dbt = {t: (sig, num, r90) for t, sig, num, r90 in query(
        db, "select tensor, signal_rank, numerical_rank, energy_rank_90 from "
        "intermediate.int_spectrum_stats where role = 'delta'")}
    rows = [r for f in sorted((runs / "planted" / "spectra").glob("[0-9]*.parquet"))
            for r in pq.read_table(f).to_pylist() if r["role"] == "delta"]
    assert rows and len(rows) == len(dbt)
    truth = json.loads((pairs["base"].parent / "planted.json").read_text())["tensors"]
    for r in rows:
        s = np.asarray(r["singular_values"])
        tol = ranks.numerical_tolerance(s, r["n_rows"], r["n_cols"])
        py = (ranks.signal_rank(s, r["n_rows"], r["n_cols"], r["noise_sigma"]),
              int(np.count_nonzero(s > tol)), ranks.energy_rank(s, 0.9))
        assert py == dbt[r["tensor"]], r["tensor"]
        assert py[0] == truth[r["tensor"]]["rank"] == EXACT_RANK, r["tensor"]
    assert ranks.signal_rank(np.array([1.0]), 4, 4, None) is None  # dbt's NULL


def test_loads_and_marts(pairs, recovery, tmp_path, monkeypatch):
    """Extraction and recovery loaded twice (replaced, not duplicated); the dbt
    marts' shares and intervals against the same sums recomputed here."""
    from scipy import stats

    db = tmp_path / "w.duckdb"
    out = tmp_path / "auto"
    run_dir, posts, _ = recovery
    # --rank auto from the run's spectra files (compute.run --skip-behaviour)
    run_py("-m", "compute.run", "--base", str(pairs["base"]), "--sft",
           str(pairs["sft"]), "--name", "planted", "--out", str(tmp_path / "runs"),
           "--skip-behaviour", "--no-load", "--no-progress", "--vectors", "0")
    proc = run_py("-m", "compute.extract_lora", "--base", str(pairs["base"]),
                  "--sft", str(pairs["sft"]), "--name", "planted", "--rank", "auto",
                  "--runs", str(tmp_path / "runs"), "--out", str(out), "--no-progress",
                  db=db)
    assert "ranks from" in proc.stdout
    for _ in range(2):
        run_py("-m", "ingest.lora", str(out), db=db)
        run_py("-m", "ingest.lora", str(run_dir), db=db)
    n = len(ex.targets(*ex.open_pair(str(pairs["base"]), str(pairs["sft"]))))
    ranks = query(db, "select rank, count(*) from raw.lora_extractions "
                  "group by all")
    assert sum(c for _, c in ranks) == n
    # the suggestion from the planted truth: min(planted rank, r_0.9 of the planted
    # singular values), the power of two at or above it (every matrix the same)
    truth = json.loads((pairs["base"].parent / "planted.json").read_text())["tensors"]
    expect = set()
    for t in truth.values():
        sq = np.asarray(t["singular_values"]) ** 2
        r90 = int(np.argmax(np.cumsum(sq) / sq.sum() >= 0.9)) + 1
        expect.add(1 << int(np.ceil(np.log2(min(t["rank"], r90)))))
    assert len(expect) == 1 and ranks == [(expect.pop(), n)]
    assert query(db, "select count(*) from raw.lora_recovery_posts")[0][0] == len(posts)
    import duckdb

    con = duckdb.connect(str(db))  # a few scored tokens let the Perplexity page open
    con.executemany("insert into raw.token_logprobs (run_id, pair, role, post_id, position, token_id, token_text, logprob) "
                    "values (?, ?, ?, ?, ?, ?, ?, ?)",
                    [("syn", "exact", role, 11, i, 5 + i, " w", -3.0 - i)
                     for role in ("base", "sft") for i in range(4)])
    con.execute("insert into raw.post_texts values ('syn', 'exact', 11, "
                "'physics.demo', 'low', 4, 8, 4, 'answer')")
    con.close()
    run_dbt(db, "build", "--quiet", "--select", "stg_compute__lora_extractions",
            "stg_compute__lora_recovery_ranks", "stg_compute__lora_recovery_posts",
            "fct_lora_recovery", "fct_lora_recovery_thresholds")
    got = query(db, "select lora_rank, vectors, grp, post_type, n_posts, "
                "delta_share, ci95_low_delta_share, kl_share "
                "from marts.fct_lora_recovery order by all")
    # every (rank, 1-D tensors) x (group or all) x (post type or all), and only those
    assert len(got) == len({(r, v) for r, v in zip(posts["rank"], posts["vectors"],
                                                    strict=True)}) * 3 * 3
    p0 = posts[(posts["rank"] == 0) & (posts["vectors"] == "base")].set_index(
        "post_id")
    for rank, vectors, grp, post_type, n_posts, share, low, kl_share in got:
        pick = p0.index[((p0["grp"] == grp) | (grp == "all"))
                        & ((p0["post_type"] == post_type) | (post_type == "all"))]
        assert n_posts == len(pick) >= 1
        b0 = p0.loc[pick]
        pr = posts[(posts["rank"] == rank) & (posts["vectors"] == vectors)
                   ].set_index("post_id").loc[pick]
        d, big_d = pr["sum_logprob"] - b0["sum_logprob"], b0["sum_logprob_sft"] - b0[
            "sum_logprob"]
        want = d.sum() / big_d.sum()
        assert share == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert kl_share == pytest.approx(
            1 - pr["sum_kl_sft_rank"].sum() / b0["sum_kl_sft_rank"].sum(), rel=1e-9)
        if n_posts > 1:
            se = np.sqrt(((d - want * big_d) ** 2).sum() / (n_posts * (n_posts - 1))
                         ) / abs(big_d.mean())
            assert low == pytest.approx(want - stats.t.ppf(0.975, n_posts - 1) * se,
                                        rel=1e-6, abs=1e-9)
    # thresholds: the smallest rank below 'full' reaching the level, else NULL
    mart = pd.DataFrame(got, columns=["rank", "vectors", "grp", "post_type", "n",
                                      "delta", "low", "kl"])
    rows = query(db, "select vectors, grp, post_type, delta_rank_90, kl_rank_99, "
                 "energy_rank_90, energy_rank_99 from "
                 "marts.fct_lora_recovery_thresholds")
    assert len(rows) == 2 * 3 * 3
    for vectors, grp, post_type, d90, k99, e90, e99 in rows:
        m = mart[(mart["vectors"] == vectors) & (mart["grp"] == grp)
                 & (mart["post_type"] == post_type) & (mart["rank"] < 64)]
        reached = m[m["delta"] >= 0.9]["rank"]
        assert d90 == (reached.min() if len(reached) else None)
        reached = m[m["kl"] >= 0.99]["rank"]
        assert k99 == (reached.min() if len(reached) else None)
        assert (e90, e99) == (2, 3)  # (0.3^2 + 0.15^2) / (that + 0.08^2) = 0.946
    thresholds = query(db, "select kl_rank_99 from marts.fct_lora_recovery_thresholds"
                       " where grp = 'all' and post_type = 'all' and vectors = 'sft'")
    assert thresholds == [(3,)]
    # the app's section reads the same mart: its headline and chart
    from app_lib import lora

    con = duckdb.connect(str(db), read_only=True)
    df = con.execute("select * from marts.fct_lora_recovery where grp = 'all' "
                     "and post_type = 'all' and vectors = 'sft' order by lora_rank").df()
    con.close()
    text = lora.headline(df)
    assert text.startswith("Spectrally 95% at r = 2, behaviourally ")
    spec = lora.recovery_chart(df).to_dict()
    values = next(v for v in spec["datasets"].values() if "measure" in v[0])
    assert {v["rank"] for v in values} == {"0", "1", "2", "3", "full"}
    assert len(values) == 3 * len(df)
    # and the Perplexity page shows it
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SFTSCOPE_DB", str(db))
    at = AppTest.from_file(str(Path(__file__).parent.parent / "app.py"),
                           default_timeout=60).run()
    at.switch_page("app_pages/perplexity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="lora_modules").value == "all"
    assert text in [m.value for m in at.markdown]


def test_recovery_headline_and_chart_data():
    """The section's sentence picks the smallest measured rank keeping 90% of the
    energy; the chart's long form keeps each measure's interval."""
    from app_lib import lora

    df = pd.DataFrame({
        "lora_rank": [0, 4, 16, 64, 896], "is_full": [False, False, False, False, True],
        "energy_share": [0.0, 0.5, 0.92, 0.99, 1.0],
        "delta_share": [0.0, 0.2, 0.6, 0.9, 1.0],
        "ci95_low_delta_share": [0.0, 0.1, 0.5, 0.8, 1.0],
        "ci95_high_delta_share": [0.0, 0.3, 0.7, 1.0, 1.0],
        "kl_share": [0.0, 0.3, 0.75, 0.95, 1.0],
        "ci95_low_kl_share": [0.0] * 5, "ci95_high_kl_share": [1.0] * 5})
    assert lora.headline(df) == ("Spectrally 92% at r = 16, behaviourally 60% of the "
                                 "log-prob delta (95% interval 50% to 70%; KL "
                                 "removed: 75%, 95% interval 0% to 100%).")
    # a share above 100%: the sentence says what it means
    over = df.assign(delta_share=[0.0, 0.2, 1.3, 0.9, 1.0])
    assert lora.headline(over).endswith("moved further than the SFT model (it "
                                        "overshoots SFT's change).")
    # the chart: shares in %, one y title (not the interval's 'low'), the 90% and
    # 100% guides labelled, the legend's labels whole
    spec = lora.recovery_chart(df).to_dict()
    rules, under, over, bars, lines = spec["layer"]
    assert rules["mark"]["type"] == "rule"
    assert lines["encoding"]["y"]["title"] == bars["encoding"]["y"]["title"] == (
        "share of SFT's change (95% interval)")
    assert lines["encoding"]["y"]["axis"]["format"] == "%"
    guides = next(v for k, v in spec["datasets"].items()
                  if "label" in v[0])
    assert [g["label"] for g in guides] == ["90%", "100% = SFT"]
    assert under["mark"]["type"] == over["mark"]["type"] == "text"
    assert lines["encoding"]["color"]["legend"]["labelLimit"] == 0
    long = lora.long_form(df)
    assert list(long["rank"].unique()) == ["0", "4", "16", "64", "full"]
    energy = long[long["measure"] == lora.MEASURES["energy_share"]]
    assert energy["low"].isna().all()
    delta_rows = long[long["measure"] == lora.MEASURES["delta_share"]]
    assert delta_rows["low"].tolist() == [0.0, 0.1, 0.5, 0.8, 1.0]
    assert "No measured rank keeps 90%" in lora.headline(df.iloc[:2].assign(
        is_full=False))


# ---------------------------------------------------------------- extraction choices


def test_kohya_rules_by_hand():
    """s = 4, 2, 1, 0.5 (sum 7.5; squares 16, 4, 1, 0.25, sum 21.25).
    sv_ratio p: #{s > 4 / p}: p = 3 -> 2, p = 4 -> 2 (s = 1 is not above 1),
    p = 8 -> 3, p = 1000 -> 4. sv_cumulative p: 1 + first i with cumsum(s)/7.5
    (0.533, 0.8, 0.933, 1) >= p: p = 0.8 -> 2, 0.81 -> 3, 1 -> 4. sv_fro p: 1 + first
    i with cumsum(s^2)/21.25 (0.753, 0.941, 0.988, 1) >= p^2: p = 0.9 (0.81) -> 2,
    0.99 (0.9801) -> 3. The cap (kohya's --new_rank) applies last; s_1 <= 1e-6
    gives 1."""
    from compute.lora.choices import epsilon_rank, kohya_rank

    s = [4.0, 2.0, 1.0, 0.5]
    cases = {("sv_ratio", 3): 2, ("sv_ratio", 4): 2, ("sv_ratio", 8): 3,
             ("sv_ratio", 1000): 4, ("sv_cumulative", 0.8): 2,
             ("sv_cumulative", 0.81): 3, ("sv_cumulative", 1.0): 4,
             ("sv_fro", 0.9): 2, ("sv_fro", 0.99): 3}
    for (method, p), want in cases.items():
        assert kohya_rank(s, method, p, cap=64) == want, (method, p)
    assert kohya_rank(s, "sv_fro", 0.99, cap=2) == 2
    assert kohya_rank([1e-7, 1e-8], "sv_ratio", 2, cap=8) == 1
    assert epsilon_rank(s, 0.9, cap=8) == 3 and epsilon_rank(s, 0.9, cap=2) == 2
    assert epsilon_rank(s, 0.0, cap=3) == 3


def test_sv_epsilon_and_dynamic_ranks_against_numpy(pairs, tmp_path):
    """Each matrix's rank is the rule applied to NumPy's singular values of dW:
    #{s > e} (at most --rank) and kohya's sv_fro (1 + first i with the squared
    share >= p^2, at most --rank)."""
    base, sft = ex.open_pair(str(pairs["base"]), str(pairs["sft"]))
    tgts = ex.targets(base, sft, ["q_proj", "down_proj"])
    svals = {t.tensor: np.linalg.svd(numpy_delta(pairs["base"], pairs["sft"],
                                                 t.tensor), compute_uv=False)
             for t in tgts}
    eps = float(np.median([s[2] for s in svals.values()]))
    rows = ex.extract(base, sft, tgts, ex.Choice(rank=8, sv_epsilon=eps),
                      tmp_path / "eps", progress=False)
    for r in rows:
        assert r["rank"] == min(8, int(np.sum(svals[r["tensor"]] > eps)))
    assert len({r["rank"] for r in rows}) > 1  # the cut differs between matrices
    rows = ex.extract(base, sft, tgts, ex.Choice(rank=8, dynamic="sv_fro",
                                                 dynamic_param=0.5),
                      tmp_path / "fro", progress=False)
    for r in rows:
        sq = svals[r["tensor"]] ** 2
        first = int(np.argmax(np.cumsum(sq) / sq.sum() >= 0.25))
        assert r["rank"] == min(8, first + 1)


def test_embed_full_with_include_loads_in_peft(pairs, tmp_path):
    """--embed full --include 'layers\\.0\\.' --rank 2: layer 0's matrices factored
    at rank 2, embed_tokens and lm_head stored whole as modules_to_save (W_sft's
    matrices, mergekit's key layout), nothing else. PeftModel.from_pretrained
    gives the logits of the base with those changes made by hand."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from compute.behaviour.merge_score import apply_deltas
    from compute.lora.recovery import Factors, step_deltas

    out = tmp_path / "full"
    cfg = ex.parse_args(["--base", str(pairs["base"]), "--sft", str(pairs["sft"]),
                         "--rank", "2", "--embed", "full", "--include",
                         r"layers\.0\.", "--out", str(out), "--no-load",
                         "--no-progress"])
    rows = ex.run(cfg)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["embed_tokens", "lm_head"]
    assert config["target_modules"] and all(
        ".layers.0." in m for m in config["target_modules"])
    saved = load_file(str(out / "adapter_model.safetensors"))
    sft_ck = resolve(str(pairs["sft"]))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        np.testing.assert_array_equal(saved[f"base_model.model.{name}"],
                                      to_float64(*sft_ck.read_array(name)))
    whole_rows = [r for r in rows if r["full_rank"]]
    assert {r["module"] for r in whole_rows} == {"embed_tokens", "lm_head"}
    assert all(r["retained_share"] == 1.0 for r in whole_rows)
    assert json.loads(rows[0]["options"])["embed"] == "full"
    stored = pd.read_parquet(out / "lora_extraction.parquet")  # what is loaded
    assert set(stored.loc[stored["full_rank"], "module"]) == {"embed_tokens",
                                                              "lm_head"}
    assert {json.loads(o)["include"][0] for o in stored["options"]} == {
        r"layers\.0\."}

    base, sft = ex.open_pair(str(pairs["base"]), str(pairs["sft"]))
    low, whole = ex.split_targets(ex.targets(base, sft), cfg)

    def load():
        return AutoModelForCausalLM.from_pretrained(str(pairs["base"]),
                                                    dtype=torch.float32).eval()

    peft_model = PeftModel.from_pretrained(load(), str(out)).eval()
    ours = apply_deltas(load(), base, step_deltas(
        base, sft, low, Factors(base, sft, low, 2, False), 2, "base", [], whole))
    ids = list(range(5, 60, 3))
    assert np.abs(logits(peft_model, ids) - logits(ours, ids)).max() < 1e-4


def test_embed_skip_and_exclude(pairs, tmp_path):
    """--embed skip leaves the embedding and the head out; --embed full with an
    --exclude matching the head stores only the embedding; an --include matching
    nothing is refused by name."""
    def split(*argv):
        cfg = ex.parse_args(["--base", str(pairs["base"]), "--sft",
                             str(pairs["sft"]), "--rank", "2", "--out",
                             str(tmp_path / "x"), *argv])
        base, sft = ex.open_pair(cfg.base, cfg.sft)
        return ex.split_targets(ex.targets(base, sft), cfg)

    low, whole = split("--embed", "skip")
    assert not whole and not {t.module for t in low} & {"embed_tokens", "lm_head"}
    low, whole = split("--embed", "full", "--exclude", "lm_head")
    assert [t.module for t in whole] == ["embed_tokens"]
    assert "lm_head" not in {t.module for t in low}
    low, whole = split()  # the default: factored like any matrix
    assert {"embed_tokens", "lm_head"} <= {t.module for t in low} and not whole
    with pytest.raises(ex.ExtractError, match="leave no matrix"):
        split("--include", "no_such_module")
    proc = run_py("-m", "compute.extract_lora", "--base", str(pairs["base"]), "--sft",
                  str(pairs["sft"]), "--dynamic", "sv_fro", "--dynamic-param", "2",
                  "--out", str(tmp_path / "bad"), "--no-load", check=False)
    assert proc.returncode == 2 and "--dynamic-param 2" in proc.stderr


def test_recovery_with_full_rank_embeddings(pairs, recovery):
    """lora_recovery --embed-full --vectors base (mergekit's default layout, the
    matrices alone): its rows are the modules 'all+embed_full'; r = 0 is still the
    base (the plain run's sums, its 'base' rows); at
    r = 1 the embedding and head are W_sft's whole, so the model differs from the
    plain rank-1 one, the energy kept grows by their ||dW||_F^2 minus their top-1
    s^2 (NumPy), the parameters by m n - (m + n) each."""
    from compute.lora.recovery import parse_args, run

    cfg = parse_args(["--base", str(pairs["base"]), "--sft", str(pairs["exact"]),
                      "--name", "exact", "--ranks", "1", "--embed-full",
                      "--vectors", "base", "--prompts", str(pairs["prompts"]),
                      "--out", str(pairs["root"] / "runs"), "--no-load",
                      "--no-progress", "--device", "cpu"])
    out = run(cfg)
    posts = pd.concat([pd.read_parquet(f) for f in sorted((out / "posts").glob("*"))])
    ranks = pd.read_parquet(out / "ranks.parquet")
    assert set(posts["modules"]) == {"all+embed_full"}
    assert set(posts["vectors"]) == set(ranks["vectors"]) == {"base"}
    ranks = ranks.set_index("rank")
    _, plain_posts, plain_ranks = recovery
    plain_posts = plain_posts[plain_posts["vectors"] == "base"]
    plain_ranks = plain_ranks[plain_ranks["vectors"] == "base"].set_index("rank")

    def sums(df, r):
        return df[df["rank"] == r].sort_values("post_id")["sum_logprob"].to_numpy()

    np.testing.assert_allclose(sums(posts, 0), sums(plain_posts, 0), rtol=1e-6)
    assert np.abs(sums(posts, 1) - sums(plain_posts, 1)).max() > 1e-3
    extra_sq, extra_params = 0.0, 0
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        dw = numpy_delta(pairs["base"], pairs["exact"], name)
        s = np.linalg.svd(dw, compute_uv=False)
        extra_sq += float(np.sum(s ** 2) - s[0] ** 2)
        extra_params += dw.size - sum(dw.shape)
    assert ranks.loc[1, "retained_sq"] - plain_ranks.loc[1, "retained_sq"] == (
        pytest.approx(extra_sq, rel=1e-6))
    assert ranks.loc[1, "n_params"] - plain_ranks.loc[1, "n_params"] == extra_params
    assert ranks.loc[0, "n_params"] == 0
    assert ranks.loc[1, "frobenius_sq"] == pytest.approx(
        plain_ranks.loc[1, "frobenius_sq"], rel=1e-9)


# mergekit's adapter_config.json (mergekit/scripts/extract_lora.py, make_config_dict,
# arcee-ai/mergekit a6e4028): every key it writes, and the value its loader needs
MERGEKIT_CONFIG = {"base_model_name_or_path": None, "peft_type": "LORA",
                   "use_rslora": False, "target_modules": None,
                   "modules_to_save": None, "task_type": "CAUSAL_LM", "r": None,
                   "lora_alpha": None, "rank_pattern": None, "alpha_pattern": None,
                   "lora_dropout": 0.0, "fan_in_fan_out": False,
                   "inference_mode": True}


def mergekit_key(key: str, modules_to_save: list[str]) -> bool:
    """A tensor name of mergekit's layout (extract_lora.py, LoRAModuleSaveTask and
    plan_module_to_save): base_model.model.<module>.lora_A.weight / lora_B.weight,
    an embedding's lora_embedding_A / lora_embedding_B (no .weight), and a module
    stored whole as base_model.model.<tensor>."""
    import re

    if not key.startswith("base_model.model."):
        return False
    if re.search(r"\.(lora_[AB]\.weight|lora_embedding_[AB])$", key):
        return True
    return key.endswith(".weight") and key.rsplit(".", 2)[-2] in modules_to_save


@pytest.mark.parametrize("embed", ["full", "lora"])
def test_adapter_loads_as_mergekit_loads_it(pairs, tmp_path, embed):
    """mergekit merges an adapter ("base+lora") in ModelReference.merged
    (mergekit/common.py, arcee-ai/mergekit a6e4028): the base by its config's
    architectures[0] auto class, PeftModel.from_pretrained(model, lora,
    is_trainable=False), merge_and_unload(), save_pretrained(safe_serialization).
    That sequence, without mergekit, on extract_lora's folder, with --embed full
    (mergekit's default: embeddings as modules_to_save) and --embed lora
    (--embed-lora): the config has every key mergekit writes, with its values;
    every tensor name is of mergekit's layout; the merged checkpoint's tensors are
    W_base + B A for the factored matrices (A^T B^T for an embedding), W_sft for
    those stored whole and W_base for the rest, to fp32 rounding."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file as load_torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path / embed
    ex.run(ex.parse_args(["--base", str(pairs["base"]), "--sft", str(pairs["sft"]),
                          "--rank", "3", "--embed", embed, "--out", str(out),
                          "--no-load", "--no-progress"]))
    config = json.loads((out / "adapter_config.json").read_text())
    for key, value in MERGEKIT_CONFIG.items():
        assert key in config and (value is None or config[key] == value), key
    assert config["alpha_pattern"] == config["rank_pattern"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    whole = config["modules_to_save"] or []
    assert whole == (["embed_tokens", "lm_head"] if embed == "full" else [])
    assert all(mergekit_key(k, whole) for k in saved), sorted(saved)

    arch = AutoConfig.from_pretrained(str(pairs["base"])).architectures[0]
    assert arch.endswith("ForCausalLM")  # mergekit's get_auto_cls: the causal LM
    model = AutoModelForCausalLM.from_pretrained(str(pairs["base"]),
                                                 dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(out), is_trainable=False)
    model.merge_and_unload().save_pretrained(tmp_path / "merged",
                                             safe_serialization=True)
    merged = load_torch(str(tmp_path / "merged" / "model.safetensors"))
    base_ck, sft_ck = resolve(str(pairs["base"])), resolve(str(pairs["sft"]))
    changed = 0
    for name, got in merged.items():
        w = to_float64(*base_ck.read_array(name))
        before = w
        module = name.removesuffix(".weight")
        key = f"base_model.model.{module}"
        if f"{key}.lora_A.weight" in saved:
            w = w + saved[f"{key}.lora_B.weight"].astype(np.float64) \
                @ saved[f"{key}.lora_A.weight"].astype(np.float64)
        elif f"{key}.lora_embedding_A" in saved:
            w = w + (saved[f"{key}.lora_embedding_B"].astype(np.float64)
                     @ saved[f"{key}.lora_embedding_A"].astype(np.float64)).T
        elif module.rsplit(".", 1)[-1] in whole:
            w = to_float64(*sft_ck.read_array(name))
        scale = max(1.0, float(np.abs(w).max()))
        assert np.abs(got.double().numpy() - w).max() < 1e-5 * scale, name
        changed += w is not before and bool(np.abs(w - before).max() > 1e-4)
    assert changed >= len(saved) // 2 - 2  # the merge did move the matrices
