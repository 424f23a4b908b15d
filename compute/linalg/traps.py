"""WeightWatcher's correlation traps: the ESD of W with its entries shuffled.

    from compute.linalg.traps import trap_row
    trap_row(w, singular_values, seed=0)   # python -m compute.run --traps

Shuffling the entries of W destroys every correlation between them; what is left
is a random matrix with W's entry distribution, whose ESD should be a
Marchenko-Pastur bulk. A few large entries (heavy-tailed, or one big element) survive
the shuffle as eigenvalues above that bulk: WeightWatcher calls them correlation
traps. This follows WeightWatcher 0.7.7 (`analyze(randomize=True, mp_fit=True)`,
`random_eigenvalues`, `apply_random_esd`, `apply_mp_fit(random=True)`), written from
its source:

- the randomised ESD: W's entries flattened (row-major, W as nn.Linear holds it,
  (out, in), the orientation of raw.spectra's n_rows x n_cols), shuffled by NumPy's legacy
  `shuffle` (here `RandomState(seed)`, the same stream as WeightWatcher's global
  `np.random.seed(seed)`), reshaped, its singular values squared; matrices with
  fewer than 100 eigenvalues get 5 shuffles of the original W, concatenated;
- traps (`num_traps`, `rand_num_spikes`): the MP fit of compute.linalg.esd on those
  eigenvalues (rescaled to mean 1), counting eigenvalues above the bulk edge plus
  its Tracy-Widom margin, M the matrix's short side;
- `rand_distance`: the Jensen-Shannon distance between the ESD and the first
  shuffle's, as vectors in ascending order (SciPy's `entropy` normalises each);
  `ww_softrank`: the randomised lambda_max over W's; `ww_maxdist` their difference.
  WeightWatcher draws a further shuffle for these two; here the first is reused,
  so they match WeightWatcher's to the spread between two shuffles, not exactly.
"""

from __future__ import annotations

import math

import numpy as np

from compute.linalg.esd import mp_fit

REPLICAS_BELOW = 100  # WeightWatcher: fewer eigenvalues than this, 5 shuffles
REPLICAS = 5
MEASURES = ("n_replicas", "rand_lambda_max", "rand_mp_sigma", "rand_bulk_max",
            "rand_bulk_min", "n_traps", "rand_mp_softrank", "rand_distance",
            "ww_softrank", "ww_maxdist")


def shuffled_singular_values(w: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """(the singular values of every shuffle of W, concatenated, each block
    descending; the number of shuffles). Each shuffle permutes a fresh row-major
    copy of W (as torch's nn.Linear holds it, (out, in)), as WeightWatcher's
    `random_eigenvalues` does."""
    from compute.linalg.spectra import gram_singular_values

    w = np.asarray(w)
    reps = REPLICAS if min(w.shape) < REPLICAS_BELOW else 1
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(reps):
        flat = np.array(w, dtype=np.float64).ravel()  # C order: a fresh copy
        rng.shuffle(flat)
        sv, _ = gram_singular_values(flat.reshape(w.shape))
        out.append(sv)
    return np.concatenate(out), reps


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt of the Jensen-Shannon divergence of p and q, each normalised to sum 1
    (WeightWatcher's RMT_Util.jensen_shannon_distance, natural logarithms)."""
    from scipy import stats

    m = (p + q) / 2
    return math.sqrt((stats.entropy(p, m) + stats.entropy(q, m)) / 2)


def trap_measures(rand_sv, n_replicas: int, singular_values, n_rows: int,
                  n_cols: int) -> dict[str, float | int | None]:
    """The trap measures of one matrix from its shuffled singular values (all
    replicas, as `shuffled_singular_values` gives them) and its own; every measure
    None (but n_replicas) for an empty or all-zero spectrum or a non-finite one."""
    rand = np.asarray(rand_sv, dtype=np.float64)
    evals = np.sort(np.asarray(singular_values, dtype=np.float64) ** 2)
    out: dict[str, float | int | None] = dict.fromkeys(MEASURES)
    out["n_replicas"] = n_replicas
    rand_evals = np.sort(rand * rand)
    if (len(rand_evals) == 0 or not np.all(np.isfinite(rand_evals))
            or rand_evals[-1] <= 0 or len(evals) == 0 or evals[-1] <= 0):
        return out
    short, long_side = min(n_rows, n_cols), max(n_rows, n_cols)
    fit = mp_fit(rand_evals, long_side / short, m=short)
    first = np.sort(rand[:short] ** 2)
    out.update(rand_lambda_max=float(rand_evals[-1]), rand_mp_sigma=fit["mp_sigma"],
               rand_bulk_max=fit["mp_bulk_max"], rand_bulk_min=fit["mp_bulk_min"],
               n_traps=fit["mp_n_spikes"], rand_mp_softrank=fit["mp_softrank"],
               rand_distance=jensen_shannon_distance(evals, first)
               if len(evals) == len(first) else None,
               ww_softrank=float(first[-1] / evals[-1]),
               ww_maxdist=float(evals[-1] - first[-1]))
    return out


def trap_row(w: np.ndarray, singular_values, seed: int) -> dict:
    """raw.random_spectra's columns of one matrix W ((out, in), any float dtype)
    and its singular values (raw.spectra's)."""
    import time

    t0 = time.perf_counter()
    if not np.all(np.isfinite(w)):  # NaN/Inf entries: no spectrum (as raw.spectra)
        return {"seed": seed, "random_singular_values": [], "seconds": 0.0} | \
            trap_measures([], 0, [], *w.shape)
    rand_sv, reps = shuffled_singular_values(w, seed)
    fit = trap_measures(rand_sv, reps, singular_values, *w.shape)
    return {"seed": seed, "random_singular_values": rand_sv.tolist(),
            "seconds": time.perf_counter() - t0} | fit
