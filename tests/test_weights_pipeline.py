"""The weights pipeline end to end: demo pair -> compute.run -> warehouse -> dbt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from safetensors.torch import load_file

from compute.fixtures.planted import PairSpec, build_pair, place_in_hub_cache
from tests.conftest import ROOT, env_for, run_py


def weights(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint as float64 NumPy (independent of compute/)."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= {k: v.double().numpy() for k, v in load_file(f).items()}
    return out


def query(db: Path, sql: str, params=None):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).df()
    finally:
        con.close()


def test_spectra_match_numpy_svd(demo_warehouse, demo_pair):
    base, sft = weights(demo_pair / "base"), weights(demo_pair / "sft")
    rows = query(demo_warehouse, "select tensor, role, n_rows, n_cols, singular_values "
                 "from raw.spectra")
    matrices = [k for k, v in base.items() if v.ndim == 2]
    assert len(rows) == 3 * len(matrices)
    worst = 0.0
    for r in rows.itertuples():
        w = {"base": base[r.tensor], "sft": sft[r.tensor],
             "delta": sft[r.tensor] - base[r.tensor]}[r.role]
        assert (r.n_rows, r.n_cols) == w.shape
        ref = np.linalg.svd(w, compute_uv=False)
        got = np.asarray(r.singular_values)
        assert got.shape == ref.shape
        err = np.abs(got - ref).max() / ref[0]
        worst = max(worst, err)
        assert err <= 1e-7, (r.tensor, r.role, err)
    print(f"worst relative error {worst:.2e}")


def test_planted_ranks_visible_in_delta_spectrum(demo_warehouse, demo_pair):
    truth = json.loads((demo_pair / "planted.json").read_text())["tensors"]
    rows = query(demo_warehouse, "select tensor, singular_values from raw.spectra "
                 "where role = 'delta'")
    assert set(rows.tensor) == set(truth)
    for r in rows.itertuples():
        k = truth[r.tensor]["rank"]
        s = np.asarray(r.singular_values)
        # the planted values come back (bf16 rounding moves them by < 1%) ...
        np.testing.assert_allclose(s[:k], truth[r.tensor]["singular_values"], rtol=0.01)
        # ... and the spectrum falls by an order of magnitude right after them
        assert s[k - 1] / s[k] > 10, (r.tensor, k, s[k - 1], s[k])


def test_signal_rank_finds_planted_rank_numerical_rank_does_not(demo_warehouse,
                                                                demo_pair):
    truth = json.loads((demo_pair / "planted.json").read_text())["tensors"]
    df = query(demo_warehouse, "select tensor, signal_rank, numerical_rank, n_short "
               "from marts.fct_matrix_metrics where role = 'delta'")
    for r in df.itertuples():
        assert r.signal_rank == truth[r.tensor]["rank"], r
        assert r.numerical_rank >= r.n_short - 1 > r.signal_rank, r  # noise: full rank


def test_rerun_replaces_never_duplicates(demo_warehouse, tmp_path, demo_pair):
    db = tmp_path / "w.duckdb"
    db.write_bytes(demo_warehouse.read_bytes())
    before = query(db, "select count(*) n from raw.spectra").n[0]
    runs = tmp_path / "runs"
    for _ in range(2):
        run_py("-m", "compute.run", "--base", str(demo_pair / "base"), "--sft",
               str(demo_pair / "sft"), "--name", "planted", "--out", str(runs),
               "--skip-behaviour", "--no-progress", db=db)
        assert query(db, "select count(*) n from raw.spectra").n[0] == before
        assert query(db, "select count(*) n from raw.compute_runs "
                     "where pair = 'planted' "
                     "and kind = 'spectra'").n[0] == 1


def test_hub_cache_layout_offline(tmp_path):
    """--pair 0.5B resolves Qwen/Qwen2.5-0.5B{,-Instruct} from the hub cache,
    offline: a tied, sharded tiny pair placed under the real names."""
    spec = PairSpec(hidden=64, intermediate=160, layers=2, heads=2, kv_heads=1,
                    vocab=512, tie_embeddings=True, weight_files=2)
    base, sft = build_pair(tmp_path / "pair", spec)
    cache = tmp_path / "hub"
    place_in_hub_cache(base, cache, "Qwen/Qwen2.5-0.5B", "a" * 40)
    place_in_hub_cache(sft, cache, "Qwen/Qwen2.5-0.5B-Instruct", "b" * 40)
    db = tmp_path / "w.duckdb"
    proc = run_py("-m", "compute.run", "--pair", "0.5B", "--out", str(tmp_path / "runs"),
                  "--skip-behaviour", "--no-progress", db=db, HF_HUB_OFFLINE="1",
                  HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf"))
    assert "tied embeddings" in proc.stdout
    runs = query(db, "select * from raw.compute_runs where kind = 'spectra'")
    assert list(runs.base_model) == ["Qwen/Qwen2.5-0.5B"]
    assert list(runs.base_revision) == ["a" * 40]
    assert list(runs.sft_revision) == ["b" * 40]
    tensors = query(db, "select distinct tensor from raw.spectra").tensor
    assert "lm_head.weight" not in set(tensors)
    assert len(tensors) == 2 * 7 + 1  # 7 per layer + embed_tokens
    vec = query(db, "select count(*) n from raw.vector_changes").n[0]
    assert vec == 2 * (2 + 3) + 1  # 2 norms + 3 biases per layer, final norm


def test_hub_id_missing_from_cache_is_a_clear_error(tmp_path):
    proc = run_py("-m", "compute.run", "--pair", "7B", "--out", str(tmp_path / "runs"),
                  "--no-progress", db=tmp_path / "w.duckdb", check=False,
                  HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty"),
                  HF_HOME=str(tmp_path / "hf"))
    assert proc.returncode == 2
    assert "Qwen/Qwen2.5-7B" in proc.stderr and "cache" in proc.stderr
    assert not (tmp_path / "w.duckdb").exists()


def test_shape_mismatch_names_the_tensor_before_any_work(tmp_path):
    a, _ = build_pair(tmp_path / "a", PairSpec(hidden=64, intermediate=160, layers=2,
                                                heads=2, kv_heads=1, vocab=512))
    _, b = build_pair(tmp_path / "b", PairSpec(hidden=64, intermediate=192, layers=2,
                                                heads=2, kv_heads=1, vocab=512))
    proc = run_py("-m", "compute.run", "--base", str(a), "--sft", str(b), "--name", "x",
                  "--out", str(tmp_path / "runs"), "--no-progress",
                  db=tmp_path / "w.duckdb", check=False)
    assert proc.returncode == 2
    assert "intermediate_size" in proc.stderr
    assert not (tmp_path / "runs" / "x" / "spectra").exists()


def test_killed_run_resumes_with_every_tensor_once(tmp_path):
    spec = PairSpec(hidden=256, intermediate=1024, layers=8, heads=4, kv_heads=2,
                    vocab=2048)
    base, sft = build_pair(tmp_path / "pair", spec)
    n_matrices = 8 * 7 + 2
    out, db = tmp_path / "runs", tmp_path / "w.duckdb"
    args = [sys.executable, "-m", "compute.run", "--base", str(base), "--sft", str(sft),
            "--name", "big", "--out", str(out), "--no-progress",
            "--skip-behaviour"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env_for(db), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    spectra = out / "big" / "spectra"
    deadline = time.monotonic() + 120
    while len(list(spectra.glob("0*.parquet"))) < 5:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in spectra.glob("0*.parquet")}
    assert 5 <= len(done_before) < n_matrices, "the kill came too late to test resume"
    assert not db.exists() or query(db, "select count(*) n from raw.spectra").n[0] == 0

    again = run_py(*args[1:], db=db)
    assert "loaded into the warehouse" in again.stdout
    files = sorted(spectra.glob("0*.parquet"))
    assert len(files) == n_matrices
    for name, mtime in done_before.items():  # finished tensors were not redone
        assert (spectra / name).stat().st_mtime_ns == mtime
    counts = query(db, "select tensor, role, count(*) n from raw.spectra group by all")
    assert len(counts) == 3 * n_matrices and set(counts.n) == {1}
    assert query(db, "select count(distinct run_id) n from raw.spectra").n[0] == 1


NOISE_LEVELS = {"std02": (0.02, 0.004), "std05": (0.05, 0.02)}


@pytest.fixture(scope="module")
def other_shapes(tmp_path_factory):
    """Two pairs with non-square heads and other weight scales (so other bf16 noise
    levels), some planted values below the noise edge; computed by compute.run and
    modelled by dbt into one warehouse."""
    from tests.conftest import run_dbt

    tmp = tmp_path_factory.mktemp("other_shapes")
    db = tmp / "w.duckdb"
    truth = {}
    for name, (init_std, s_lo) in NOISE_LEVELS.items():
        spec = PairSpec(hidden=96, intermediate=352, layers=2, heads=3, kv_heads=1,
                        vocab=640, s_hi=0.06, s_lo=s_lo, init_std=init_std, seed=7)
        base_dir, sft_dir = build_pair(tmp / name, spec)
        truth[name] = json.loads((tmp / name / "planted.json").read_text())["tensors"]
        run_py("-m", "compute.run", "--base", str(base_dir), "--sft", str(sft_dir),
               "--name", name, "--out", str(tmp / "runs"), "--skip-behaviour",
               "--no-progress", db=db)
    run_dbt(db, "run", "--quiet", "--select", "+fct_matrix_metrics")
    return db, truth


@pytest.mark.parametrize("pair", sorted(NOISE_LEVELS))
def test_signal_rank_on_other_shapes_and_noise_levels(other_shapes, pair):
    """Ground truth beyond the demo: the signal rank the mart publishes is the
    planted rank where every planted value stands well above the noise edge, and
    never more than planted where some hide in the noise."""
    db, truth = other_shapes
    rows = query(db, "select tensor, n_rows, n_cols, noise_sigma, signal_rank "
                 "from marts.fct_matrix_metrics where pair = ? and role = 'delta'",
                 [pair])
    assert set(rows.tensor) == set(truth[pair])
    checked = 0
    for r in rows.itertuples():
        planted = np.asarray(truth[pair][r.tensor]["singular_values"])
        edge = r.noise_sigma * (np.sqrt(r.n_rows) + np.sqrt(r.n_cols))
        strong = int((planted >= 2 * edge).sum())
        if strong == len(planted):
            assert r.signal_rank == len(planted), (r.tensor, r.signal_rank, len(planted))
            checked += 1
        else:  # weak directions may hide in the noise; never more than planted
            assert strong <= r.signal_rank <= len(planted), (r.tensor, r.signal_rank,
                                                              strong)
    assert checked > 0
