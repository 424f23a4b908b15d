"""compute.run --vectors end to end on the planted pair: Parquet files, the
raw.direction_* rows (counts against the files, a re-run replaces, --vectors 0
clears them), the vectors against NumPy's SVD of the checkpoint's own weights, the
dbt marts, the Directions page."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import ROOT, query, run_dbt, run_py

TABLES = {"direction_overlap": "overlap/*.parquet", "direction_angles":
          "angles/*.parquet", "intruders": "intruders/*.parquet",
          "direction_tokens": "tokens.parquet"}
K = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_pair):
    work = tmp_path_factory.mktemp("directions")
    db, out = work / "w.duckdb", work / "runs"
    args = ("-m", "compute.run", "--base", str(demo_pair / "base"), "--sft",
            str(demo_pair / "sft"), "--name", "demo", "--skip-behaviour",
            "--no-progress", "--out", str(out), "--db", str(db), "--vectors", str(K))
    run_py(*args, db=db)
    n = query(db, "select count(distinct tensor) from raw.spectra")[0][0]
    return db, out / "demo", args, demo_pair, n


def counts(db):
    return {t: query(db, f"select count(*) from raw.{t}")[0][0] for t in TABLES}


def test_rows_match_files_and_rerun_replaces(run):
    import duckdb

    db, run_dir, args, _, n = run
    got = counts(db)
    for table, pattern in TABLES.items():
        files = [str(p) for p in sorted((run_dir / "directions").glob(pattern))]
        want = duckdb.sql("select count(*) from read_parquet(?)",
                          params=[files]).fetchall()[0][0]
        assert got[table] == want > 0, table
    # every matrix of the pair is under the full-basis size: K intruder rows each
    assert got["intruders"] == n * K
    (options,), = query(db, "select options from raw.compute_runs "
                          "where kind = 'directions'")
    opts = json.loads(options)
    assert opts["vectors"] == K and opts["matrices_with_full_base_basis"] == n
    assert opts["token_labels"]["final_norm"] == "model.norm.weight"
    run_py(*args, db=db)  # resumes (nothing to compute) and loads again
    assert counts(db) == got
    run_py(*args[:-2], "--vectors", "0", "--force", db=db)
    assert set(counts(db).values()) == {0}
    assert not query(db, "select * from raw.compute_runs where kind = 'directions'")
    run_py(*args, "--force", db=db)
    assert counts(db) == got


def test_vectors_are_the_checkpoints_singular_vectors(run):
    import duckdb

    from compute.io.checkpoints import resolve
    from compute.linalg.spectra import to_float64

    _, run_dir, _, pair, _ = run
    name = "model.layers.1.mlp.down_proj.weight"
    wb, ws = (to_float64(*resolve(str(pair / r)).read_array(name))
              for r in ("base", "sft"))
    files = [str(p) for p in (run_dir / "directions" / "vectors").glob("*.parquet")]
    for role, x in (("base", wb), ("sft", ws), ("delta", ws - wb)):
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        for side, ref in (("left", u), ("right", vt.T)):
            rows = duckdb.sql(
                "select k, singular_value, vector from read_parquet(?) where tensor = ?"
                " and role = ? and side = ? order by k",
                params=[files, name, role, side]).fetchall()
            assert [r[0] for r in rows] == list(range(1, K + 1))
            np.testing.assert_allclose([r[1] for r in rows], s[:K], rtol=1e-7)
            got = np.array([r[2] for r in rows]).T  # (dim, K), float32
            cos = np.abs(np.sum(got * ref[:, :K], axis=0))
            assert (cos > 1 - 1e-5).all(), (role, side, cos)


def test_marts_and_page(run, monkeypatch):
    db, _, _, _, n = run
    run_dbt(db, "build", "--quiet", "--select", "+fct_direction_overlap",
            "+fct_principal_angles", "+fct_intruder_counts", "+fct_direction_tokens")
    raw, mart = (query(db, f"select count(*) from {t}")[0][0]
                 for t in ("raw.intruders", "marts.fct_intruder_counts"))
    assert mart == n * 9  # K < 10: one k per matrix, 9 epsilons
    assert raw == n * K
    top = query(db, "select count(*) from marts.fct_direction_tokens where "
                "kind = 'direction' and pole = '+u' and rank = 1")[0][0]
    layers = query(db, "select count(distinct layer) from raw.spectra")[0][0]
    assert top == (2 * layers + 1) * K  # o_proj, down_proj per layer, the embedding
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SFTSCOPE_DB", str(db))
    at = AppTest.from_file(str(ROOT / "app_pages" / "directions.py"),
                           default_timeout=120).run()
    assert not at.exception
    assert len(at.dataframe) >= 2
