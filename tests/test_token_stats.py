"""compute.behaviour.scoring's per-token arithmetic on small hand-made heads, against SciPy
and NumPy in float64: token_stats (log-probs of the target, both KL directions,
entropies, top-1 ids and their ranks under the other model, a vocabulary the SFT
extended, chunked LM heads, ties) and drift_sums (relative distance, cosine, squared
norms of the hidden states, summed over a row's own tokens). Seconds: `make mutate`
runs these per mutant; tests/test_token_shift.py checks whole runs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import special, stats

from compute.behaviour.scoring import drift_sums, token_stats


class Head:
    """What token_stats asks of a model: its output embedding and config."""

    def __init__(self, weight: np.ndarray, cap: float | None = None):
        self.lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.from_numpy(weight))
        self.config = SimpleNamespace(final_logit_softcapping=cap)

    def get_output_embeddings(self):
        return self.lin


def reference(wb, ws, xb, xs, targets) -> dict[str, np.ndarray]:
    """The same statistics in float64 with SciPy: log_softmax over each model's whole
    vocabulary for the target, the first V = min(Vb, Vs) ids renormalised for the
    comparison; rank = 1 + the number of ids strictly more probable."""
    lb_full = special.log_softmax(xb @ wb.T, axis=-1)
    ls_full = special.log_softmax(xs @ ws.T, axis=-1)
    v = min(wb.shape[0], ws.shape[0])
    lb = special.log_softmax(lb_full[:, :v], axis=-1)
    ls = special.log_softmax(ls_full[:, :v], axis=-1)
    pb, ps = np.exp(lb), np.exp(ls)
    top_b, top_s = lb.argmax(-1), ls.argmax(-1)
    rows = np.arange(len(targets))
    return {
        "logprob_base": lb_full[rows, targets], "logprob_sft": ls_full[rows, targets],
        "kl_sft_base": special.rel_entr(ps, pb).sum(-1),
        "kl_base_sft": special.rel_entr(pb, ps).sum(-1),
        "entropy_base": stats.entropy(pb, axis=-1),
        "entropy_sft": stats.entropy(ps, axis=-1),
        "top_id_base": top_b, "top_id_sft": top_s,
        "rank_sft_top_in_base": 1 + (lb > lb[rows, top_s][:, None]).sum(-1),
        "rank_base_top_in_sft": 1 + (ls > ls[rows, top_b][:, None]).sum(-1),
        "nonfinite_base": ~np.isfinite(lb_full).all(-1),
        "nonfinite_sft": ~np.isfinite(ls_full).all(-1)}


def run(wb, ws, xb, xs, targets, rows=None) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = token_stats(Head(wb), Head(ws), torch.from_numpy(xb).float(),
                          torch.from_numpy(xs).float(), torch.from_numpy(targets),
                          rows)
    return {k: v.numpy() for k, v in out.items()}


def check(got, want) -> None:
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        if got[k].dtype in (np.int64, np.bool_):
            np.testing.assert_array_equal(got[k], w, err_msg=k)
        else:
            np.testing.assert_allclose(got[k], w, rtol=2e-5, atol=2e-6, err_msg=k)


def weights(rng, v, h, scale):
    return (scale * rng.standard_normal((v, h))).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("vb,vs,rows", [(11, 11, None), (11, 11, 3), (9, 12, 4),
                                        (12, 9, 5)])
def test_token_stats_against_scipy(vb, vs, rows):
    """7 positions; the same vocabulary, an SFT with 3 added ids (their
    probability counts in the SFT's log-prob of the target, not in the
    comparison) or a base with 3 more; one chunk or chunks of 3, 4 and 5."""
    rng = np.random.default_rng(0)
    h, n = 5, 7
    wb = weights(rng, vb, h, 1.5)
    ws = np.vstack([wb[:min(vb, vs)] + weights(rng, min(vb, vs), h, 0.8),
                    weights(rng, vs - min(vb, vs), h, 1.5)])
    xb = weights(rng, n, h, 1.0)
    xs = (xb + weights(rng, n, h, 0.3))
    targets = rng.integers(0, min(vb, vs), n)  # ids both tokenizers give
    if vs > vb:  # an added id is the SFT's favourite at the last position
        ws[-1] = 4 * xs[-1]
    want = reference(wb, ws, xb, xs, targets)
    check(run(wb, ws, xb, xs, targets, rows), want)
    assert (want["kl_sft_base"] > 1e-3).all() and (want["kl_base_sft"] > 1e-3).all()
    assert (want["rank_sft_top_in_base"] > 1).any()


@pytest.mark.parametrize("vr,rows,cap", [(11, None, None), (11, 3, None),
                                         (11, 4, 5.0), (13, 2, None)])
def test_reference_kls_against_scipy(vr, rows, cap):
    """A third model (the Reference: a copied head, its own hidden states) against
    the scored one: KL(p_ref || p_b) and KL(p_b || p_ref) per token equal SciPy's
    rel_entr over the shared ids (renormalised), with and without a logit soft cap
    and for a reference with 2 ids more; the other statistics are unchanged. The
    head is copied: changing the model's afterwards changes nothing."""
    from compute.behaviour.scoring import Reference

    rng = np.random.default_rng(5)
    h, n, v = 5, 7, 11
    wb, ws = weights(rng, v, h, 1.5), weights(rng, v, h, 1.5)
    wr = np.vstack([wb + weights(rng, v, h, 0.7), weights(rng, vr - v, h, 1.5)])
    xb, xs, xr = (weights(rng, n, h, 1.0) for _ in range(3))
    targets = rng.integers(0, v, n)
    ref_model = Head(wr, cap)
    ref = Reference.of(ref_model, {})
    with torch.no_grad():
        ref_model.lin.weight.zero_()
    with torch.inference_mode():
        got = token_stats(Head(wb), Head(ws), torch.from_numpy(xb).float(),
                          torch.from_numpy(xs).float(), torch.from_numpy(targets),
                          rows, (ref, torch.from_numpy(xr).float()))
    got = {k: x.numpy() for k, x in got.items()}
    logits = xr @ wr.T
    if cap:
        logits = np.tanh(logits / cap) * cap
    lr = special.log_softmax(special.log_softmax(logits, axis=-1)[:, :v], axis=-1)
    lb = special.log_softmax(xb @ wb.T, axis=-1)
    np.testing.assert_allclose(got["kl_ref_base"],
                               special.rel_entr(np.exp(lr), np.exp(lb)).sum(-1),
                               rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got["kl_base_ref"],
                               special.rel_entr(np.exp(lb), np.exp(lr)).sum(-1),
                               rtol=2e-5, atol=2e-6)
    assert (got["kl_ref_base"] > 1e-3).all()
    check({k: x for k, x in got.items() if k not in ("kl_ref_base", "kl_base_ref")},
          reference(wb, ws, xb, xs, targets))


@pytest.mark.parametrize("rows", [None, 2])
def test_token_stats_flags_positions_whose_logits_are_not_finite(rows):
    """A base hidden state with an Inf entry at position 2 and a NaN at position 5
    (what NaN/Inf weights upstream give): those positions' base logits are not all
    finite; their base log-probs are NaN and flagged, the SFT's are scored as usual,
    and the comparison of the two models there is NaN (floats) and -1 (ids, ranks).
    Every other position is exactly the SciPy reference's."""
    rng = np.random.default_rng(3)
    h, n, v = 5, 7, 11
    wb, ws = weights(rng, v, h, 1.5), weights(rng, v, h, 1.5)
    xb, xs = weights(rng, n, h, 1.0), weights(rng, n, h, 1.0)
    xb[2, 1], xb[5, 3] = np.inf, np.nan
    targets = rng.integers(0, v, n)
    got = run(wb, ws, xb, xs, targets, rows)
    bad = np.isin(np.arange(n), [2, 5])
    np.testing.assert_array_equal(got["nonfinite_base"], bad)
    assert not got["nonfinite_sft"].any()
    assert np.isnan(got["logprob_base"][bad]).all()
    assert np.isfinite(got["logprob_sft"]).all()
    for k in ("kl_sft_base", "kl_base_sft", "entropy_base", "entropy_sft"):
        assert np.isnan(got[k][bad]).all(), k
    for k in ("top_id_base", "top_id_sft", "rank_sft_top_in_base",
              "rank_base_top_in_sft"):
        assert (got[k][bad] == -1).all(), k
    with np.errstate(invalid="ignore"):
        want = reference(wb, ws, xb, xs, targets)
    check({k: x[~bad] for k, x in got.items()}, {k: w[~bad] for k, w in want.items()})
    np.testing.assert_allclose(got["logprob_sft"][bad], want["logprob_sft"][bad],
                               rtol=2e-5)


def test_drift_sums_leave_out_states_that_are_not_finite():
    """Position 1's SFT state has a NaN at the second index only: drift_sums there
    are those of positions 0 and 2 (against NumPy on them alone), drift_counts 2;
    at the first index all three tokens count."""
    from compute.behaviour.scoring import drift_counts

    rng = np.random.default_rng(4)
    hb = [hidden(rng, (1, 3, 4)) for _ in range(2)]
    hs = [b + hidden(rng, (1, 3, 4), 0.5) for b in hb]
    hs[1][0, 1, 2] = float("nan")
    own = torch.ones(1, 3, dtype=torch.bool)
    got = drift_sums(tuple(hb), tuple(hs), own)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(drift_counts(tuple(hb), tuple(hs), own), [[3, 2]])
    keep = torch.tensor([[True, False, True]])
    np.testing.assert_allclose(got[0, 1], drift_sums((hb[1],), (hs[1].nan_to_num(),),
                                                     keep)[0, 0], rtol=1e-12)
    np.testing.assert_allclose(got[0, 0], drift_sums((hb[0],), (hs[0],), own)[0, 0],
                               rtol=1e-12)


def test_token_stats_ranks_count_strictly_higher_ids():
    """Ties under the other model: ids 2 and 3 have the same base logits; the SFT's
    top id is 3, so its base rank is 1 + the ids strictly above it (id 2 is not);
    identical models: KL 0 and every rank 1."""
    w = np.diag([1.0, 2.0, 5.0, 5.0, 0.5])[:, :4].copy()  # (5, 4)
    w[3] = w[2]
    ws = w.copy()
    ws[3] = [0.0, 0.0, 0.0, 30.0]
    x = np.array([[0.1, 0.2, 1.0, 0.3], [0.5, 0.1, 0.2, 0.0]])
    targets = np.array([3, 0])
    want = reference(w, ws, x, x, targets)
    got = run(w, ws, x, x, targets)
    check(got, want)
    assert got["top_id_sft"][0] == 3 and got["rank_sft_top_in_base"][0] == 1
    assert got["top_id_base"][0] == 2 and got["rank_base_top_in_sft"][0] == 2
    same = run(w, w, x, x, targets)
    np.testing.assert_array_equal(same["kl_sft_base"], 0.0)
    np.testing.assert_array_equal(same["kl_base_sft"], 0.0)
    np.testing.assert_array_equal(same["rank_sft_top_in_base"], 1)
    np.testing.assert_array_equal(same["rank_base_top_in_sft"], 1)


def test_token_stats_kl_is_never_negative():
    """Two near-identical peaked distributions: rounding could make a KL sum a
    hair below 0; it is clamped to 0."""
    rng = np.random.default_rng(5)
    w = weights(rng, 64, 8, 30.0)
    x = weights(rng, 40, 8, 1.0)
    ws = w + 1e-7
    got = run(w, ws, x, x, np.zeros(40, dtype=np.int64))
    assert (got["kl_sft_base"] >= 0).all() and (got["kl_base_sft"] >= 0).all()
    assert got["kl_sft_base"].max() < 1e-5


def hidden(rng, shape, scale=1.0) -> torch.Tensor:
    return torch.from_numpy(scale * rng.standard_normal(shape)).float()


def test_drift_sums_against_numpy():
    """3 hidden-state layers of 2 rows x 5 tokens x 6 dims; each row sums its own
    tokens only (the mask), per layer: ||d|| / ||h_b||, cos(h_s, h_b), ||d||^2 and
    ||h_b||^2 with d = h_s - h_b. A token whose two hidden states are both zero (a
    padded one) adds nothing and makes nothing NaN."""
    rng = np.random.default_rng(2)
    hb = [hidden(rng, (2, 5, 6)) for _ in range(3)]
    hs = [b + hidden(rng, (2, 5, 6), 0.4 * (i + 1)) for i, b in enumerate(hb)]
    hb[1][1, 4] = 0.0
    hs[1][1, 4] = 0.0
    own = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    got = drift_sums(tuple(hb), tuple(hs), own)
    assert got.shape == (2, 3, 4) and got.dtype == np.float64
    w = own.numpy()
    for layer, (b, s) in enumerate(zip(hb, hs, strict=True)):
        b, s = b.double().numpy(), s.double().numpy()
        d = s - b
        nb = np.linalg.norm(b, axis=-1)
        ns = np.linalg.norm(s, axis=-1)
        nd = np.linalg.norm(d, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(nb > 0, nd / nb, 0.0)
            cos = np.where(nb * ns > 0, (b * s).sum(-1) / (nb * ns), 0.0)
        for row in range(2):
            m = w[row]
            want = [rel[row][m].sum(), cos[row][m].sum(), (nd[row][m] ** 2).sum(),
                    (nb[row][m] ** 2).sum()]
            np.testing.assert_allclose(got[row, layer], want, rtol=1e-5)
    assert np.isfinite(got).all()


def test_drift_sums_zero_base_state_and_identical_states():
    """A token whose base state is 0 and SFT state is not: an infinite relative
    distance (not NaN), cosine 0; identical states: distance 0, cosine 1."""
    hb, hs = torch.zeros(1, 1, 3), torch.tensor([[[3.0, 4.0, 0.0]]])
    got = drift_sums((hb,), (hs,), torch.tensor([[True]]))[0, 0]
    assert got[0] == np.inf
    assert got[1] == 0.0 and got[2] == pytest.approx(25.0) and got[3] == 0.0
    hb = hs = torch.tensor([[[1e-3, 2.0, -7.0]]])
    got = drift_sums((hb,), (hs,), torch.tensor([[True]]))[0, 0]
    assert got[0] == 0.0 and got[1] == pytest.approx(1.0, abs=1e-12)
    assert got[1] <= 1.0 and got[2] == 0.0
    assert got[3] == pytest.approx(1e-6 + 4 + 49, rel=1e-6)
    # opposed states, h_s = -2 h_b: distance 3 ||h_b||, cosine -1 (never below it),
    # and one at right angles: cosine 0; the row sums both
    hb = torch.tensor([[[1.0, 2.0, -2.0], [0.0, 3.0, 0.0]]])
    hs = torch.tensor([[[-2.0, -4.0, 4.0], [5.0, 0.0, 0.0]]])
    got = drift_sums((hb,), (hs,), torch.tensor([[True, False]]))[0, 0]
    assert got[0] == pytest.approx(3.0) and got[1] == pytest.approx(-1.0, abs=1e-12)
    assert got[1] >= -1.0 and got[2] == pytest.approx(81.0) and got[3] == 9.0
    got = drift_sums((hb,), (hs,), torch.tensor([[True, True]]))[0, 0]
    assert got[1] == pytest.approx(-1.0, abs=1e-12)
    assert got[0] == pytest.approx(3.0 + 34 ** 0.5 / 3)
