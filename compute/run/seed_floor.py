"""The seed floor of the directions: do two fine-tunes of one base change it along the
same top singular directions?

    python -m compute.seed_floor --pair demo --other demo-seed29   # then the marts

A = the pair `--pair` (base, SFT A), B = `--other` (the same base, SFT B: the same
recipe, another seed). Both runs of compute.run wrote dW's top-K singular vectors per
matrix (OUT/<pair>/directions/vectors, --vectors K); this reads them, weights are not
loaded again. Per matrix, side ('left' = the output space) and k = 1 .. min(K_A, K_B):
share = ||P_k^T Q_k||_F^2 / k, the mean squared cosine of the principal angles between
dW_A's and dW_B's top-k subspaces (1: the same subspace), the cosines themselves (the
singular values of P_k^T Q_k, largest first), and span_dim, the dimension of the space
W_base spans on that side (from A's directions/overlap files): k / span_dim is what
two random k-dimensional subspaces of it share on average, the chance level.

Written to OUT/<pair>/seed_floor/<other>.parquet (a temporary name, then renamed) and
loaded into raw.seed_direction_overlap (ingest.seed_floor), replacing the rows of the
same two runs. Exit status: 0 done; 2 a run folder without vectors, or runs of
different bases (named in the message); 3 the warehouse is busy (the file is kept:
`python -m ingest.seed_floor FILE` loads it later).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

FOLDER = "seed_floor"


class SeedFloorError(ValueError):
    """A run folder the floor cannot be computed from (the message names it)."""


def run_record(run_dir: Path) -> dict:
    """run.json of a finished directions kind; SeedFloorError otherwise."""
    path = run_dir / "run.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SeedFloorError(f"{path}: no such file (run compute.run for this pair "
                             "first)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SeedFloorError(f"{path}: unreadable ({exc})") from None
    if not (manifest.get("kinds", {}).get("directions") or {}).get("finished_at"):
        raise SeedFloorError(f"{path}: no finished singular vectors (compute.run "
                             "--vectors K computes them)")
    return manifest


def span_dims(run_dir: Path) -> dict[tuple[str, str], int | None]:
    """(tensor, side) -> the dimension of the space W_base spans on that side, from
    the run's directions/overlap files."""
    import duckdb

    files = sorted(str(p) for p in (run_dir / "directions" / "overlap").glob(
        "*.parquet"))
    if not files:
        return {}
    rows = duckdb.sql("select tensor, side, max(span_dim) from read_parquet(?, "
                      "union_by_name = true) group by all", params=[files]).fetchall()
    return {(t, s): d for t, s, d in rows}


def principal_cosines(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the row spaces of `p` and `q`
    ((k, dim) each, orthonormal rows), largest first."""
    return np.clip(np.linalg.svd(p @ q.T, compute_uv=False), 0.0, 1.0)


def _where(ref: str | None) -> str | None:
    """A checkpoint reference as one spelling: a folder's resolved path, else as is."""
    return str(Path(ref).resolve()) if ref and Path(ref).exists() else ref


def floor_rows(dir_a: Path, dir_b: Path) -> list[dict]:
    """Rows of raw.seed_direction_overlap for the runs in `dir_a` (A) and `dir_b`."""
    from compute.run.trajectory import delta_vectors, subspace_overlap

    ra, rb = run_record(dir_a), run_record(dir_b)
    if _where(ra.get("base_model")) != _where(rb.get("base_model")):
        raise SeedFloorError(f"{dir_a} and {dir_b}: different bases "
                             f"({ra.get('base_model')} vs {rb.get('base_model')}); "
                             "a seed floor compares two fine-tunes of one base")
    va, vb = delta_vectors(dir_a), delta_vectors(dir_b)
    if not va or not vb:
        raise SeedFloorError(f"{dir_a if not va else dir_b}/directions/vectors: no "
                             "vectors of dW")
    spans = span_dims(dir_a)
    common = {"run_id": ra["run_id"], "other_run_id": rb["run_id"],
              "pair": ra["pair"], "other_pair": rb["pair"]}
    rows = []
    for key, (cols, p) in va.items():
        if key not in vb:
            continue
        q = vb[key][1]
        if p.shape[1] != q.shape[1]:
            raise SeedFloorError(f"{key[0]} ({key[1]}): dimension {p.shape[1]} in "
                                 f"{dir_a}, {q.shape[1]} in {dir_b}")
        for k, share in enumerate(subspace_overlap(p, q), 1):
            rows.append(common | cols | {
                "k": k, "share": share, "dim": p.shape[1],
                "span_dim": spans.get(key),
                "cosines": principal_cosines(p[:k], q[:k]).tolist()})
    return rows


def write_floor(dir_a: Path, dir_b: Path, dest: Path) -> int:
    """The floor's rows to `dest` (Parquet, written whole or not at all); rows."""
    import pyarrow as pa

    from compute.io.files import write_parquet
    from ingest.seed_floor import schema

    rows = floor_rows(dir_a, dir_b)
    write_parquet(pa.Table.from_pylist(rows, schema=schema()), dest)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """python -m compute.seed_floor --pair A --other B: the file, then the load."""
    from ingest.runfolder import PairNameError, check_name
    from ingest.seed_floor import load_or_explain

    ap = argparse.ArgumentParser(prog="python -m compute.seed_floor",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--pair", required=True, help="the pair (base, SFT A)")
    ap.add_argument("--other", required=True, help="the pair (base, SFT B): the same "
                    "base fine-tuned with another seed")
    ap.add_argument("--out", type=Path, default=Path("data/runs"),
                    help="compute.run's OUT folder (default data/runs)")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--no-load", dest="load", action="store_false",
                    help="write the file only")
    a = ap.parse_args(argv)
    try:
        pair, other = check_name(a.pair), check_name(a.other)
        dest = a.out / pair / FOLDER / f"{other}.parquet"
        n = write_floor(a.out / pair, a.out / other, dest)
    except (PairNameError, SeedFloorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"seed floor {pair} vs {other}: {n} subspace overlaps to {dest}")
    return load_or_explain(dest, a.db) if a.load else 0
