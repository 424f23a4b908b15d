"""WeightWatcher's correlation traps (compute/linalg/traps.py, compute.run --traps):
a planted trap and its absence, the shuffle against NumPy's global stream, every
count against WeightWatcher 0.7.7 itself with the same seed (the bench extra), and
the pipeline (raw.random_spectra, the marts) against the weights."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compute.linalg.traps import (
    jensen_shannon_distance,
    shuffled_singular_values,
    trap_measures,
    trap_row,
)

ROOT = Path(__file__).resolve().parents[1]
SPIKE = 5.0  # against entries of std 0.02: the bulk edge is 0.02 (sqrt 400 + sqrt 200)


def _noise(shape=(400, 200), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * 0.02


def _traps(w: np.ndarray, seed: int = 0) -> dict:
    return trap_row(w, np.linalg.svd(w, compute_uv=False), seed)


def test_planted_trap_survives_the_shuffle_and_noise_has_none():
    """Gaussian noise has no trap. A rank-1 spike SPIKE e_i e_j^T (one large entry)
    is one: shuffled, it is still one entry of size SPIKE, a singular value about
    SPIKE far above the bulk edge 0.02 (sqrt(400) + sqrt(200)) = 0.68. A rank-1
    spike of the same size spread over every entry (SPIKE u v^T, u, v unit and
    dense) is a correlation the shuffle destroys: a spike of W's own ESD, no trap."""
    noise = _noise()
    assert _traps(noise)["n_traps"] == 0
    one = noise.copy()
    one[17, 3] += SPIKE
    got = _traps(one)
    assert got["n_traps"] == 1
    assert math_isclose(np.sqrt(got["rand_lambda_max"]), SPIKE, 0.05)
    assert got["ww_softrank"] == pytest.approx(1.0, abs=0.02)  # the trap is W's top
    rng = np.random.default_rng(2)
    u, v = rng.standard_normal(400), rng.standard_normal(200)
    dense = noise + SPIKE * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    got = _traps(dense)
    assert got["n_traps"] == 0
    assert got["ww_softrank"] < 0.1  # W's spike is gone from the shuffled ESD


def math_isclose(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * abs(b)


def test_shuffle_is_numpys_global_stream_and_pools_five_below_100():
    """np.random.seed(s) then np.random.shuffle on a fresh flattened copy of W per
    replica (WeightWatcher's random_eigenvalues) gives the same singular values;
    a 150 x 60 matrix (60 < 100 eigenvalues) pools 5 shuffles, 400 x 200 one."""
    for shape, reps in (((150, 60), 5), ((400, 200), 1)):
        w = _noise(shape, seed=3)
        got, n = shuffled_singular_values(w, 11)
        assert n == reps and len(got) == reps * min(shape)
        np.random.seed(11)
        want = []
        for _ in range(reps):
            flat = w.flatten()
            np.random.shuffle(flat)
            want.append(np.sort(np.linalg.svd(flat.reshape(shape),
                                               compute_uv=False))[::-1])
        np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-9, atol=1e-12)


def test_measures_by_hand():
    """rand_distance as WeightWatcher writes it: the midpoint of the raw vectors,
    each of p, q, m then normalised (by hand below; SciPy's jensenshannon
    normalises p and q before the midpoint, and agrees when their sums do);
    ww_softrank and ww_maxdist from the first shuffle's top; an all-zero W has no
    measure."""
    from scipy.spatial import distance

    p, q = np.array([1.0, 2.0, 4.0]), np.array([1.5, 1.5, 3.0])
    m = (p + q) / 2
    pn, qn, mn = p / p.sum(), q / q.sum(), m / m.sum()
    kl = float(np.sum(pn * np.log(pn / mn)) + np.sum(qn * np.log(qn / mn)))
    assert jensen_shannon_distance(p, q) == pytest.approx(np.sqrt(kl / 2), rel=1e-12)
    q7 = q * p.sum() / q.sum()
    assert jensen_shannon_distance(p, q7) == pytest.approx(
        distance.jensenshannon(p, q7), rel=1e-9)
    w = _noise((120, 110), seed=4)
    sv = np.linalg.svd(w, compute_uv=False)
    rand, reps = shuffled_singular_values(w, 0)
    got = trap_measures(rand, reps, sv, 120, 110)
    top = rand[:110].max() ** 2
    assert got["ww_softrank"] == pytest.approx(top / sv.max() ** 2)
    assert got["ww_maxdist"] == pytest.approx(sv.max() ** 2 - top)
    zero = trap_measures(np.zeros(5), 1, np.zeros(5), 5, 8)
    assert zero["n_traps"] is None and zero["n_replicas"] == 1


@pytest.mark.slow
def test_traps_match_weightwatcher_with_the_same_seed():
    """WeightWatcher 0.7.7's analyze(randomize=True, mp_fit=True), np.random.seed(7)
    before each one-layer model: num_traps equal, rand_bulk_max and max_rand_eval
    to 1e-6, on tall, wide and small (5 pooled shuffles) matrices with and without
    a planted large entry. rand_distance and ww_softrank come from a further
    shuffle there, the first one here (test_measures_by_hand checks them by hand):
    on the planted matrices, whose top randomised eigenvalue is the trap in every
    shuffle, they agree within 0.005 and 0.01; on noise a shuffle's top
    eigenvalue varies by up to 10% at 40 x 64, so only the distance is compared."""
    ww = pytest.importorskip("weightwatcher")
    import torch

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    cases = []
    for shape in ((300, 120), (120, 300), (64, 40)):
        w = _noise(shape, seed=sum(shape))
        spiked = w.copy()
        spiked[3, 5] = SPIKE
        cases += [w, spiked]
    counts = []
    for w in cases:
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
        lin.weight.data = torch.from_numpy(w.copy())
        np.random.seed(7)
        ref = ww.WeightWatcher(model=torch.nn.Sequential(lin)).analyze(
            mp_fit=True, randomize=True).iloc[0]
        ours = _traps(w, seed=7)
        what = f"{w.shape} max {w.max():.2f}"
        assert ours["n_traps"] == ref["num_traps"], what
        assert ours["rand_bulk_max"] == pytest.approx(ref["rand_bulk_max"], rel=1e-6)
        assert ours["rand_lambda_max"] == pytest.approx(ref["max_rand_eval"], rel=1e-6)
        assert ours["rand_distance"] == pytest.approx(ref["rand_distance"], abs=0.005)
        if w.max() == SPIKE:
            assert ours["ww_softrank"] == pytest.approx(ref["ww_softrank"], abs=0.01)
        counts.append(ours["n_traps"])
    assert counts[1::2] != counts[0::2] and max(counts) >= 1  # the plants show


@pytest.mark.slow
def test_run_with_traps_loads_and_marts_hold_them(tmp_path):
    """compute.run --traps on the demo pair: two raw.random_spectra rows per matrix
    (base, sft), loaded twice without duplicates; one matrix's row equals trap_row
    of the weights read from the safetensors; fct_matrix_traps and
    fct_layer_module_traps hold every matrix and cell, the counts summed by hand."""
    from safetensors.torch import load_file

    from tests.conftest import query, run_dbt

    demo, db = ROOT / "models" / "demo", tmp_path / "w.duckdb"
    cmd = [sys.executable, "-m", "compute.run", "--base", str(demo / "base"),
           "--sft", str(demo / "sft"), "--name", "demo", "--skip-behaviour",
           "--vectors", "0", "--traps", "--trap-seed", "3", "--no-progress",
           "--out", str(tmp_path / "runs"), "--db", str(db)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    subprocess.run([sys.executable, "-m", "ingest.compute_load",
                    str(tmp_path / "runs" / "demo"), "--db", str(db)], check=True,
                   cwd=ROOT, capture_output=True)
    n_matrices = query(db, "select count(*) from raw.spectra where role = 'base'")[0][0]
    assert query(db, "select count(*), count(distinct tensor || role) from "
                 "raw.random_spectra")[0] == (2 * n_matrices, 2 * n_matrices)
    name = "model.layers.1.mlp.down_proj.weight"
    (sv, stored_traps, stored_bulk, seed), = query(db, """
        select s.singular_values, r.n_traps, r.rand_bulk_max, r.seed
        from raw.spectra s join raw.random_spectra r using (run_id, tensor, role)
        where s.tensor = ? and s.role = 'sft'""", [name])
    w = load_file(demo / "sft" / "model.safetensors")[name].double().numpy()
    want = trap_row(w, sv, 3)
    assert seed == 3 and stored_traps == want["n_traps"]
    assert stored_bulk == pytest.approx(want["rand_bulk_max"], rel=1e-9)
    run_dbt(db, "run", "--quiet", "--select", "+fct_layer_module_traps")
    run_dbt(db, "test", "--quiet", "--select", "stg_compute__random_spectra",
            "fct_matrix_traps", "fct_layer_module_traps")
    assert query(db, "select count(*) from marts.fct_matrix_traps")[0][0] == \
        2 * n_matrices
    by_hand = query(db, """
        select layer, module, sum(n_traps) filter (where role = 'sft')
        from raw.random_spectra where layer is not null group by all order by all""")
    marts = query(db, """select layer, module, sft_n_traps
                         from marts.fct_layer_module_traps order by all""")
    assert marts == by_hand and len(marts) > 0


@pytest.mark.parametrize("extra", [["--shard", "0/2"], ["--skip-spectra"]])
def test_traps_refused_where_it_cannot_run(extra, capsys):
    """--traps needs whole matrices and the spectra half: a usage error (exit 2)
    naming the clash, before anything is read."""
    from compute.run.cli import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["--base", "a", "--sft", "b", "--name", "x", "--traps", *extra])
    assert exc.value.code == 2
    assert "--traps" in capsys.readouterr().err
