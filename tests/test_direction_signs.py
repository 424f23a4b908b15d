"""compute.direction_signs: the effect sign of dW's top directions, from the matrices'
inputs on the behaviour run's posts, against a forward pass hooked here; the mart's
'promoted' pole follows it; the sign flips with the vector."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from compute.run.direction_signs import sign_rows
from tests.conftest import query, run_dbt, run_py

TEXTS = [
    "The electric field of a point charge falls off as the inverse square.",
    "How do I compute the eigenvalues of a symmetric matrix with numpy?",
    "Energy is conserved in a closed system; momentum when no force acts.",
]


def test_sign_is_the_projection_of_the_mean_input():
    """v . mean(x) by hand: (1, -2, 0.5) . (0.5, 0.25, 2) = 0.5 - 0.5 + 1 = 1; the
    negated vector (the other arbitrary sign of the same triplet) gives -1; a
    vector of another length than the input is skipped."""
    means = {"t": np.array([0.5, 0.25, 2.0])}
    picked = [("r", "p", "t", 0, "o_proj", 1, [1.0, -2.0, 0.5]),
              ("r", "p", "t", 0, "o_proj", 2, [-1.0, 2.0, -0.5]),
              ("r", "p", "t", 0, "o_proj", 3, [1.0, 2.0])]
    rows = sign_rows(picked, means, 7)
    assert [(r["direction"], r["mean_projection"], r["sign"]) for r in rows] == [
        (1, 1.0, 1), (2, -1.0, -1)]
    assert rows[0]["n_tokens"] == 7


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_pair):
    work = tmp_path_factory.mktemp("signs")
    prompts = work / "prompts.parquet"
    pd.DataFrame({"post_id": [1, 2, 3], "site": "s", "grp": ["low", "high", "low"],
                  "post_type": "answer", "text": TEXTS}).to_parquet(prompts)
    db, out = work / "w.duckdb", work / "runs"
    run_py("-m", "compute.run", "--base", str(demo_pair / "base"), "--sft",
           str(demo_pair / "sft"), "--name", "planted", "--prompts", str(prompts),
           "--window", "128", "--vectors", "4", "--no-progress", "--device", "cpu",
           "--out", str(out), "--db", str(db))
    return db, out / "planted", demo_pair


def test_signs_against_a_hooked_forward_pass(run):
    """Each post fits one window: the scored inputs are [prefix, ids][:-1]. The mean
    over them of o_proj's input (a pre-hook here) and of the one-hot tokens
    (embed_tokens: v[id]) dotted with the stored v gives the stored projection."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    _, run_dir, pair = run
    signs = pd.read_parquet(run_dir / "directions" / "signs.parquet")
    vectors = pd.concat(pd.read_parquet(f) for f in sorted(
        (run_dir / "directions" / "vectors").glob("*.parquet")))
    assert {"o_proj", "down_proj", "embed_tokens"} <= set(signs["module"])
    tok = PreTrainedTokenizerFast.from_pretrained(str(pair / "sft"))
    model = AutoModelForCausalLM.from_pretrained(str(pair / "sft"),
                                                 dtype=torch.float32).eval()
    prefix = tok.convert_tokens_to_ids("<|endoftext|>")
    seqs = [[prefix, *tok(t, add_special_tokens=False)["input_ids"]] for t in TEXTS]
    caught: list[torch.Tensor] = []
    layer0 = model.model.layers[0].self_attn.o_proj
    handle = layer0.register_forward_pre_hook(
        lambda _m, args: caught.append(args[0][0, :-1].double()))
    with torch.inference_mode():
        for s in seqs:
            model(input_ids=torch.tensor([s]))
    handle.remove()
    mean_x = torch.cat(caught).mean(0).numpy()
    inputs = np.concatenate([s[:-1] for s in seqs])
    assert (signs["n_tokens"] == len(inputs)).all()
    for tensor, side, ref in (
            ("model.layers.0.self_attn.o_proj.weight", "right", lambda v: v @ mean_x),
            ("model.embed_tokens.weight", "left", lambda v: v[inputs].mean())):
        for row in signs[signs["tensor"] == tensor].itertuples():
            v = vectors[(vectors["tensor"] == tensor) & (vectors["role"] == "delta")
                        & (vectors["side"] == side) & (vectors["k"] == row.direction)]
            want = ref(np.asarray(v["vector"].iloc[0], dtype=np.float64))
            assert row.mean_projection == pytest.approx(want, rel=1e-4, abs=1e-7)
            assert row.sign == np.sign(want)


def test_mart_names_the_promoted_pole_by_the_sign(run):
    db, _, _ = run
    run_dbt(db, "build", "--quiet", "--select", "+fct_direction_tokens")
    rows = query(db, "select t.pole, t.effect, s.sign from marts.fct_direction_tokens t"
                 " join raw.direction_signs s using (run_id, tensor, direction)"
                 " where t.kind = 'direction'")
    assert rows and {r[0] for r in rows} == {"+u", "-u"}
    for pole, effect, sign in rows:
        assert effect == ("promoted" if (pole == "+u") == (sign > 0) else "demoted")
