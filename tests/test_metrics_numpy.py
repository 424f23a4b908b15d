"""Every metric of the weights marts, recomputed in NumPy from the raw weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tests.references import gd_lambda, gd_omega
from tests.test_weights_pipeline import query, weights

LORA_RANKS = (1, 4, 8, 16, 32, 64, 128, 256)


def energy_ranks(w: np.ndarray, u: np.ndarray, s: np.ndarray, vt: np.ndarray,
                 qs=(0.5, 0.9, 0.99)) -> dict[float, int]:
    """Smallest r whose best rank-r approximation (Eckart-Young: the truncated SVD
    u, s, vt of w) keeps a share q of ||W||_F^2, found by bisection on the residual's
    entries."""
    total = np.square(w).sum()

    def kept(r):
        return 1 - np.square(w - (u[:, :r] * s[:r]) @ vt[:r]).sum() / total

    out = {}
    for q in qs:
        lo, hi = 1, len(s)  # kept(hi) = 1 >= q
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if kept(mid) >= q - 1e-12 else (mid + 1, hi)
        out[q] = lo
    return out


def reference_metrics(w: np.ndarray, sigma: float | None) -> dict:
    """Each metric from a source other than the README's formula where one exists:
    norms of the entries, SciPy's entropy, NumPy's matrix_rank, the rank-r
    reconstructions' energy, the Gavish-Donoho constants derived in
    tests/references.py."""
    m, n = w.shape
    spectral, frobenius = np.linalg.norm(w, 2), np.linalg.norm(w, "fro")
    u, s, vt = np.linalg.svd(w, full_matrices=False)  # one SVD for what needs one
    ranks = energy_ranks(w, u, s, vt)
    out = {
        "s_max": spectral,
        "s_min": s[-1],
        "frobenius_norm": frobenius,
        "stable_rank": frobenius**2 / spectral**2,
        "effective_rank": math.exp(stats.entropy(s)),
        "numerical_rank": int(np.linalg.matrix_rank(
            w, rtol=max(m, n) * np.finfo(np.float32).eps)),
        "energy_rank_50": ranks[0.5],
        "energy_rank_90": ranks[0.9],
        "energy_rank_99": ranks[0.99],
        "energy_share": {r: np.square((u[:, :r] * s[:r]) @ vt[:r]).sum() / frobenius**2
                         for r in LORA_RANKS},
    }
    beta = min(m, n) / max(m, n)
    out["omega"] = gd_omega(beta)
    out["singular_values"] = s
    if sigma is not None:
        out["mp_edge"] = sigma * (math.sqrt(m) + math.sqrt(n))
        out["gd_threshold"] = gd_lambda(beta) * math.sqrt(max(m, n)) * sigma
        out["signal_rank"] = int((s > out["gd_threshold"]).sum())
        out["mp_edge_rank"] = int((s > out["mp_edge"]).sum())
    return out


def ulp_bf16(x: np.ndarray) -> np.ndarray:
    """Spacing of bf16 numbers at x (x exact in bf16): float32's spacing times 2^16
    (bf16 keeps 7 of float32's 23 mantissa bits); 0 at 0, as the noise model has it."""
    x32 = np.abs(x).astype(np.float32)
    return np.where(x32 > 0, np.spacing(x32).astype(np.float64) * 2.0**16, 0.0)


@pytest.fixture(scope="module")
def marts(demo_warehouse):
    metrics = query(demo_warehouse, "from marts.fct_matrix_metrics")
    lora = query(demo_warehouse, "from marts.fct_lora_fit")
    return metrics.set_index(["tensor", "role"]), lora.set_index(["tensor", "lora_rank"])


def close(got, want, what):
    if isinstance(want, int):
        assert got == want, what
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-300), what


def test_every_metric_matches_numpy(marts, demo_pair):
    metrics, lora = marts
    base, sft = weights(demo_pair / "base"), weights(demo_pair / "sft")
    matrices = [k for k, v in base.items() if v.ndim == 2]
    assert len(metrics) == 3 * len(matrices)
    for name in matrices:
        b, s = base[name], sft[name]
        d = s - b
        sigma = math.sqrt(np.mean((ulp_bf16(b) ** 2 + ulp_bf16(s) ** 2) / 12))
        refs = {"base": reference_metrics(b, None), "sft": reference_metrics(s, None),
                "delta": reference_metrics(d, sigma)}
        for role, ref in refs.items():
            row = metrics.loc[(name, role)]
            for key, want in ref.items():
                if key in ("energy_share", "omega", "singular_values"):
                    continue
                if key == "s_min":  # one value: the spectra's own bound, 1e-7 s_1
                    assert abs(row[key] - want) <= 1e-7 * ref["s_max"], (name, role)
                    continue
                close(row[key], want, (name, role, key))
            if role == "delta":
                sv = ref["singular_values"]
                threshold = ref["omega"] * np.median(sv)
                # the mart's omega is the paper's cubic fit: within 0.6% of omega
                assert row["gd_unknown_threshold"] == pytest.approx(threshold, rel=6e-3)
                if not np.any(np.abs(sv / threshold - 1) < 6e-3):
                    assert row["gd_unknown_rank"] == int((sv > threshold).sum()), name
                close(row["noise_sigma"], sigma, (name, "sigma"))
                close(row["zero_fraction"], float(np.mean(d == 0)), (name, "zeros"))
                for r, share in ref["energy_share"].items():
                    close(lora.loc[(name, r)]["energy_share"], share, (name, r))
        rb, rd = refs["base"], refs["delta"]
        row = metrics.loc[(name, "delta")]
        close(row["relative_frobenius_change"],
              rd["frobenius_norm"] / rb["frobenius_norm"], (name, "rel frob"))
        close(row["relative_spectral_change"], rd["s_max"] / rb["s_max"],
              (name, "rel spectral"))
        for notion in ("stable_rank", "effective_rank", "numerical_rank",
                       "energy_rank_50", "energy_rank_90", "energy_rank_99"):
            close(row[f"relative_{notion}"], rd[notion] / rb[notion], (name, notion))
        close(row["relative_signal_rank"], rd["signal_rank"] / rb["numerical_rank"],
              (name, "rel signal"))


def test_layer_module_grid_and_pair_summary(demo_warehouse, demo_pair):
    grid = query(demo_warehouse, "from marts.fct_layer_module_metrics")
    n_layers = 6
    assert len(grid) == n_layers * 7
    assert sorted(grid.depth.unique()) == pytest.approx(
        [k / n_layers for k in range(n_layers)])
    summary = query(demo_warehouse, "from marts.fct_pair_summary").set_index("module")
    for module, cells in grid.groupby("module"):
        assert summary.loc[module, "median_relative_frobenius_change"] == pytest.approx(
            float(np.median(cells.relative_frobenius_change)), rel=1e-12)
        assert summary.loc[module, "q1_delta_signal_rank"] == pytest.approx(
            float(np.quantile(cells.delta_signal_rank, 0.25)))
    # the demo plants larger ranks in q/k: the summary must say so
    assert summary.loc["q_proj", "suggested_lora_rank"] > summary.loc[
        "v_proj", "suggested_lora_rank"]
