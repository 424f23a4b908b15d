"""WeightWatcher's ESD measures (compute/linalg/esd.py) against references that
share no code with them: SciPy for the MLE and KS steps, scikit-learn for the
kernel density, WeightWatcher itself (the bench extra) on the demo pair's
matrices, and a planted spike count."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from compute.linalg.esd import (
    MEASURES,
    _candidates,
    esd_measures,
    fit_power_law,
    mp_fit,
    triangular_kde,
)

ROOT = Path(__file__).resolve().parents[1]


def test_mle_by_hand():
    """x = 1, 2, 4 with xmin = 1: sum ln(x / 1) = 3 ln 2, so alpha = 1 + 3 / (3 ln 2)
    = 1 + 1 / ln 2; the tail's CDF at its points 0, 1/3, 2/3 against F(x) = 1 -
    x^(1 - alpha) = 1 - x^(-1/ln 2) = 1 - 1/e^(ln x / ln 2): F(1) = 0, F(2) = 1 -
    1/e, F(4) = 1 - 1/e^2; D = max(0, |0.632 - 0.333|, |0.865 - 0.667|) = 1 - 1/e
    - 1/3."""
    alphas, dists = _candidates(np.array([1.0, 2.0, 4.0]), bias_corrected=False)
    assert alphas[0] == pytest.approx(1 + 1 / math.log(2), rel=1e-14)
    assert dists[0] == pytest.approx(1 - math.exp(-1) - 1 / 3, rel=1e-12)


def _scipy_fit(x):
    """The same fit from SciPy alone: for each xmin, the Pareto MLE of the tail with
    scale fixed at xmin (pdf ~ x^-(b+1), so alpha = b + 1) and the KS statistics of
    scipy.stats.kstest; WeightWatcher's D compares the fitted CDF with the tail's
    empirical CDF j/n at its points (j = 0 .. n-1), which is max(D-, D+ - 1/n)."""
    x = np.sort(x)
    best = None
    for i in range(len(x) - 1):
        tail = x[i:]
        b, _, scale = stats.pareto.fit(tail, floc=0, fscale=x[i])
        alpha = b + 1
        dist = stats.pareto(b, scale=scale)
        d_minus = stats.kstest(tail, dist.cdf, alternative="less").statistic
        d_plus = stats.kstest(tail, dist.cdf, alternative="greater").statistic
        d = max(d_minus, d_plus - 1 / len(tail)) if alpha > 1 else 1.0
        if best is None or d < best[2]:
            best = (alpha, x[i], d)
    return best


@pytest.mark.parametrize("seed,shape", [(0, 1.5), (1, 2.5), (2, 0.7)])
def test_fit_against_scipy(seed, shape):
    """alpha, xmin and D of the KS-chosen fit equal the SciPy-only search, on
    Pareto samples with a lognormal body (a tail above a bulk, as ESDs have)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.lognormal(0, 0.3, 150), rng.pareto(shape, 60) + 2])
    alpha, xmin, d, sigma = fit_power_law(x)
    ref_alpha, ref_xmin, ref_d = _scipy_fit(x)
    assert xmin == ref_xmin
    assert alpha == pytest.approx(ref_alpha, rel=1e-9)
    assert d == pytest.approx(ref_d, rel=1e-9)
    n_tail = int(np.sum(x >= xmin))
    assert sigma == pytest.approx((alpha - 1) / math.sqrt(n_tail), rel=1e-12)


def test_fit_recovers_a_known_exponent():
    """A pure Pareto sample of density exponent 2.5 (b = 1.5): alpha within three
    of its standard errors (a 99.7% interval) of 2.5."""
    rng = np.random.default_rng(7)
    x = stats.pareto(1.5).rvs(4000, random_state=rng)
    alpha, _, _, sigma = fit_power_law(x)
    assert abs(alpha - 2.5) < 3 * sigma


def test_triangular_kde_against_sklearn():
    """The kernel density equals scikit-learn's `kernel='linear'` (exact)."""
    neighbors = pytest.importorskip("sklearn.neighbors")
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 0.5, 300)
    grid = np.linspace(0, values.max() + 0.5, 1000)
    ref = np.exp(neighbors.KernelDensity(kernel="linear", bandwidth=0.1)
                 .fit(values[:, None]).score_samples(grid[:, None]))
    np.testing.assert_allclose(triangular_kde(values, grid), ref, atol=1e-12)


def test_mp_fit_counts_planted_spikes():
    """Gaussian noise (800 x 200) has no eigenvalue above the MP edge, sigma^2
    about the eigenvalues' mean (1 after rescaling); three planted directions far
    above the bulk are three spikes."""
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((800, 200))
    ev = np.sort(np.linalg.svd(noise, compute_uv=False) ** 2)
    fit = mp_fit(ev, 4.0)
    assert fit["mp_n_spikes"] == 0
    assert fit["mp_sigma"] == pytest.approx(1.0, abs=0.1)
    u = np.linalg.qr(rng.standard_normal((800, 3)))[0]
    v = np.linalg.qr(rng.standard_normal((200, 3)))[0]
    spiked = noise + u @ np.diag([200.0, 150.0, 120.0]) @ v.T
    ev = np.sort(np.linalg.svd(spiked, compute_uv=False) ** 2)
    assert mp_fit(ev, 4.0)["mp_n_spikes"] == 3


def test_unchanged_and_tiny_spectra():
    """An all-zero dW has no ESD; two eigenvalues above 1e-5 still fit, one does
    not (alpha None, the norms still there)."""
    zero = esd_measures(np.zeros(16), 16, 32)
    assert zero["n_evals"] == 16
    assert all(zero[k] is None for k in MEASURES if k != "n_evals")
    one = esd_measures([1.0, 1e-4, 0.0], 3, 5)
    assert one["alpha"] is None and one["n_fit"] == 1
    assert one["log_spectral_norm"] == 0.0
    assert esd_measures([2.0, 1.0], 2, 5)["alpha"] is not None


def _demo_spectra(out: Path) -> list[dict]:
    """The demo pair's spectra as compute.run stores them (Gram method, fp64)."""
    demo = ROOT / "models" / "demo"
    subprocess.run([sys.executable, "-m", "compute.run", "--base", str(demo / "base"),
                    "--sft", str(demo / "sft"), "--name", "demo", "--skip-behaviour",
                    "--no-load", "--out", str(out)], check=True, cwd=ROOT,
                   capture_output=True)
    rows = pq.read_table(out / "demo" / "spectra").to_pylist()
    return [r for r in rows if r["role"] is not None]  # not the 1-D tensors' rows


@pytest.mark.slow
def test_alpha_matches_weightwatcher(tmp_path):
    """WeightWatcher 0.7.7's analyze(mp_fit=True) on the demo pair's W_base, W_sft
    and dW (as fp32 nn.Linear weights) against our measures of the spectra
    compute.run stored: every layer's alpha within its fit's standard error
    sigma / 10 (in practice to 1e-6: the stored spectra are accurate to about
    1e-8 s_1), xmin, the tail's size and the MP spike count equal, the norms to
    1e-6."""
    ww = pytest.importorskip("weightwatcher")
    import logging

    import torch
    from safetensors.torch import load_file

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    rows = _demo_spectra(tmp_path)
    base = load_file(ROOT / "models/demo/base/model.safetensors")
    sft = load_file(ROOT / "models/demo/sft/model.safetensors")
    picked = [r for r in rows if r["layer"] == 0 or r["module"] == "lm_head"]
    weights = {"base": base, "sft": sft}
    layers = []
    for r in picked:
        name = r["tensor"]
        w = (sft[name].double() - base[name].double() if r["role"] == "delta"
             else weights[r["role"]][name].double())
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
        lin.weight.data = w
        layers.append(lin)
    assert len(layers) >= 20
    df = ww.WeightWatcher(model=torch.nn.Sequential(*layers)).analyze(mp_fit=True)
    assert len(df) == len(picked)
    for r, (_, ref) in zip(picked, df.iterrows(), strict=True):
        ours = esd_measures(r["singular_values"], r["n_rows"], r["n_cols"])
        what = f"{r['tensor']} {r['role']}"
        assert abs(ours["alpha"] - ref["alpha"]) <= max(ref["sigma"] / 10, 1e-9), what
        assert ours["xmin"] == pytest.approx(ref["xmin"], rel=1e-6), what
        assert ours["n_tail"] == ref["num_pl_spikes"], what
        assert ours["mp_n_spikes"] == ref["num_spikes"], what
        for ours_key, ref_key in [("alpha_weighted", "alpha_weighted"),
                                  ("log_spectral_norm", "log_spectral_norm"),
                                  ("log_norm", "log_norm"),
                                  ("log_alpha_norm", "log_alpha_norm"),
                                  ("mp_sigma", "sigma_mp"),
                                  ("mp_bulk_max", "bulk_max")]:
            assert ours[ours_key] == pytest.approx(ref[ref_key], rel=1e-4), (
                what, ours_key)


@pytest.mark.slow
def test_marts_hold_the_fits_of_the_stored_spectra(demo_warehouse, tmp_path):
    """In the demo warehouse: one fct_matrix_esd row per raw.spectra row, each
    equal to compute.linalg.esd on that row's singular values; a layer-module
    cell's alpha is its matrix's; W_sft's alpha_change is the difference of the two
    sides' rows; a second dbt build fits nothing again and duplicates nothing."""
    import shutil

    from tests.conftest import query, run_dbt

    raw = query(demo_warehouse, """
        select run_id || '|' || tensor || '|' || role, singular_values, n_rows, n_cols
        from raw.spectra""")
    marts = {r[0]: r[1:] for r in query(demo_warehouse, """
        select matrix_key, alpha, xmin, n_tail, alpha_weighted, mp_n_spikes,
               mp_bulk_max from marts.fct_matrix_esd""")}
    assert len(marts) == len(raw) > 0
    for key, values, m, n in raw:
        ours = esd_measures(values, m, n)
        want = [ours[k] for k in ("alpha", "xmin", "n_tail", "alpha_weighted",
                                  "mp_n_spikes", "mp_bulk_max")]
        assert marts[key] == pytest.approx(want, rel=1e-12), key
    cells = query(demo_warehouse, """
        select c.sft_alpha, m.alpha, c.alpha_change, m.alpha - b.alpha
        from marts.fct_layer_module_esd as c
        join marts.fct_matrix_esd as m
            on m.pair = c.pair and m.layer = c.layer and m.module = c.module
            and m.role = 'sft'
        join marts.fct_matrix_esd as b
            on b.run_id = m.run_id and b.tensor = m.tensor and b.role = 'base'""")
    assert len(cells) == query(demo_warehouse, """
        select count(*) from raw.spectra where role = 'sft' and layer is not null
        """)[0][0]
    for sft_alpha, alpha, change, by_hand in cells:
        assert sft_alpha == pytest.approx(alpha) and change == pytest.approx(by_hand)
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(demo_warehouse, copy)
    run_dbt(copy, "build", "--quiet", "--select", "int_esd_fits+")
    assert query(copy, "select count(*) from intermediate.int_esd_fits")[0][0] == len(
        raw)
