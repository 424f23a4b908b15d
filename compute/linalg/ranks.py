"""Rank measures of one spectrum, in Python, for code that needs them before dbt has
run (compute.lora.extract's `--rank auto` from a run's spectra files). Each mirrors
its definition in dbt_project/models/intermediate/int_spectrum_stats.sql, which is
the definition (README "Metrics"); tests/test_lora_extract.py asserts that both give
the same ranks on the planted pair.

    from compute.linalg.ranks import energy_rank, signal_rank
    signal_rank(s, n_rows, n_cols, noise_sigma)   # None without a noise level
"""

from __future__ import annotations

import math

import numpy as np


def gd_lambda(beta: float) -> float:
    """Gavish-Donoho's lambda(beta) for known noise (README: signal rank);
    int_spectrum_stats' `gd_threshold` divided by sqrt(n_long) sigma."""
    return math.sqrt(2 * (beta + 1) + 8 * beta
                     / ((beta + 1) + math.sqrt(beta * beta + 14 * beta + 1)))


def numerical_tolerance(s: np.ndarray, m: int, n: int) -> float:
    """s_1 max(m, n) 2^-23: int_spectrum_stats' `numerical_tolerance`."""
    return float(s[0]) * max(m, n) * 2.0 ** -23 if len(s) else 0.0


def signal_rank(s: np.ndarray, m: int, n: int, sigma: float | None) -> int | None:
    """#{s_i > max(lambda(beta) sqrt(max(m, n)) sigma, numerical tolerance)} with
    beta = min(m, n) / max(m, n): int_spectrum_stats' `signal_rank` (None, as its
    NULL, without a noise level; 0 for an all-zero dW)."""
    if sigma is None:
        return None
    s = np.asarray(s, dtype=np.float64)
    if len(s) == 0 or s[0] == 0:
        return 0
    short, long = sorted((m, n))
    gd = gd_lambda(short / long) * math.sqrt(long) * sigma
    return int(np.count_nonzero(s > max(gd, numerical_tolerance(s, m, n))))


def energy_rank(s: np.ndarray, q: float) -> int:
    """Smallest r with sum_{i<=r} s_i^2 >= q sum s_i^2 (0 for an all-zero dW):
    int_spectrum_stats' `energy_rank_90` for q = 0.9 (its NULL is 0 here)."""
    sq = np.asarray(s, dtype=np.float64) ** 2
    total = sq.sum()
    if total == 0:
        return 0
    return int(min(np.searchsorted(np.cumsum(sq), q * total * (1 - 1e-12)) + 1,
                   len(sq)))
