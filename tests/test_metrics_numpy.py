"""Every metric of the weights marts, recomputed in NumPy from the raw weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.test_weights_pipeline import query, weights

LORA_RANKS = (1, 4, 8, 16, 32, 64, 128, 256)


def reference_metrics(w: np.ndarray, sigma: float | None) -> dict:
    """The README's definitions, from NumPy's float64 SVD."""
    m, n = w.shape
    s = np.linalg.svd(w, compute_uv=False)
    energy = np.cumsum(s**2)
    total = energy[-1]
    p = s / s.sum()
    p = p[p > 0]
    out = {
        "s_max": s[0],
        "s_min": s[-1],
        "frobenius_norm": math.sqrt(total),
        "stable_rank": total / s[0] ** 2,
        "effective_rank": math.exp(-(p * np.log(p)).sum()),
        "numerical_rank": int((s > s[0] * max(m, n) * 2.0**-23).sum()),
        "energy_rank_50": int(np.argmax(energy >= 0.5 * total)) + 1,
        "energy_rank_90": int(np.argmax(energy >= 0.9 * total)) + 1,
        "energy_rank_99": int(np.argmax(energy >= 0.99 * total)) + 1,
        "energy_share": {r: energy[min(r, len(s)) - 1] / total for r in LORA_RANKS},
    }
    beta = min(m, n) / max(m, n)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    out["gd_unknown_rank"] = int((s > omega * np.median(s)).sum())
    if sigma is not None:
        lam = math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1)
                                                      + math.sqrt(beta**2 + 14 * beta + 1)))
        out["mp_edge"] = sigma * (math.sqrt(m) + math.sqrt(n))
        out["gd_threshold"] = lam * math.sqrt(max(m, n)) * sigma
        out["signal_rank"] = int((s > out["gd_threshold"]).sum())
        out["mp_edge_rank"] = int((s > out["mp_edge"]).sum())
    return out


def ulp_bf16(x: np.ndarray) -> np.ndarray:
    """Spacing of bf16 numbers at x (x exact in bf16): 2^(floor(log2|x|) - 7)."""
    ax = np.abs(x)
    out = np.zeros_like(ax)
    nz = ax > 0
    out[nz] = 2.0 ** (np.floor(np.log2(ax[nz])) - 7)
    return out


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
                if key == "energy_share":
                    continue
                if key == "gd_unknown_rank" and role != "delta":
                    continue
                if key == "s_min":  # one value: the spectra's own bound, 1e-7 s_1
                    assert abs(row[key] - want) <= 1e-7 * ref["s_max"], (name, role)
                    continue
                close(row[key], want, (name, role, key))
            if role == "delta":
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
