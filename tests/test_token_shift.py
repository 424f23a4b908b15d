"""Per-token KL, entropies, top-1 ids and ranks (raw.token_shift) of
compute/behaviour/scoring.py against full logits of plain transformers forward passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from compute.behaviour.scoring import run_behaviour

try:
    from tests import behaviour_helpers as H
except ImportError:  # tests/ itself is on sys.path (no package)
    import behaviour_helpers as H

one_thread = H.one_thread  # autouse: tiny models run on one thread
TOL = 1e-4
FLOATS = ["kl_sft_base", "kl_base_sft", "entropy_base", "entropy_sft"]
INTS = ["rank_sft_top_in_base", "rank_base_top_in_sft", "top_id_base", "top_id_sft"]


def sharpen(folder: Path, scale: float, noise: float, seed: int) -> None:
    """lm_head <- scale * lm_head + noise * N(0, 1): peaked next-token distributions
    (the tiny pair's are nearly uniform), and a SFT head that disagrees often."""
    path = folder / "model.safetensors"
    w = load_file(str(path))
    gen = torch.Generator().manual_seed(seed)
    head = w["lm_head.weight"]
    w["lm_head.weight"] = scale * head + noise * torch.randn(
        head.shape, generator=gen, dtype=head.dtype)
    save_file(w, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def sharp(tmp_path_factory) -> tuple[Path, Path]:
    base, sft = H.pair(tmp_path_factory.mktemp("sharp") / "pair")
    sharpen(base, 60.0, 0.0, 1)
    sharpen(sft, 60.0, 0.6, 2)
    return base, sft


def score(pair, out, prompts, **kw) -> pd.DataFrame:
    kw = {"run_id": "s1", "pair": "tiny", "progress": False} | kw
    run_behaviour(*pair, prompts, out, **kw)
    return H.read(out, "token_shift").sort_values(["post_id", "position"],
                                                  ignore_index=True)


class FullLogits:
    """Both models' full next-token log-distributions, one sequence at a time,
    from the models' own forward pass (fp32), reduced here in float64."""

    def __init__(self, pair):
        self.base, self.sft = H.Reference(pair[0]), H.Reference(pair[1])

    @torch.inference_mode()
    def stats(self, inputs: list[int]) -> pd.DataFrame:
        """Per input j (predicting inputs[j + 1]) for j = 0 .. len - 2."""
        x = torch.tensor([inputs])
        lb = torch.log_softmax(self.base.model(input_ids=x).logits[0, :-1].double(), -1)
        ls = torch.log_softmax(self.sft.model(input_ids=x).logits[0, :-1].double(), -1)
        lb, ls = lb.numpy(), ls.numpy()  # (T - 1, V)
        pb, ps = np.exp(lb), np.exp(ls)
        top_b, top_s = lb.argmax(1), ls.argmax(1)
        # rank of a token = 1 + how many tokens the other model ranks strictly above
        rank = [(1 + np.sum(lb[i] > lb[i, top_s[i]]), 1 + np.sum(ls[i] > ls[i, top_b[i]]))
                for i in range(len(lb))]
        return pd.DataFrame({
            "kl_sft_base": np.sum(ps * (ls - lb), 1),
            "kl_base_sft": np.sum(pb * (lb - ls), 1),
            "entropy_base": -np.sum(pb * lb, 1), "entropy_sft": -np.sum(ps * ls, 1),
            "rank_sft_top_in_base": [r[0] for r in rank],
            "rank_base_top_in_sft": [r[1] for r in rank],
            "top_id_base": top_b, "top_id_sft": top_s})

    def post(self, text: str) -> pd.DataFrame:
        return self.stats([self.base.eos, *self.base.ids(text)])


def check_against(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(got) == len(want)
    for c in FLOATS:
        np.testing.assert_allclose(got[c].to_numpy(), want[c].to_numpy(), atol=TOL,
                                   rtol=0, err_msg=c)
    # top-1 and ranks: equal wherever the top two are not within rounding of a tie
    for c in INTS:
        same = got[c].to_numpy() == want[c].to_numpy()
        assert same.mean() > 0.99, (c, same.mean())


def test_shift_equals_full_logits_reference(sharp, tmp_path):
    prompts = H.prompts(7, first=3)
    got = score(sharp, tmp_path, prompts, batch_size=3, window=512, chunk_rows=37)
    ref = FullLogits(sharp)
    for post_id, text in zip(prompts.post_id, prompts.text, strict=True):
        rows = got[got.post_id == post_id].reset_index(drop=True)
        assert rows["position"].tolist() == list(range(len(ref.base.ids(text))))
        want = ref.post(text)
        check_against(rows, want)
        texts = [ref.base.tok.decode([i]) for i in rows["top_id_sft"]]
        assert rows["top_text_sft"].tolist() == texts
    # the case is not trivial: the pair disagrees, and some tokens are shifted
    assert got["kl_sft_base"].mean() > 0.05
    assert 0.02 < (got["rank_sft_top_in_base"] > 3).mean() < 0.9
    assert (got["entropy_base"] < 0.8 * np.log(512)).mean() > 0.5
    assert (got["kl_sft_base"] != got["kl_base_sft"]).any()  # KL is not symmetric


def test_identical_models_no_kl_no_shift(tmp_path):
    pair = H.equal_pair(tmp_path / "eq")
    got = score(pair, tmp_path / "out", H.prompts(5), batch_size=2, window=64,
                context=16)
    assert len(got) > 100
    assert (got["kl_sft_base"] == 0).all() and (got["kl_base_sft"] == 0).all()
    assert (got["rank_sft_top_in_base"] == 1).all()
    assert (got["rank_base_top_in_sft"] == 1).all()
    assert (got["top_id_base"] == got["top_id_sft"]).all()
    np.testing.assert_array_equal(got["entropy_base"], got["entropy_sft"])


def test_chunks_and_windows_change_nothing(sharp, tmp_path):
    prompts = H.prompts(3, first=40, id0=7)
    prompts.loc[0, "text"] = " ".join(H.texts(6, first=50))  # several windows long
    one = score(sharp, tmp_path / "a", prompts, batch_size=2, window=32, context=8)
    many = score(sharp, tmp_path / "b", prompts, batch_size=2, window=32, context=8,
                 chunk_rows=5)
    pd.testing.assert_frame_equal(one[["post_id", "position", *INTS]],
                                  many[["post_id", "position", *INTS]])
    # the same up to fp32 rounding (BLAS sums a 5-row matmul in another order)
    np.testing.assert_allclose(one[FLOATS].to_numpy(), many[FLOATS].to_numpy(),
                               atol=1e-6, rtol=1e-5)
    # windows score each token once, each with its window's context
    ref = FullLogits(sharp)
    window, context = 32, 8
    for post_id, text in zip(prompts.post_id, prompts.text, strict=True):
        s = [ref.base.eos, *ref.base.ids(text)]
        rows = many[many.post_id == post_id].reset_index(drop=True)
        assert rows["position"].tolist() == list(range(len(s) - 1))
        first, end, n_windows = 1, min(window, len(s)), 0
        while True:  # the windows as docs/behaviour.md describes them
            start = 0 if first == 1 else first - context
            want = ref.stats(s[start:end])[first - start - 1:].reset_index(drop=True)
            check_against(rows.iloc[first - 1:end - 1].reset_index(drop=True), want)
            n_windows += 1
            if end == len(s):
                break
            first, end = end, min(end - context + window, len(s))
        assert n_windows >= (4 if post_id == 7 else 1)
