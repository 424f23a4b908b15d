"""WeightWatcher's measures of a weight matrix's empirical spectral density (ESD),
from its stored singular values: no second pass over the weights.

    from compute.linalg.esd import esd_measures
    esd_measures(singular_values, n_rows, n_cols)   # a dict, one value per measure

The dbt model `int_esd_fits` calls this on every spectrum of `raw.spectra`
(docs/esd.md). The definitions follow WeightWatcher 0.7.7's defaults (`analyze()`
with `mp_fit=True`), written here from its documented method; the tests compare
the numbers with WeightWatcher's own on the same matrices:

- eigenvalues lambda_i = s_i^2 of W^T W, W as stored (WeightWatcher no longer
  normalises W by default since 0.6.5); the min(m, n) values of the short side;
- power law p(lambda) ~ lambda^-alpha above xmin: for each candidate xmin (every
  eigenvalue above 1e-5 but the largest) the continuous maximum-likelihood
  exponent alpha = 1 + n / sum(ln(lambda_j / xmin)) over the n values >= xmin, and
  the Kolmogorov-Smirnov distance D = max_j |F(lambda_j) - j / n| between the
  fitted CDF F(x) = 1 - (x / xmin)^(1 - alpha) and the tail's empirical CDF at its
  points (j = 0 .. n-1, ascending); xmin is the candidate of the smallest D (Clauset,
  Shalizi & Newman 2009). Below 20 values WeightWatcher switches to a small-sample
  rule, reproduced here: alpha = 1 + (n - 1) / sum(...), D over tails of at least
  8 values;
- alpha-weighted = alpha log10(lambda_max); log spectral norm log10(lambda_max); log
  norm log10(sum lambda); log alpha-norm log10(sum lambda^alpha);
- Marchenko-Pastur bulk: the eigenvalues rescaled to mean 1, a triangular-kernel
  density (bandwidth 0.1) on 1000 points, the MP density of aspect ratio
  Q = long / short side (a quarter circle on the singular values when Q = 1)
  fitted by least squares over sigma (a grid 0.05 .. 2 times the sigma that puts
  the edge at lambda_max, then Nelder-Mead); bulk edge lambda_+ = (sigma (1 +
  1 / sqrt(Q)))^2, spikes = eigenvalues above lambda_+ plus a Tracy-Widom margin.
"""

from __future__ import annotations

import math

import numpy as np

# WeightWatcher's constants (weightwatcher/constants.py, WW_powerlaw.py, RMT_Util.py)
EVALS_THRESH = 1e-5  # eigenvalues at or below it are left out of the power-law fit
SMALL_N = 20  # below this many eigenvalues, the small-sample fit
SMALL_N_MIN_TAIL = 8
KDE_BANDWIDTH = 0.1
KDE_POINTS = 1000
KDE_FLOOR = 0.01  # density points below it are left out of the MP residual
BAD_FIT = 1000.0  # the residual of a sigma whose bulk misses the density's peak

MEASURES = ("n_evals", "n_fit", "alpha", "xmin", "ks_distance", "alpha_sigma",
            "n_tail", "lambda_max", "log_norm", "log_spectral_norm",
            "alpha_weighted", "log_alpha_norm", "mp_sigma", "mp_bulk_max",
            "mp_bulk_min", "mp_n_spikes", "mp_softrank")


def esd_measures(singular_values, n_rows: int, n_cols: int) -> dict[str, float | None]:
    """Every ESD measure of one matrix from its singular values (any order).

    An all-zero or empty spectrum (an unchanged dW) has none: every measure but
    `n_evals` is None. A fit that fails (fewer than 2 eigenvalues above 1e-5) leaves
    alpha and what depends on it None. The MP fit works on the eigenvalues
    rescaled to mean 1 (sigma and the spikes do not depend on W's scale); its bulk
    edges are given in the units of lambda, as WeightWatcher reports them."""
    s = np.asarray(singular_values, dtype=np.float64)
    evals = np.sort(s * s)
    out: dict[str, float | None] = dict.fromkeys(MEASURES)
    out["n_evals"] = len(evals)
    if len(evals) == 0 or not np.all(np.isfinite(evals)) or evals[-1] <= 0:
        return out
    total = float(evals.sum())
    lam_max = float(evals[-1])
    out.update(lambda_max=lam_max, log_norm=math.log10(total),
               log_spectral_norm=math.log10(lam_max))
    fit_data = evals[evals > EVALS_THRESH]
    out["n_fit"] = len(fit_data)
    fit = fit_power_law(fit_data)
    if fit is not None:
        alpha, xmin, dist, sigma = fit
        out.update(alpha=alpha, xmin=xmin, ks_distance=dist, alpha_sigma=sigma,
                   n_tail=int(np.count_nonzero(evals >= xmin)),
                   alpha_weighted=alpha * math.log10(lam_max),
                   log_alpha_norm=math.log10(float(np.sum(evals ** alpha))))
    long_side, short_side = max(n_rows, n_cols), min(n_rows, n_cols)
    out.update(mp_fit(evals, long_side / short_side))
    return out


def fit_power_law(x) -> tuple[float, float, float, float] | None:
    """(alpha, xmin, D, sigma) of the power-law fit of positive values `x`, xmin by
    the smallest KS distance (WeightWatcher's fit; the small-sample rule below
    20 values); sigma = (alpha - 1) / sqrt(n), n the tail's size. None when it
    fails: fewer than 2 values, or no finite alpha."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    if len(x) < 2:
        return None
    if len(x) < SMALL_N:
        alphas, dists, pick = _small_sample(x)
    else:
        alphas, dists = _candidates(x, bias_corrected=False)
        pick = int(np.argmin(dists))
    alpha = float(alphas[pick])
    if not math.isfinite(alpha):
        return None
    sigma = (alpha - 1) / math.sqrt(len(x) - pick)
    return alpha, float(x[pick]), float(dists[pick]), sigma


def _candidates(x: np.ndarray, bias_corrected: bool,
                block_elems: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """The MLE alpha and KS distance D for xmin = each of x[0 .. N-2] (x ascending).
    D is 1 where alpha <= 1 (no proper power law). Blocks of candidates keep the
    (candidates, values) array under `block_elems` elements."""
    n_all = len(x)
    logx = np.log(x)
    cand = np.arange(n_all - 1)
    n_tail = (n_all - cand).astype(np.float64)
    suffix = np.cumsum(logx[::-1])[::-1]  # sum of logx[i:]
    log_sum = suffix[:-1] - n_tail * logx[:-1]  # sum ln(x_j / x_i), j >= i
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1 + (n_tail - 1 if bias_corrected else n_tail) / log_sum
    dists = np.ones(n_all - 1)
    block = max(1, block_elems // n_all)
    for start in range(0, n_all - 1, block):
        rows = cand[start:start + block]
        cols = np.arange(start, n_all)
        # (rows, cols): ln(x_j / x_i) and the tail's empirical CDF (j - i) / n_i
        dlog = logx[None, cols] - logx[rows, None]
        rank = (cols[None, :] - rows[:, None]).astype(np.float64)
        a = alphas[rows, None]
        with np.errstate(over="ignore", invalid="ignore"):
            gap = np.abs(1 - np.exp((1 - a) * dlog) - rank / n_tail[rows, None])
        gap[rank < 0] = 0.0  # values below this xmin
        d = np.max(gap, axis=1)
        ok = alphas[rows] > 1
        dists[rows[ok]] = d[ok]
    return alphas, dists


def _small_sample(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """WeightWatcher's fit below 20 values: the bias-corrected alpha = 1 + (n - 1) /
    sum(ln(x_j / xmin)), a KS distance only for tails of at least 8 values with a
    proper exponent (D = 1 elsewhere), xmin of the smallest D (WeightWatcher 0.7.7
    scores each tail by D - 0.868 / sqrt(n) too, then keeps the smallest D: that
    is what it reports). Returns (alphas, D, the chosen index); alpha NaN when
    every value is equal."""
    alphas, dists = _candidates(x, bias_corrected=True)
    n_tail = len(x) - np.arange(len(x) - 1)
    logx = np.log(x)
    spread = np.cumsum(logx[::-1])[::-1][:-1] - n_tail * logx[:-1]
    valid = (n_tail >= SMALL_N_MIN_TAIL) & (spread > 1e-12) & (alphas > 1)
    if spread[0] <= 1e-12:  # every value equal: no exponent
        return np.array([np.nan]), np.array([1.0]), 0
    if not valid.any():  # too few values for a tail of 8: all of them
        return alphas, dists, 0
    dists = np.where(valid, dists, 1.0)
    return alphas, dists, int(np.argmin(dists))


def triangular_kde(values: np.ndarray, grid: np.ndarray,
                   bandwidth: float = KDE_BANDWIDTH) -> np.ndarray:
    """Density of `values` on `grid` with the triangular (linear) kernel
    K(u) = max(0, 1 - |u| / h) / h, exactly (scikit-learn's `kernel='linear'`)."""
    values = np.sort(values)
    dens = np.zeros(len(grid))
    step = max(1, (1 << 22) // max(len(values), 1))
    for start in range(0, len(grid), step):
        g = grid[start:start + step, None]
        dens[start:start + step] = np.maximum(
            0.0, 1 - np.abs(g - values[None, :]) / bandwidth).sum(axis=1)
    return dens / (len(values) * bandwidth)


def _mp_density(x: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """The Marchenko-Pastur density of eigenvalues, aspect ratio q >= 1 and scale
    sigma; the quarter circle of singular values when q = 1; 0 outside the bulk."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if q == 1:
            val = np.sqrt(4 - x * x) / (math.pi * sigma * sigma)
        else:
            y = 1 / q
            hi = (sigma * (1 + math.sqrt(y))) ** 2
            lo = (sigma * (1 - math.sqrt(y))) ** 2
            val = np.sqrt((hi - x) * (x - lo)) / (2 * math.pi * sigma * sigma * x * y)
    return np.nan_to_num(val)


def _mp_residual(sigma, grid, dens, q) -> float:
    """Sum of squared differences between the MP density and the kernel density on
    the grid points where the latter exceeds 0.01; BAD_FIT per point when the bulk
    edge falls outside the grid or misses the density's peak."""
    sigma = float(np.atleast_1d(sigma)[0])
    if q == 1:
        resid = _mp_density(grid, q, sigma) - dens
    else:
        peak = grid[int(np.argmax(dens))]
        hi = (sigma * (1 + math.sqrt(1 / q))) ** 2
        lo = (sigma * (1 - math.sqrt(1 / q))) ** 2
        if hi < peak or hi > grid[-1] or lo > peak:
            return BAD_FIT * BAD_FIT * len(dens)
        resid = _mp_density(grid, q, sigma) - dens
    return float(np.sum(resid * resid))


def mp_fit(evals: np.ndarray, q: float, m: int | None = None
           ) -> dict[str, float | None]:
    """Marchenko-Pastur fit of eigenvalues `evals` (ascending, not all zero) of a
    matrix with aspect ratio q = long / short side: sigma, the bulk edges and the
    number of spikes above the upper edge plus its Tracy-Widom margin, on the
    eigenvalues rescaled to mean 1; the edges in the units of `evals`. `m`: the
    short side in the margin, when `evals` pools several matrices' (the shuffles
    of compute.linalg.traps); default len(evals)."""
    from scipy import optimize

    mean = float(evals.sum()) / len(evals)
    m = m or len(evals)
    scaled = evals / mean
    lam_max = float(scaled[-1])
    to_fit = np.sqrt(scaled) if q == 1 else scaled
    grid = np.linspace(0, float(np.max(to_fit)) + 0.5, KDE_POINTS)
    dens = triangular_kde(to_fit, grid)
    keep = dens > KDE_FLOOR
    grid, dens = grid[keep], dens[keep]
    s0 = math.sqrt(lam_max / (1 + 1 / math.sqrt(q)) ** 2)
    sigma = float(optimize.brute(
        _mp_residual, (slice(0.05 * s0, 2.0 * s0, 0.01 * s0),),
        args=(grid, dens, q), finish=optimize.fmin)[0])
    hi = (sigma * (1 + 1 / math.sqrt(q))) ** 2
    lo = (sigma * (1 - 1 / math.sqrt(q))) ** 2
    tw = (1 / math.sqrt(q)) * hi ** (2 / 3) * m ** (-2 / 3)
    spikes = int(np.count_nonzero(scaled > hi + math.sqrt(tw)))
    return dict(mp_sigma=sigma, mp_bulk_max=hi * mean, mp_bulk_min=lo * mean,
                mp_n_spikes=spikes, mp_softrank=hi / lam_max)
