"""compute.patch (weight patching): planted pairs whose dW is non-zero in known
groups, against transformers forward passes of models merged here by hand; ranks,
shards, re-runs, the load and the dbt marts against pandas/NumPy/SciPy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from compute.fixtures.planted import PairSpec, build_pair
from compute.io.checkpoints import resolve
from compute.linalg.spectra import to_float64
from tests.conftest import query, run_dbt, run_py

SPEC = PairSpec(hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2, vocab=512,
                max_positions=256, seed=2929, rank_fn=lambda module, layer, n: 2)
TEXTS = [
    "The electric field of a point charge falls off as the inverse square of distance.",
    "How do I compute the eigenvalues of a symmetric matrix? I tried numpy's linalg.",
    "Energy is conserved in a closed system, and momentum when no external force acts.",
    "Why is the sky blue? Rayleigh scattering grows as the fourth power of frequency.",
    "A capacitor stores energy in its field; the energy is half C times V squared.",
    "Is the speed of light the same for every observer? Yes, in vacuum it is c.",
]
ONE = {"model.layers.1.mlp.down_proj.weight": 0.8}  # group 1.down_proj
TWO = {"model.layers.0.mlp.up_proj.weight": 0.9,  # groups 0.up_proj, 1.self_attn.o_proj
       "model.layers.1.self_attn.o_proj.weight": 1.2}


def planted_sft(base: Path, out: Path, changes: dict[str, float], seed: int) -> Path:
    """An fp32 SFT = W_base + a rank-2 product of norm ~scale in the named tensors
    only; every other tensor (1-D, embeddings) exactly the base's."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ck = resolve(str(base))
    tensors = {}
    for name in ck.tensors:
        w = to_float64(*ck.read_array(name))
        if name in changes:
            m, n = w.shape
            u = np.linalg.qr(rng.standard_normal((m, 2)))[0]
            v = np.linalg.qr(rng.standard_normal((n, 2)))[0]
            w = w + (u * [changes[name], changes[name] / 2]) @ v.T
        tensors[name] = w.astype(np.float32)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text()) | {"torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """A planted base (bf16), two fp32 SFTs (one changed group, two), prompts, and
    each SFT's behaviour run (compute.run, windows holding every post whole)."""
    root = tmp_path_factory.mktemp("patch")
    base, _ = build_pair(root / "planted", SPEC)
    one = planted_sft(base, root / "one" / "sft", ONE, 1)
    two = planted_sft(base, root / "two" / "sft", TWO, 2)
    prompts = root / "prompts.parquet"
    pd.DataFrame({"post_id": range(21, 21 + len(TEXTS)), "site": "physics.demo",
                  "grp": ["low", "high"] * 3,
                  "post_type": ["answer"] * 3 + ["question"] * 3,
                  "text": TEXTS}).to_parquet(prompts)
    out = root / "runs"
    common = ["--prompts", str(prompts), "--window", "128", "--batch-size", "2",
              "--no-load", "--no-progress", "--device", "cpu", "--out", str(out)]
    run_py("-m", "compute.run", "--base", str(base), "--sft", str(one), "--name",
           "one", "--skip-spectra", *common)
    run_py("-m", "compute.run", "--base", str(base), "--sft", str(two), "--name",
           "two", "--vectors", "8", *common)
    return {"base": base, "one": one, "two": two, "prompts": prompts, "out": out,
            "root": root}


def patch_argv(pairs, name: str, *extra: str) -> list[str]:
    return ["--base", str(pairs["base"]), "--sft", str(pairs[name]), "--name", name,
            "--prompts", str(pairs["prompts"]), "--out", str(pairs["out"]),
            "--no-load", "--no-progress", *extra]


def patched(pairs, name: str, *extra: str) -> pd.DataFrame:
    """compute.patch in this process; its posts files, read back."""
    from compute.attribution.patch import parse_args, run

    run(parse_args(patch_argv(pairs, name, *extra)))
    by = "layer_module"
    if "--by" in extra:
        by = extra[list(extra).index("--by") + 1]
    files = sorted((pairs["out"] / name / "patch" / by / "posts").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files])


def sums(df: pd.DataFrame, group: str, mode: str, rank=None) -> pd.DataFrame:
    rows = df[(df.patch_group == group) & (df["mode"] == mode)]
    rows = rows[rows["rank"].isna()] if rank is None else rows[rows["rank"] == rank]
    return rows.set_index("post_id").sort_index()


@pytest.fixture(scope="module")
def one(pairs) -> pd.DataFrame:
    return patched(pairs, "one", "--ranks", "1,2,full")


def test_single_group_add_is_the_sft_revert_the_base_others_nothing(pairs, one):
    """dW lives in 1.down_proj only: its add is the SFT (log-probs equal, KL 0), its
    revert is the base (the behaviour run's own base log-probs), and every other
    group's add is the base, its revert the SFT."""
    groups = set(one.patch_group)
    assert {"1.down_proj", "0.q_proj", "embeddings", "1-D"} <= groups
    assert len(groups) == 2 * 7 + 2 + 1  # 7 module types x 2 layers, emb., 1-D, base
    base = sums(one, "(base)", "base")
    lp = pd.concat([pd.read_parquet(f) for f in sorted(
        (pairs["out"] / "one" / "behaviour" / "token_logprobs").glob("*.parquet"))])
    run_base = lp[lp.role == "base"].groupby("post_id")["logprob"].sum().sort_index()
    np.testing.assert_allclose(base.sum_logprob, run_base, rtol=0, atol=1e-4)
    add, rev = sums(one, "1.down_proj", "add"), sums(one, "1.down_proj", "revert")
    np.testing.assert_allclose(add.sum_logprob, add.sum_logprob_sft, atol=1e-4)
    assert add.sum_kl_sft_model.abs().max() < 1e-5
    np.testing.assert_allclose(rev.sum_logprob, base.sum_logprob, atol=1e-4)
    np.testing.assert_allclose(rev.sum_kl_sft_model, base.sum_kl_sft_model,
                               rtol=1e-5)
    assert base.sum_kl_sft_model.min() > 1e-3  # the planted change is visible
    # KL to the base as loaded: the add is the SFT, so KL(p_base || p_add) is the
    # base's KL(p_base || p_sft) and KL(p_add || p_base) its KL(p_sft || p_base);
    # the revert and the base itself are the base (0)
    np.testing.assert_allclose(add.sum_kl_base_model, base.sum_kl_model_sft,
                               rtol=1e-4)
    np.testing.assert_allclose(add.sum_kl_model_base, base.sum_kl_sft_model,
                               rtol=1e-4)
    assert rev.sum_kl_base_model.abs().max() < 1e-5
    assert base[["sum_kl_base_model", "sum_kl_model_base"]].abs().max().max() < 1e-6
    for g in groups - {"1.down_proj", "(base)"}:
        np.testing.assert_allclose(sums(one, g, "add").sum_logprob, base.sum_logprob,
                                   atol=1e-4, err_msg=g)
        assert sums(one, g, "add").sum_kl_base_model.abs().max() < 1e-5, g
        assert sums(one, g, "revert").sum_kl_sft_model.abs().max() < 1e-5, g
        np.testing.assert_allclose(sums(one, g, "revert").sum_kl_base_model,
                                   base.sum_kl_model_sft, rtol=1e-4, err_msg=g)


def test_rank_at_the_matrix_rank_equals_add(one):
    """dW_G has rank 2: its top-2 part (an SVD product) is dW_G, so add at r = 2
    scores as the add of dW_G whole; r = 1 keeps part of the change only."""
    add = sums(one, "1.down_proj", "add")
    r2, r1 = sums(one, "1.down_proj", "add", 2), sums(one, "1.down_proj", "add", 1)
    np.testing.assert_allclose(r2.sum_logprob, add.sum_logprob, atol=1e-4)
    np.testing.assert_allclose(r2.sum_kl_sft_model, add.sum_kl_sft_model, atol=1e-5)
    assert (r1.sum_kl_sft_model > 1e-4).all()
    assert "1-D" not in set(one[one["rank"].notna()].patch_group)  # no ranks for 1-D


def hand_forward(pairs, name: str, groups: dict[str, list[str]]) -> dict:
    """Per model (base, sft, add/revert of each group) and post: sums of the
    log-probs, of KL(p_sft || p_model) and of KL(p_base || p_model) and KL(p_model
    || p_base), from transformers forward passes of models merged here (base or SFT
    weights copied into the named parameters)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from compute.behaviour.merge_score import BehaviourSetting, DeltaScorer

    setting = BehaviourSetting.from_run(pairs["out"] / name, pairs["prompts"], "cpu")
    prefix = DeltaScorer.prefix_of(setting)
    w_base = {k: v.float() for k, v in
              load_file(str(pairs["base"] / "model.safetensors")).items()}
    w_sft = load_file(str(pairs[name] / "model.safetensors"))

    def model_with(weights: dict):
        m = AutoModelForCausalLM.from_pretrained(str(pairs["base"]),
                                                 dtype=torch.float32).eval()
        with torch.no_grad():
            for k, v in weights.items():
                m.get_parameter(k).copy_(v)
        return m

    def logprobs(m) -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for p in setting.posts:
                ids = torch.tensor([[prefix, *p.ids]])
                out.append(torch.log_softmax(m(ids).logits[0, :-1].double(), -1))
        return out

    targets = [torch.tensor(p.ids) for p in setting.posts]
    lp_sft = logprobs(model_with(w_sft))
    lp_base = logprobs(model_with({}))
    models = {"base": {}, "sft": dict(w_sft)}
    for g, names in groups.items():
        models[f"{g}|add"] = {n: w_sft[n] for n in names}
        models[f"{g}|revert"] = dict(w_sft) | {n: w_base[n] for n in names}
    result = {}
    for key, weights in models.items():
        lps = logprobs(model_with(weights))
        result[key] = pd.DataFrame({
            "post_id": [p.post_id for p in setting.posts],
            "lp": [float(lp.gather(1, t[:, None]).sum()) for lp, t in
                   zip(lps, targets, strict=True)],
            "kl": [float((s.exp() * (s - lp)).sum()) for s, lp in
                   zip(lp_sft, lps, strict=True)],
            "kl_base": [float((b.exp() * (b - lp)).sum()) for b, lp in
                        zip(lp_base, lps, strict=True)],
            "kl_to_base": [float((lp.exp() * (lp - b)).sum()) for b, lp in
                           zip(lp_base, lps, strict=True)],
            }).set_index("post_id").sort_index()
    return result


@pytest.fixture(scope="module")
def two(pairs) -> pd.DataFrame:
    return patched(pairs, "two")


def test_two_groups_shares_and_interaction_against_hand_merged_models(pairs, two):
    """Both changed groups' add and revert models score as transformers forward
    passes of the same models merged by hand; shares of KL removed and the
    interaction (add + revert - 1 per group, sum of the adds vs 1) agree."""
    groups = {"0.up_proj": ["model.layers.0.mlp.up_proj.weight"],
              "1.o_proj": ["model.layers.1.self_attn.o_proj.weight"]}
    hand = hand_forward(pairs, "two", groups)
    base = sums(two, "(base)", "base")
    np.testing.assert_allclose(base.sum_logprob, hand["base"].lp, atol=2e-3)
    np.testing.assert_allclose(base.sum_logprob_sft, hand["sft"].lp, atol=2e-3)
    np.testing.assert_allclose(base.sum_kl_sft_model, hand["base"].kl, rtol=1e-3,
                               atol=1e-5)
    add_shares = {}
    for g in groups:
        for mode in ("add", "revert"):
            ours, ref = sums(two, g, mode), hand[f"{g}|{mode}"]
            np.testing.assert_allclose(ours.sum_logprob, ref.lp, atol=2e-3)
            np.testing.assert_allclose(ours.sum_kl_sft_model, ref.kl, rtol=1e-3,
                                       atol=1e-5)
            np.testing.assert_allclose(ours.sum_kl_base_model, ref.kl_base,
                                       rtol=1e-3, atol=1e-5)
            np.testing.assert_allclose(ours.sum_kl_model_base, ref.kl_to_base,
                                       rtol=1e-3, atol=1e-5)
            assert ours.sum_kl_base_model.min() > 1e-4, (g, mode)  # both move
            share = 1 - ours.sum_kl_sft_model.sum() / base.sum_kl_sft_model.sum()
            want = 1 - ref.kl.sum() / hand["base"].kl.sum()
            assert share == pytest.approx(want, abs=1e-3), (g, mode)
            if mode == "add":
                add_shares[g] = share
        interaction = add_shares[g] + share - 1  # add vs 1 - revert
        want = (1 - hand[f"{g}|add"].kl.sum() / hand["base"].kl.sum()) + (
            1 - hand[f"{g}|revert"].kl.sum() / hand["base"].kl.sum()) - 1
        assert interaction == pytest.approx(want, abs=2e-3)
    assert 0 < add_shares["0.up_proj"] < 1 and 0 < add_shares["1.o_proj"] < 1
    for g in set(two.patch_group) - set(groups) - {"(base)"}:
        assert sums(two, g, "add").sum_kl_sft_model.sum() == pytest.approx(
            base.sum_kl_sft_model.sum(), rel=1e-5), g


def test_shards_resume_and_reruns_replace(pairs, two, tmp_path):
    """--shard 0/2 and 1/2 write disjoint groups whose union is the whole run's
    rows; the kind is finished only when both are done; a run in the same setting
    scores nothing again; another setting (--ranks) clears the folder first."""
    from compute.attribution.patch import parse_args, run

    out = tmp_path / "runs"
    shutil.copytree(pairs["out"] / "two", out / "two",
                    ignore=shutil.ignore_patterns("patch"))
    argv = patch_argv(pairs, "two")
    argv[argv.index("--out") + 1] = str(out)
    run(parse_args([*argv, "--shard", "0/2"]))
    manifest = json.loads((out / "two" / "run.json").read_text())
    assert manifest["kinds"]["patch"]["finished_at"] is None
    run(parse_args([*argv, "--shard", "1/2"]))
    manifest = json.loads((out / "two" / "run.json").read_text())
    assert manifest["kinds"]["patch"]["finished_at"]
    folder = out / "two" / "patch" / "layer_module"
    got = pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("posts/*"))])
    key = ["patch_group", "mode", "post_id"]
    cols = ["sum_logprob", "sum_kl_sft_model"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True)[key + cols],
        two.sort_values(key).reset_index(drop=True)[key + cols], atol=1e-9)
    stamp = {f: f.stat().st_mtime_ns for f in folder.glob("models/*")}
    run(parse_args(argv))  # resumed: nothing scored again
    assert {f: f.stat().st_mtime_ns for f in folder.glob("models/*")} == stamp
    run(parse_args([*argv, "--by", "module"]))
    assert (out / "two" / "patch" / "module" / "models" / "base.parquet").exists()


def test_refusals_are_named(pairs, tmp_path):
    proc = run_py("-m", "compute.patch", "--base", str(pairs["base"]), "--sft",
                  str(pairs["two"]), "--name", "none", "--prompts",
                  str(pairs["prompts"]), "--out", str(tmp_path), "--no-progress",
                  check=False)
    assert proc.returncode == 2 and "run.json" in proc.stderr, proc.stderr
    assert not (tmp_path / "none" / "patch").exists()
    proc = run_py("-m", "compute.patch", *patch_argv(pairs, "two", "--shard", "0/99"),
                  check=False)
    assert proc.returncode == 2 and "groups" in proc.stderr, proc.stderr
    proc = run_py("-m", "compute.patch", *patch_argv(pairs, "two", "--dry-run"))
    info = json.loads(proc.stdout)
    assert info["groups"] == 16 and info["models"] == 1 + 2 * 16


def ratio_interval(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """sum x / sum y and the half width of its 95% t interval (linearised)."""
    from scipy import stats

    n, q = len(x), x.sum() / y.sum()
    se = np.sqrt(((x - q * y) ** 2).sum() / (n * (n - 1))) / y.mean()
    return q, stats.t.ppf(0.975, n - 1) * se


def test_load_and_marts_against_pandas(pairs, two, tmp_path):
    """Loaded twice (replaced, not duplicated) with ingest.compute_load; the marts'
    shares, intervals, interaction, ranks and Spearman correlation against the
    posts' sums and the checkpoints' norms recomputed here (SciPy)."""
    from scipy import stats

    db = tmp_path / "w.duckdb"
    for _ in range(2):
        run_py("-m", "ingest.compute_load", str(pairs["out"] / "two"), db=db)
    assert query(db, "select count(*) from raw.patch_posts")[0][0] == len(two)
    run_dbt(db, "build", "--quiet", "--select", "+fct_patch_vs_weights",
            "+fct_patch_ranking")
    base = sums(two, "(base)", "base")
    big_k = base.sum_kl_sft_model.to_numpy()
    rows = {}
    for g in sorted(set(two.patch_group) - {"(base)"}):
        k_add = sums(two, g, "add").sum_kl_sft_model.to_numpy()
        k_rev = sums(two, g, "revert").sum_kl_sft_model.to_numpy()
        q_add, h_add = ratio_interval(k_add, big_k)
        q_int, h_int = ratio_interval(k_add + k_rev, big_k)
        rows[g] = (1 - q_add, h_add, 1 - q_int, h_int,
                   k_rev.sum() / big_k.sum())
    got = query(db, "select patch_group, add_share, ci95_high_add_share - add_share, "
                "interaction, ci95_high_interaction - interaction, revert_share, "
                "rank_add, sum_add_share, relative_frobenius_change from "
                "marts.fct_patch_ranking where grp = 'all' and post_type = 'all'")
    assert {r[0] for r in got} == set(rows)
    for g, add, h, inter, hi, rev, _, total, _ in got:
        np.testing.assert_allclose([add, h, inter, hi, rev], rows[g], atol=1e-9)
        assert total == pytest.approx(sum(r[0] for r in rows.values()))
    top = [g for g, *_, rk, _, _ in got if rk == 1]
    assert top == [max(rows, key=lambda g: rows[g][0])]
    # the paired bootstrap: 1000 resamples of the 6 posts (weights: how often each
    # post is drawn), every model on the same ones; the marts' percentile intervals
    # recomputed from the weights and the posts' sums (NumPy's linear quantiles)
    w = pd.DataFrame(query(db, "select b, post_id, weight from intermediate."
                           "int_patch_resamples where grp = 'all' and post_type = "
                           "'all' and patch_by = 'layer_module'"),
                     columns=["b", "post_id", "weight"])
    assert w.b.nunique() == 1000 and (w.groupby("b").weight.sum() == len(base)).all()
    weights = w.pivot_table(index="b", columns="post_id", values="weight",
                            fill_value=0)[base.index].to_numpy()
    # resamples, not one draw: 6 posts make 462 multisets, 1000 draws ~320 of them;
    # each post drawn once a resample on average
    assert len({tuple(r) for r in weights}) > 200
    assert np.abs(weights.mean(axis=0) - 1).max() < 0.15
    big_d = (base.sum_logprob_sft - base.sum_logprob).to_numpy()
    boot = query(db, "select patch_group, mode, boot_low_kl_share, boot_high_kl_share, "
                 "boot_low_delta_share, boot_high_delta_share, boot_low_carried_share "
                 "from marts.fct_patch_effects where grp = 'all' and post_type = 'all' "
                 "and patch_rank is null and patch_by = 'layer_module'")
    assert len(boot) == 2 * len(rows)
    for g, mode, lo, hi, dlo, dhi, carried_lo in boot:
        m = sums(two, g, mode)
        kl = 1 - weights @ m.sum_kl_sft_model.to_numpy() / (weights @ big_k)
        delta = weights @ (m.sum_logprob - base.sum_logprob).to_numpy() / (
            weights @ big_d)
        assert (lo, hi) == pytest.approx(np.quantile(kl, [0.025, 0.975]), abs=1e-9)
        assert (dlo, dhi) == pytest.approx(np.quantile(delta, [0.025, 0.975]),
                                           abs=1e-9)
        assert carried_lo == pytest.approx(lo if mode == "add" else 1 - hi)
    # moved_share: KL(p_base || p_model) over KL(p_base || p_sft), its interval
    big_m = base.sum_kl_model_sft.to_numpy()
    moved = query(db, "select patch_group, mode, moved_share, ci95_high_moved_share "
                  "- moved_share, kl_base_model_per_token from marts.fct_patch_effects "
                  "where grp = 'all' and post_type = 'all' and patch_rank is null")
    assert len(moved) == 2 * len(rows)
    for g, mode, share, h, per_token in moved:
        m = sums(two, g, mode)
        q, hq = ratio_interval(m.sum_kl_base_model.to_numpy(), big_m)
        assert (share, h) == pytest.approx((q, hq), abs=1e-9), (g, mode)
        assert per_token == pytest.approx(m.sum_kl_base_model.sum()
                                          / m.n_tokens.sum()), (g, mode)
    # Spearman over groups: relative Frobenius change from the files vs add share
    ck_b, ck_s = resolve(str(pairs["base"])), resolve(str(pairs["two"]))
    rel = {}
    for g, *_ in got:
        if g == "1-D":
            continue
        names = ([n for n in ck_b.tensors if "embed_tokens" in n or "lm_head" in n]
                 if g == "embeddings" else
                 [n for n in ck_b.tensors if n.startswith(
                     f"model.layers.{g.split('.')[0]}.") and f".{g.split('.')[1]}."
                  in n and n.endswith("weight")])
        wb = [to_float64(*ck_b.read_array(n)) for n in names]
        dw = [to_float64(*ck_s.read_array(n)) - w for n, w in zip(names, wb,
                                                                  strict=True)]
        rel[g] = np.sqrt(sum((d ** 2).sum() for d in dw) / sum((w ** 2).sum()
                                                                for w in wb))
    mart_rel = {g: r for g, *_, r in got if g != "1-D"}
    for g in rel:
        assert mart_rel[g] == pytest.approx(rel[g], rel=1e-6), g
    gs = sorted(rel)
    rho = stats.spearmanr([rel[g] for g in gs], [rows[g][0] for g in gs]).statistic
    (m_rho, lo, hi, n), = query(
        db, "select spearman_rho, ci95_low_rho, ci95_high_rho, n_groups from "
        "marts.fct_patch_vs_weights where weight_measure = "
        "'relative_frobenius_change' and behaviour_share = 'add' and grp = 'all' "
        "and post_type = 'all' and patch_by = 'layer_module'")
    assert n == len(gs) and m_rho == pytest.approx(rho, abs=1e-9)
    if abs(m_rho) >= 1:  # the two changed groups lead both orders: no Fisher z
        assert (lo, hi) == (None, None)
    else:
        z, se = np.arctanh(rho), np.sqrt(1.06 / (n - 3))
        assert (lo, hi) == pytest.approx(
            (np.tanh(z - 1.96 * se), np.tanh(z + 1.96 * se)), abs=1e-4)
    # the interval where rho is inside (-1, 1): signal rank vs the revert share
    sr = query(db, "select spearman_rho, ci95_low_rho, ci95_high_rho, n_groups from "
               "marts.fct_patch_vs_weights where grp = 'all' and post_type = 'all' "
               "and abs(spearman_rho) < 1 and n_groups > 3")
    for m_rho, lo, hi, n in sr:
        z, se = np.arctanh(m_rho), np.sqrt(1.06 / (n - 3))
        assert (lo, hi) == pytest.approx(
            (np.tanh(z - 1.959963984540054 * se), np.tanh(z + 1.959963984540054 * se)))
