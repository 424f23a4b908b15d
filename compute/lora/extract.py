"""Extract a PEFT LoRA adapter from a fine-tune: dW's top-r singular triplets.

    python -m compute.extract_lora --pair planted --rank 8 --out data/adapters/p8
    python -m compute.extract_lora --base A --sft B --name N --rank auto --out DIR
    python -m compute.extract_lora --pair 7B --min-energy 0.9 --out DIR
    python -m compute.extract_lora ... --modules q_proj,v_proj --no-load

For every weight matrix of the pair, one at a time (memory: one matrix in fp64 and
its SVD, whatever the model's size), dW = W_sft - W_base is formed in fp64 from the
two checkpoints' stored values (an adapter fine-tune's dW from its factors), its
SVD dW = U S V^T is taken in fp64 (LAPACK through NumPy; torch on a CUDA device with
--device cuda), and the top r triplets are split evenly between the factors:

    B = U_r S_r^(1/2)   (out, r)        A = S_r^(1/2) V_r^T   (r, in)

so that B @ A = U_r S_r V_r^T, the best rank-r approximation of dW (Eckart-Young).
An embedding's factors are PEFT's lora_embedding_A (r, vocab) and lora_embedding_B
(dim, r), whose product is the transpose. lora_alpha equals each module's rank
(alpha_pattern beside rank_pattern), so PEFT's scale alpha / r is 1 everywhere.

The rank per matrix:
- `--rank R`: R for every matrix (an error names the first matrix with
  min(rows, cols) < R, before any work);
- `--rank auto`: the suggested LoRA rank of the matrix's module type, from the
  warehouse's marts.fct_pair_summary (dbt), or, when the warehouse has no spectra of
  the pair, from the spectra files of its compute.run (OUT/<pair>/spectra: the power
  of two at or above the median over layers of min(signal rank, r_0.9)); an error
  when neither has the pair;
- `--min-energy q`: per matrix the smallest r whose triplets hold share q of
  ||dW||_F^2 (with `--rank R` as well: at most R).
A matrix whose dW is exactly zero gets no adapter (rank 0).

mergekit's and kohya's choices (compute/lora/choices.py, docs/lora.md): `--embed
lora|full|skip` (the embedding and head factored, stored whole as PEFT's
modules_to_save, or left out), `--include` / `--exclude REGEX`, `--sv-epsilon e`
(only s_i > e) and `--dynamic sv_ratio|sv_cumulative|sv_fro --dynamic-param p`
(kohya's per-matrix ranks, capped by --rank).

Output: DIR/adapter_config.json and DIR/adapter_model.safetensors in PEFT's format
(`PeftModel.from_pretrained(base_model, DIR)` loads them as they are; fp32 factors
unless --dtype bfloat16), written in a temporary folder and renamed, and
DIR/lora_extraction.parquet: one row per matrix (rank kept, ||dW||_F^2 and the share
retained, s_r and s_(r+1)), which is loaded into raw.lora_extractions (replacing the
rows of the same pair and adapter name) unless --no-load. The adapter holds the
matrices only: 1-D tensors (norms, biases) stay the base's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from compute.arch.naming import Layout
from compute.io.adapters import delta, open_pair
from compute.io.checkpoints import Checkpoint, CheckpointError
from compute.io.files import atomic_folder
from compute.linalg.ranks import energy_rank, signal_rank
from compute.linalg.spectra import to_float64
from compute.lora import choices as lora_choices
from compute.plan.pair import pair_plan

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXTRACTION_FILE = "lora_extraction.parquet"
EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings")
VOCAB_SIDE = (*EMBEDDINGS, "lm_head")  # what --embed decides about


class ExtractError(ValueError):
    """Input the extraction refuses (the message names the matrix or the source)."""


# ---------------------------------------------------------------- the pair


@dataclasses.dataclass
class Target:
    """One weight matrix of the pair that gets (or could get) a LoRA."""

    tensor: str  # checkpoint name, "model.layers.0.self_attn.q_proj.weight"
    module_path: str  # the module's name in the model, without ".weight"
    layer: int | None
    module: str  # module type (compute.arch.naming): q_proj, ..., embed_tokens, lm_head
    shape: tuple[int, int]  # stored (rows, cols)
    embedding: bool

    @property
    def n_short(self) -> int:
        """min(rows, cols): the largest rank of the matrix."""
        return min(self.shape)

    @property
    def vocab_side(self) -> bool:
        """An embedding or the LM head: what --embed lora|full|skip decides about."""
        return self.module in VOCAB_SIDE


def targets(base: Checkpoint, sft: Checkpoint,
            modules: list[str] | None = None) -> list[Target]:
    """The 2-D weight matrices of the pair (of the module types `modules`, default
    all), in file order. Layouts a PEFT Linear/Embedding LoRA does not cover as one
    module are refused by name."""
    plan = pair_plan(base, sft)
    if plan.vocab is not None:
        raise ExtractError(f"{sft.ref}: a resized vocabulary or a head untied from "
                           f"{base.ref}; extraction needs the same tensors on both sides")
    layout = Layout(base.config)
    out, found = [], set()
    for name in plan.matrices:
        shape = tuple(base.tensors[name].shape)
        views = plan.views[name]
        if len(shape) != 2 or len(views) != 1 or views[0].rows is not None:
            raise ExtractError(f"tensor {name} ({list(shape)}): a stacked or fused "
                               "weight; extraction handles one matrix per module")
        if layout.is_conv1d(name):
            raise ExtractError(f"tensor {name}: stored [in, out] (Conv1D); extraction "
                               "writes Linear adapters only")
        if not name.endswith(".weight"):
            raise ExtractError(f"tensor {name}: not a module's .weight")
        layer, module, _ = layout.place(name)
        found.add(module)
        if modules and module not in modules:
            continue
        out.append(Target(name, name.removesuffix(".weight"), layer, module, shape,
                          module in EMBEDDINGS))
    unknown = sorted(set(modules or ()) - found)
    if unknown:
        raise ExtractError(f"--modules {','.join(unknown)}: the pair has no such "
                           f"module type (it has {', '.join(sorted(found))})")
    return out


@dataclasses.dataclass
class Triplets:
    """dW's top singular triplets: dW ~ u @ diag(s) @ vt."""

    u: np.ndarray  # (m, k)
    s: np.ndarray  # (k,) descending, all min(m, n) of them (for shares)
    vt: np.ndarray  # (k, n)
    total_sq: float  # ||dW||_F^2, summed from the entries

    def retained(self, r: int) -> float:
        """sum of the top-r squared singular values of dW."""
        return float(np.sum(self.s[:r] ** 2))

    def product(self, r: int) -> np.ndarray:
        """(m, n) fp64: the rank-r truncation U_r S_r V_r^T."""
        return (self.u[:, :r] * self.s[:r]) @ self.vt[:r]


def svd(dw: np.ndarray, keep: int, device: str = "cpu") -> Triplets:
    """fp64 SVD of dW, keeping `keep` singular vectors (all singular values)."""
    total = float(np.einsum("ij,ij->", dw, dw))
    if device == "cpu":
        u, s, vt = np.linalg.svd(dw, full_matrices=False)
    else:
        import torch

        t = torch.from_numpy(dw).to(device)
        u, s, vt = (x.cpu().numpy() for x in torch.linalg.svd(t, full_matrices=False))
    return Triplets(np.ascontiguousarray(u[:, :keep]), s,
                    np.ascontiguousarray(vt[:keep]), total)


# ---------------------------------------------------------------- --rank auto


def suggested_from_spectra(run_dir: Path) -> dict[str, int]:
    """{module type: suggested rank} from a compute.run's spectra files: the power
    of two at or above the median over layers of min(signal rank, r_0.9)."""
    import pyarrow.parquet as pq

    files = sorted((run_dir / "spectra").glob("[0-9]*.parquet"))
    if not files:
        return {}
    per: dict[str, list[int]] = {}
    for f in files:
        for row in pq.read_table(f).to_pylist():
            if row["role"] != "delta":
                continue
            s = np.asarray(row["singular_values"], dtype=np.float64)
            if not len(s) or not np.any(s):
                continue  # unchanged: no rank to suggest from it
            r90 = energy_rank(s, 0.9)  # as fct_pair_summary: min(signal, r_0.9)
            signal = signal_rank(s, row["n_rows"], row["n_cols"], row["noise_sigma"])
            r = r90 if signal is None else min(signal, r90)
            per.setdefault(row["module"], []).append(r)
    return {m: 1 << max(0, math.ceil(math.log2(max(1.0, float(np.median(v))))))
            for m, v in per.items()}


def suggested_from_warehouse(db: Path, pair: str) -> dict[str, int]:
    """{module type: suggested_lora_rank} of marts.fct_pair_summary ({} without)."""
    if not db.exists():
        return {}
    import duckdb

    from ingest.warehouse import connect

    try:
        with connect(db, read_only=True) as con:
            rows = con.execute("select module, suggested_lora_rank from "
                               "marts.fct_pair_summary where pair = ? and "
                               "suggested_lora_rank is not null", [pair]).fetchall()
    except duckdb.Error:
        return {}
    return {m: int(r) for m, r in rows}


def auto_ranks(pair: str, db: Path, run_dir: Path) -> tuple[dict[str, int], str]:
    """The suggested rank per module type and where it came from."""
    ranks = suggested_from_warehouse(db, pair)
    if ranks:
        return ranks, f"{db}: marts.fct_pair_summary"
    ranks = suggested_from_spectra(run_dir)
    if ranks:
        return ranks, f"{run_dir / 'spectra'}"
    raise ExtractError(
        f"--rank auto: no spectra of pair {pair!r}: neither {db} (marts.fct_pair_"
        f"summary, after dbt) nor {run_dir / 'spectra'} has them. Run python -m "
        f"compute.run for the pair first (--skip-behaviour is enough), or give "
        "--rank R / --min-energy q")


# ---------------------------------------------------------------- the adapter


@dataclasses.dataclass
class Choice:
    """How ranks are chosen: fixed, per module type (auto), by energy share."""

    rank: int | None = None
    by_module: dict[str, int] | None = None
    min_energy: float | None = None
    sv_epsilon: float | None = None  # mergekit's absolute cut
    dynamic: str | None = None  # kohya's sv_ratio | sv_cumulative | sv_fro
    dynamic_param: float | None = None

    def rule(self) -> str:
        """How ranks are chosen: a --dynamic rule, min_energy, sv_epsilon, auto
        (per module type) or fixed."""
        if self.dynamic is not None:
            return self.dynamic
        if self.min_energy is not None:
            return "min_energy"
        if self.rank is None and self.by_module is None and self.sv_epsilon:
            return "sv_epsilon"
        return "auto" if self.by_module is not None else "fixed"

    def planned(self, t: Target) -> int:
        """The rank asked for before the spectrum is known (the cap with energy)."""
        if self.by_module is not None:
            if t.module not in self.by_module:
                raise ExtractError(f"--rank auto: no suggested rank for module type "
                                   f"{t.module} ({t.tensor})")
            return min(self.by_module[t.module], t.n_short)
        return t.n_short if self.rank is None else self.rank

    def pick(self, t: Target, s: np.ndarray) -> int:
        """The rank of target `t` whose dW has singular values `s` (never more
        than its non-zero ones)."""
        r = self.planned(t)
        if self.min_energy is not None:
            r = min(r, energy_rank(s, self.min_energy))
        if self.dynamic is not None:
            r = lora_choices.kohya_rank(s, self.dynamic, self.dynamic_param, r)
        if self.sv_epsilon:
            r = lora_choices.epsilon_rank(s, self.sv_epsilon, r)
        return min(r, int(np.count_nonzero(s)))  # no zero directions


def check_ranks(tgts: list[Target], choice: Choice) -> None:
    """Refuse a rank below 1 or above a selected matrix's min(rows, cols), or
    a --min-energy outside (0, 1] (ExtractError naming the matrix)."""
    if choice.rank is not None and choice.rank < 1:
        raise ExtractError(f"--rank must be >= 1, not {choice.rank}")
    if choice.min_energy is not None and not 0 < choice.min_energy <= 1:
        raise ExtractError(f"--min-energy must be in (0, 1], not {choice.min_energy}")
    for t in tgts:
        if choice.rank is not None and choice.rank > t.n_short:
            raise ExtractError(
                f"--rank {choice.rank} is above min(rows, cols) = {t.n_short} of "
                f"{t.tensor} ({t.shape[0]} x {t.shape[1]}); the largest rank every "
                f"matrix has is {min(x.n_short for x in tgts)} (or use --modules)")


def factors(t: Target, tr: Triplets, r: int) -> dict[str, np.ndarray]:
    """PEFT's saved tensors of one module at rank r (scale 1)."""
    root = np.sqrt(tr.s[:r])
    b = tr.u[:, :r] * root  # (m, r)
    a = root[:, None] * tr.vt[:r]  # (r, n)
    key = f"base_model.model.{t.module_path}"
    if t.embedding:  # delta = (B @ A)^T: A (r, vocab), B (dim, r)
        return {f"{key}.lora_embedding_A": b.T, f"{key}.lora_embedding_B": a.T}
    return {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}


def adapter_config(base: Checkpoint, ranks: dict[str, int],
                   full: list[Target] = ()) -> dict:
    """adapter_config.json: target modules by full name, r the most common rank,
    rank_pattern / alpha_pattern for the others, alpha = rank (scale 1); the
    modules stored whole (`full`) as modules_to_save, by their last name."""
    values = list(ranks.values())
    r = max(set(values), key=lambda v: (values.count(v), v))
    pattern = {m: k for m, k in ranks.items() if k != r}
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base.ref), "revision": None,
        "r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": pattern,
        "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True,
        "modules_to_save": sorted({t.module_path.rsplit(".", 1)[-1] for t in full})
        or None,
        "layers_to_transform": None, "layers_pattern": None,
    }


def finite_delta(base: Checkpoint, sft: Checkpoint, name: str) -> np.ndarray:
    """dW of `name` (compute.io.adapters.delta), refused where it holds a NaN or an
    Inf (ExtractError naming the tensor and the side whose weights are not finite)."""
    dw = delta(base, sft, name)
    if not np.isfinite(dw).all():
        raise ExtractError(nonfinite_message(base, sft, name))
    return dw


def nonfinite_message(base: Checkpoint, sft: Checkpoint, name: str) -> str:
    """One line naming tensor `name` and the side (base, SFT) with NaN/Inf weights."""
    for side, ck in (("base", base), ("SFT", sft)):
        w = to_float64(*ck.read_array(name))
        bad = int(np.count_nonzero(~np.isfinite(w)))
        if bad:
            return (f"tensor {name}: {bad} NaN/Inf value(s) of {w.size} in the "
                    f"{side} ({ck.ref}); its weights must be finite")
    return f"tensor {name}: W_sft - W_base is not finite (overflow in fp64)"


def check_finite(base: Checkpoint, sft: Checkpoint, names: list[str]) -> None:
    """Refuse the first of `names` whose weights (either side's) hold a NaN or an
    Inf (ExtractError naming the tensor and the side)."""
    for name in names:
        finite_delta(base, sft, name)


def iter_triplets(base: Checkpoint, sft: Checkpoint, tgts: list[Target], keep,
                  device: str = "cpu", progress: bool = True, desc: str = "svd"
                  ) -> Iterator[tuple[Target, Triplets]]:
    """(target, its dW's triplets) in order; `keep(target)` says how many singular
    vectors to keep. On a CPU one matrix per core at a time, each with single-
    threaded BLAS (compute.linalg.spectra's workers: threaded LAPACK on a shared machine
    spins); at most two matrices per worker are in flight."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    from tqdm import tqdm

    from compute.linalg.spectra import spectra_workers, worker_threads

    def one(t: Target) -> tuple[Target, Triplets]:
        return t, svd(finite_delta(base, sft, t.tensor), keep(t), device)

    workers = spectra_workers(device, len(tgts))
    todo = iter(tgts)
    bar = tqdm(total=len(tgts), desc=desc, unit="matrix", disable=not progress,
               dynamic_ncols=True)
    with worker_threads(workers), ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(one, t) for t in islice(todo, 2 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(one, nxt))
                bar.update(1)
                yield result
        finally:  # an error downstream: start nothing new
            for fut in pending:
                fut.cancel()
            bar.close()


def full_rows(base: Checkpoint, sft: Checkpoint, full: list[Target], np_dtype
              ) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The modules stored whole (PEFT's modules_to_save: W_sft's matrix under
    `base_model.model.<tensor>`, as mergekit writes them) and their rows: all of
    dW kept, r = min(m, n), m n parameters."""
    tensors, rows = {}, []
    for t in full:
        ws = to_float64(*sft.read_array(t.tensor))
        dw = delta(base, sft, t.tensor)
        total = float(np.einsum("ij,ij->", dw, dw))
        tensors[f"base_model.model.{t.tensor}"] = np.ascontiguousarray(ws, np_dtype)
        rows.append({"tensor": t.tensor, "module_path": t.module_path,
                     "layer": t.layer, "module": t.module, "n_rows": t.shape[0],
                     "n_cols": t.shape[1], "rank": t.n_short, "frobenius_sq": total,
                     "retained_sq": total,
                     "retained_share": 1.0 if total > 0 else None,
                     "s_last": None, "s_next": None,
                     "n_params": t.shape[0] * t.shape[1], "full_rank": True})
    return tensors, rows


def extract(base: Checkpoint, sft: Checkpoint, tgts: list[Target], choice: Choice,
            out: Path, *, dtype: str = "float32", device: str = "cpu",
            progress: bool = True, full: list[Target] = ()) -> list[dict]:
    """Write the adapter to `out` (temporary folder, then renamed); returns one row
    per target: its rank and what it keeps of ||dW||_F^2; the `full` targets are
    stored whole (modules_to_save)."""
    from safetensors.numpy import save_file

    check_ranks(tgts, choice)
    np_dtype = {"float32": np.float32, "float64": np.float64}.get(dtype)
    tensors, ranks, rows = {}, {}, []
    for t, tr in iter_triplets(base, sft, tgts, choice.planned, device, progress,
                               desc="extract"):
        r = choice.pick(t, tr.s)
        if r:
            for key, v in factors(t, tr, r).items():
                tensors[key] = np.ascontiguousarray(v, dtype=np_dtype or np.float32)
            ranks[t.module_path] = r
        rows.append({"tensor": t.tensor, "module_path": t.module_path,
                     "layer": t.layer, "module": t.module, "n_rows": t.shape[0],
                     "n_cols": t.shape[1], "rank": r,
                     "frobenius_sq": tr.total_sq, "retained_sq": tr.retained(r),
                     "retained_share": tr.retained(r) / tr.total_sq
                     if tr.total_sq > 0 else None,
                     "s_last": float(tr.s[r - 1]) if r else None,
                     "s_next": float(tr.s[r]) if r < len(tr.s) else None,
                     "n_params": r * (t.shape[0] + t.shape[1]), "full_rank": False})
    whole, whole_rows = full_rows(base, sft, list(full), np_dtype or np.float32)
    tensors |= whole
    rows += whole_rows
    if not ranks:
        raise ExtractError(f"{sft.ref}: every selected matrix equals the base's "
                           "(dW = 0): nothing to extract")
    if dtype == "bfloat16":
        import torch
        from safetensors.torch import save_file as save_torch

        writer = lambda d, p: save_torch(  # noqa: E731
            {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in d.items()}, p,
            metadata={"format": "pt"})
    else:
        writer = lambda d, p: save_file(d, p, metadata={"format": "pt"})  # noqa: E731
    with atomic_folder(out) as tmp:
        writer(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(
            adapter_config(base, ranks, list(full)), indent=2))
    return rows


# ---------------------------------------------------------------- command line


@dataclasses.dataclass
class Config:
    pair: str
    base: str
    sft: str
    out: Path
    rank: str | None = None  # "R" or "auto"
    min_energy: float | None = None
    modules: list[str] | None = None
    name: str | None = None  # the adapter's name in the warehouse (default out's)
    runs: Path = Path("data/runs")
    db: Path | None = None
    load: bool = True
    dtype: str = "float32"
    device: str = "cpu"
    progress: bool = True
    embed: str = "lora"  # lora | full (modules_to_save) | skip
    include: list[str] = dataclasses.field(default_factory=list)
    exclude: list[str] = dataclasses.field(default_factory=list)
    sv_epsilon: float | None = None
    dynamic: str | None = None
    dynamic_param: float | None = None

    def options(self) -> dict:
        """The extraction choices, as raw.lora_extractions.options records them."""
        return {"embed": self.embed, "include": self.include, "exclude": self.exclude,
                "sv_epsilon": self.sv_epsilon, "dynamic": self.dynamic,
                "dynamic_param": self.dynamic_param, "modules": self.modules}


def split_targets(tgts: list[Target], cfg: Config) -> tuple[list[Target], list[Target]]:
    """(low-rank targets, targets stored whole) after --include / --exclude and
    --embed, as mergekit decides them: with --embed full an embedding or LM head
    not excluded is stored whole whatever --include says; with skip it is left
    out."""
    low, full = [], []
    for t in tgts:
        if t.vocab_side and cfg.embed != "lora":
            if cfg.embed == "full" and not lora_choices.excluded(t.module_path,
                                                                 cfg.exclude):
                full.append(t)
        elif lora_choices.selected(t.module_path, cfg.include, cfg.exclude):
            low.append(t)
    if not low:
        raise ExtractError("--include/--exclude/--embed leave no matrix to factor")
    return low, full


def pair_args(ap: argparse.ArgumentParser) -> None:
    """--pair / --base / --sft / --name, as compute.run takes them."""
    ap.add_argument("--pair", help="a known pair of compute.run (e.g. 7B, demo, "
                    "planted)")
    ap.add_argument("--base", help="base checkpoint: hub id or local folder")
    ap.add_argument("--sft", help="fine-tuned checkpoint (or LoRA adapter)")
    ap.add_argument("--name", help="the pair's name (with --base/--sft)")


def resolve_pair_args(ap: argparse.ArgumentParser, a) -> tuple[str, str, str]:
    """(pair name, base ref, sft ref) from --pair or --base/--sft/--name
    (compute.pairs.registry.resolve_pair); builds the planted pair on first use."""
    from compute.pairs.registry import PairError, build_if_planted, resolve_pair

    try:
        name, base, sft = resolve_pair(a.pair, a.base, a.sft, a.name)
    except PairError as exc:
        ap.error(str(exc))
    build_if_planted(name, base)
    return name, base, sft


def parse_args(argv: list[str] | None = None) -> Config:
    """python -m compute.extract_lora's command line as a Config."""
    ap = argparse.ArgumentParser(
        prog="python -m compute.extract_lora",
        description="A PEFT LoRA adapter from dW = W_sft - W_base: each matrix's top-r"
        " singular triplets (fp64 SVD), one matrix at a time.")
    pair_args(ap)
    ap.add_argument("--rank", help="R (every matrix) or 'auto' (the suggested rank "
                    "per module type, from the warehouse or the run's spectra)")
    ap.add_argument("--min-energy", type=float, metavar="Q",
                    help="per matrix the smallest r holding share Q of ||dW||_F^2 "
                    "(with --rank: at most that)")
    ap.add_argument("--modules", help="module types to adapt, comma-separated "
                    "(default all: q_proj,...,embed_tokens,lm_head)")
    ap.add_argument("--out", type=Path, required=True, help="the adapter's folder")
    ap.add_argument("--adapter-name", dest="adapter_name", help="its name in "
                    "raw.lora_extractions (default the folder's name)")
    ap.add_argument("--runs", type=Path, default=Path("data/runs"), help="compute.run"
                    "'s --out, for --rank auto without a warehouse (default data/runs)")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--no-load", dest="load", action="store_false",
                    help="write the adapter only, not raw.lora_extractions")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the factors' storage (default float32)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the SVDs run (fp64)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    choice_args(ap)
    a = ap.parse_args(argv)
    if a.rank is None and a.min_energy is None and a.dynamic is None \
            and not a.sv_epsilon:
        ap.error("give --rank R|auto, --min-energy Q, --dynamic METHOD or "
                 "--sv-epsilon E")
    try:
        lora_choices.check(a.dynamic, a.dynamic_param, a.sv_epsilon, a.embed,
                           a.include + a.exclude)
    except lora_choices.ChoiceError as exc:
        ap.error(str(exc))
    if a.rank not in (None, "auto"):
        try:
            int(a.rank)
        except ValueError:
            ap.error(f"--rank takes an integer or 'auto', not {a.rank!r}")
    pair, base, sft = resolve_pair_args(ap, a)
    modules = [m.strip() for m in a.modules.split(",") if m.strip()] \
        if a.modules else None
    return Config(pair, base, sft, a.out, a.rank, a.min_energy, modules,
                  a.adapter_name, a.runs, a.db, a.load, a.dtype, a.device, a.progress,
                  a.embed, a.include, a.exclude, a.sv_epsilon, a.dynamic,
                  a.dynamic_param)


def choice_args(ap: argparse.ArgumentParser) -> None:
    """mergekit's and kohya's extraction choices (compute/lora_choices.py)."""
    ap.add_argument("--embed", default="lora", choices=lora_choices.EMBED_MODES,
                    help="embeddings and the LM head: factored like any matrix "
                    "(lora, the default; mergekit's --embed-lora), stored whole as "
                    "PEFT modules_to_save (full, mergekit's default) or left out")
    ap.add_argument("--include", action="append", default=[], metavar="REGEX",
                    help="only modules whose name matches (re.search; repeatable)")
    ap.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                    help="no module whose name matches (repeatable)")
    ap.add_argument("--sv-epsilon", type=float, metavar="E",
                    help="keep only singular values above E (mergekit's cut)")
    ap.add_argument("--dynamic", choices=lora_choices.DYNAMIC,
                    help="kohya's per-matrix rank rule, capped by --rank")
    ap.add_argument("--dynamic-param", type=float, metavar="P",
                    help="its target: s_1 / s_r (sv_ratio), share of sum s "
                    "(sv_cumulative) or of ||dW||_F (sv_fro)")


def run(cfg: Config) -> list[dict]:
    """Extract the adapter and write its extraction rows; returns the rows."""
    from ingest.warehouse import db_path

    t0 = time.perf_counter()
    base, sft = open_pair(cfg.base, cfg.sft)
    tgts, full = split_targets(targets(base, sft, cfg.modules), cfg)
    if cfg.rank == "auto":
        by_module, source = auto_ranks(cfg.pair, db_path(cfg.db), cfg.runs / cfg.pair)
        print(f"ranks from {source}: " + ", ".join(f"{m} {r}" for m, r in
                                                   sorted(by_module.items())))
        choice = Choice(by_module=by_module, min_energy=cfg.min_energy)
    else:
        choice = Choice(rank=int(cfg.rank) if cfg.rank else None,
                        min_energy=cfg.min_energy)
    choice = dataclasses.replace(choice, sv_epsilon=cfg.sv_epsilon,
                                 dynamic=cfg.dynamic, dynamic_param=cfg.dynamic_param)
    rows = extract(base, sft, tgts, choice, cfg.out, dtype=cfg.dtype,
                   device=cfg.device, progress=cfg.progress, full=full)
    name = cfg.name or cfg.out.name
    meta = {"extraction": name, "pair": cfg.pair, "base_model": base.ref,
            "sft_model": sft.ref, "rule": choice.rule(),
            "rank_asked": cfg.rank, "min_energy": cfg.min_energy,
            "adapter_dir": str(cfg.out), "dtype": cfg.dtype,
            "options": json.dumps(cfg.options()),
            "seconds": round(time.perf_counter() - t0, 3)}
    rows = [meta | r for r in rows]
    write_extraction(rows, cfg.out / EXTRACTION_FILE)
    kept = sum(r["retained_sq"] for r in rows)
    total = sum(r["frobenius_sq"] for r in rows)
    n = sum(1 for r in rows if r["rank"])
    print(f"adapter {cfg.out}: {n} of {len(rows)} matrices, "
          f"{sum(r['n_params'] for r in rows):,} parameters, "
          f"{kept / total if total else 0:.4f} of ||dW||_F^2 kept "
          f"({time.perf_counter() - t0:.1f} s)")
    return rows


def write_extraction(rows: list[dict], path: Path) -> None:
    """raw.lora_extractions rows to a Parquet file (written atomically)."""
    import pyarrow as pa

    from compute.io.files import write_parquet
    from ingest.lora import extraction_schema

    write_parquet(pa.Table.from_pylist(rows, schema=extraction_schema()), path)


def main(argv: list[str] | None = None) -> int:
    """0 done; 2 refused input (named); 3 the warehouse is busy (the adapter is
    written: load it later with python -m ingest.lora DIR)."""
    cfg = parse_args(argv)
    try:
        run(cfg)
    except (CheckpointError, ExtractError) as exc:
        print(f"error: {exc}\nNothing was written.", file=sys.stderr)
        return 2
    if cfg.load:
        from ingest.lora import load_or_explain

        return load_or_explain(cfg.out / EXTRACTION_FILE, cfg.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
