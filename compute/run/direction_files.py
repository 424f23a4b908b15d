"""compute.run's singular-vector outputs: one Parquet file per tensor and table.

    OUT/<pair>/directions/vectors/00012.parquet   the vectors (not loaded)
    OUT/<pair>/directions/overlap/00012.parquet   -> raw.direction_overlap
    OUT/<pair>/directions/angles/00012.parquet    -> raw.direction_angles
    OUT/<pair>/directions/intruders/00012.parquet -> raw.intruders
    OUT/<pair>/directions/rows/00012.parquet      embed/lm_head row changes
    OUT/<pair>/directions/tokens.parquet          -> raw.direction_tokens

Each file is written to a temporary name and renamed; a tensor is done when its
vectors file (written last) exists, so a killed run resumes. The token labels are
made once every tensor is done (they need the SFT model's unembedding).

Read the vectors with DuckDB or pyarrow:
    select tensor, role, side, k, singular_value, vector
    from 'data/runs/7B/directions/vectors/*.parquet'
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from compute.linalg import directions as dirs

TABLES = ("overlap", "angles", "intruders", "rows")
KEYS = ("run_id", "pair", "tensor", "layer", "module")


@functools.cache
def schemas() -> dict:
    """The Arrow schema of each directions table."""
    import pyarrow as pa

    key = [("run_id", pa.string()), ("pair", pa.string()), ("tensor", pa.string()),
           ("layer", pa.int32()), ("module", pa.string())]
    return {
        "vectors": pa.schema([*key,
            ("role", pa.string()), ("side", pa.string()), ("k", pa.int32()),
            ("singular_value", pa.float64()), ("vector", pa.list_(pa.float32()))]),
        "overlap": pa.schema([*key,
            ("side", pa.string()), ("r", pa.int32()), ("share", pa.float64()),
            ("random_share", pa.float64()), ("span_dim", pa.int32())]),
        "angles": pa.schema([*key,
            ("side", pa.string()), ("r", pa.int32()),
            ("cosines", pa.list_(pa.float64()))]),
        "intruders": pa.schema([*key,
            ("j", pa.int32()), ("singular_value", pa.float64()),
            ("max_cos", pa.float64()), ("null_max_cos", pa.float64()),
            ("null_dim", pa.int32())]),
        "rows": pa.schema([*key,
            ("rank", pa.int32()), ("token_id", pa.int64()), ("score", pa.float64())]),
        "tokens": pa.schema([*key,
            ("kind", pa.string()), ("direction", pa.int32()),
            ("singular_value", pa.float64()), ("pole", pa.string()),
            ("rank", pa.int32()), ("token_id", pa.int64()), ("token", pa.string()),
            ("score", pa.float64())]),
    }


def path(run_dir: Path, table: str, index: int) -> Path:
    """The file of `table` for tensor `index`."""
    return run_dir / "directions" / table / f"{index:05d}.parquet"


def done(run_dir: Path, index: int) -> bool:
    """Whether tensor `index`'s vectors file (its last) is written."""
    return path(run_dir, "vectors", index).exists()


def _write(rows: list[dict], table: str, dest: Path) -> None:
    import pyarrow as pa

    from compute.io.files import write_parquet

    write_parquet(pa.Table.from_pylist(rows, schema=schemas()[table]), dest)


def matrix_rows(common: dict, found: dirs.Directions | None) -> dict[str, list[dict]]:
    """Rows per table of one matrix (`common`: the KEYS' values)."""
    key = {k: common[k] for k in KEYS}
    out: dict[str, list[dict]] = {t: [] for t in ("vectors", *TABLES)}
    if found is None:  # NaN/Inf: no vectors
        return out
    for role, sides in found.vectors.items():
        for side, (values, vecs) in sides.items():
            out["vectors"] += [key | {"role": role, "side": side, "k": j + 1,
                                      "singular_value": float(values[j]),
                                      "vector": vecs[:, j].astype(np.float32)}
                               for j in range(vecs.shape[1])]
    out["overlap"] = [key | o for o in found.overlap]
    out["angles"] = [key | a for a in found.angles]
    out["intruders"] = [key | i for i in found.intruders]
    out["rows"] = [key | r for r in found.row_changes]
    return out


def write_tensor(run_dir: Path, index: int, tables: dict[str, list[dict]]) -> None:
    """One tensor's files, the vectors last (the resume marker)."""
    for table in (*TABLES, "vectors"):
        _write(tables[table], table, path(run_dir, table, index))


def _final_norm(ckpt) -> str | None:
    """The final norm's weight: a 1-D tensor outside the blocks named *norm* / ln_f."""
    from compute.arch.naming import block_of

    for name, info in ckpt.tensors.items():
        leaf = name.rsplit(".", 2)
        if (len(info.shape) == 1 and block_of(name)[1] is None and name.endswith(
                "weight") and any("norm" in p or p == "ln_f" for p in leaf[:-1])):
            return name
    return None


def _unembedding(ckpt, plan) -> str | None:
    """lm_head's weight, or the embedding's when the two are tied."""
    from compute.arch.naming import Layout

    layout = Layout(ckpt.config)
    found = {}
    for name, info in ckpt.tensors.items():
        if len(info.shape) == 2:
            module = layout.place(name)[1]
            if module in ("lm_head", "embed_tokens"):
                found.setdefault(module, name)
    return found.get("lm_head") or found.get("embed_tokens")


def write_tokens(run_dir: Path, sft, plan, *, top: int = dirs.TOKENS_PER_POLE
                 ) -> dict:
    """directions/tokens.parquet: dW's top residual-stream directions (o_proj,
    down_proj: left; embed_tokens: right) through the SFT model's final norm weight
    and unembedding, and the embed_tokens / lm_head rows that changed most, with
    their token strings; returns what was done (for raw.compute_runs)."""
    import duckdb

    from compute.plan.vocab import _token_strings

    folder = run_dir / "directions"
    head, norm = _unembedding(sft, plan), _final_norm(sft)
    tokens = _token_strings(sft)
    out = []
    rows_files = sorted(str(p) for p in (folder / "rows").glob("*.parquet"))
    if rows_files:
        for r in duckdb.sql("select * from read_parquet(?) order by tensor, rank",
                            params=[rows_files]).fetchall():
            rec = dict(zip(schemas()["rows"].names, r, strict=True))
            out.append({k: rec[k] for k in KEYS} | {
                "kind": "row_change", "direction": None, "singular_value": None,
                "pole": "changed", "rank": rec["rank"], "token_id": rec["token_id"],
                "token": tokens(rec["token_id"]), "score": rec["score"]})
    labelled = 0
    vec_files = sorted(str(p) for p in (folder / "vectors").glob("*.parquet"))
    if head is not None and vec_files:
        unembed, storage = sft.read_array(head)  # (vocab, hidden)
        gamma = None
        if norm is not None:
            from compute.linalg.spectra import BITS, _from_bits

            g, g_storage = sft.read_array(norm)
            gamma = _from_bits(g.view(BITS[g_storage][0]), g_storage).astype(float)
        wanted = " or ".join(f"(module = '{m}' and side = '{s}')"
                             for m, s in dirs.RESIDUAL_SIDE.items())
        picked = duckdb.sql(
            "select run_id, pair, tensor, layer, module, k, singular_value, vector "
            f"from read_parquet(?) where role = 'delta' and k <= {dirs.TOKEN_DIRECTIONS}"
            f" and ({wanted}) order by tensor, k", params=[vec_files]).fetchall()
        picked = [p for p in picked if len(p[-1]) == unembed.shape[1]]
        if picked:
            mat = np.array([p[-1] for p in picked], dtype=np.float64).T  # (hidden, n)
            labels = dirs.token_labels(mat, unembed, storage, gamma, top=top)
            for lab in labels:
                p = picked[lab["direction"] - 1]
                out.append(dict(zip(KEYS, p[:5], strict=True)) | {
                    "kind": "direction", "direction": p[5], "singular_value": p[6],
                    "pole": lab["pole"], "rank": lab["rank"],
                    "token_id": lab["token_id"], "token": tokens(lab["token_id"]),
                    "score": lab["score"]})
            labelled = len(picked)
    _write(out, "tokens", folder / "tokens.parquet")
    return {"unembedding": head, "final_norm": norm, "labelled_directions": labelled,
            "tokens_per_pole": top}


def compute(vb, vs, storage: str, storage_s: str, view, lowrank, torch, device: str,
            k: int, full_basis_max: int):
    """(spectra rows, Directions) of one view: NumPy on a CPU (`torch` None), torch
    ops on a GPU (all of W_base's vectors there; on a CPU up to `full_basis_max`)."""
    kw = {"k": k, "transposed": view.transposed, "seed": dirs.seed_of(view.tensor),
          "row_changes": view.module in dirs.ROW_TOKEN_MODULES}
    full = min(view.shape) <= full_basis_max
    if torch is None:
        return dirs.array_directions(vb, vs, storage, storage_s, full_basis=full,
                                     lowrank=lowrank, **kw)
    with torch.inference_mode():
        return dirs.tensor_directions(
            vb, vs, device=torch.device(device),
            full_basis=None if device != "cpu" else full,
            lowrank=lowrank and tuple(map(torch.from_numpy, lowrank)), **kw)


def start(run_dir: Path, manifest: dict, k: int, full_basis_max: int) -> None:
    """Mark the directions kind started; earlier vectors of another k are dropped.
    Loads SciPy's LAPACK now, before compute.run pins BLAS to one thread per
    worker (threadpoolctl limits only the libraries loaded by then)."""
    import scipy.linalg  # noqa: F401

    from compute.io.files import now
    from ingest.runfolder import remove_run_files

    old = manifest["kinds"].get("directions", {})
    opts = {"vectors": k, "full_basis_max": full_basis_max}
    if {key: old.get("options", {}).get(key) for key in opts} != opts:
        remove_run_files(run_dir, manifest.get("run_id"), "directions")
        old = {}
    manifest["kinds"]["directions"] = {"started_at": old.get("started_at") or now(),
                                       "finished_at": None, "options": opts}


def finish(run_dir: Path, manifest: dict, sft, plan, device: str,
           keys: set[str] | None = None) -> None:
    """Token labels, then the kind's row in raw.compute_runs: what was done.
    `keys`: the files an object store holds besides the local ones (its listing)."""
    import duckdb

    from compute.io.files import now
    from ingest.runfolder import inventory

    info = manifest["kinds"]["directions"]
    tokens = write_tokens(run_dir, sft, plan)
    files = [str(p) for p in (run_dir / "directions" / "vectors").glob("*.parquet")]
    full = duckdb.sql(
        "select count(distinct tensor) from read_parquet(?)",
        params=[[str(p) for p in (run_dir / "directions" / "intruders").glob(
            "*.parquet")]]).fetchall()[0][0] if files else 0
    n = duckdb.sql("select count(distinct tensor) from read_parquet(?)",
                   params=[files]).fetchall()[0][0] if files else 0
    info["options"] |= {
        "matrices_with_vectors": n, "matrices_with_full_base_basis": full,
        "full_base_basis": "all of W_base's singular vectors (intruders) where "
        "min(n_rows, n_cols) <= full_basis_max on a CPU, every matrix on a GPU",
        "long_side_overlap_max_r": dirs.OVERLAP_RANKS[-1],
        "intruder_side": "left (rows of an (out, in) weight)",
        "null": "Haar-random directions, one per top vector, seeded by tensor name",
        "token_labels": tokens}
    info |= {"finished_at": now(), "device": device, "dtype": "fp64 gram",
             "inventory": inventory(run_dir, "directions", keys)}
