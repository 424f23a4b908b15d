"""The seed floor: the demo base, its shipped SFT A (seed 19) and the second fine-tune
B (models/demo-seed29, seed 29), scored by compute.run as the pairs (base, A),
(base, B) and (A, B); marts/seeds against NumPy on the checkpoints' own weights and a
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
    for name, (base, sft) in PAIRS.items():
        run_py("-m", "compute.run", "--base", str(base), "--sft", str(sft), "--name",
               name, "--prompts", str(prompts), "--window", "128", "--vectors", "0",
               "--no-progress", "--device", "cpu", "--out", str(work / "runs"),
               db=db)
    run_dbt(db, "build", "--quiet", "--select", "+dim_pairs",
            "+fct_seed_floor_matrices", "+fct_seed_floor_summary",
            "+fct_seed_floor_behaviour")
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
