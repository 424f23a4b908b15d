"""How much of the fine-tuned behaviour a rank-r LoRA keeps, for each r.

    python -m compute.lora_recovery --pair planted --ranks 1,4,16,64
    python -m compute.lora_recovery --pair 7B --ranks 8,64,full --modules q_proj,v_proj
    python -m compute.lora_recovery --base A --sft B --name N --prompts p.parquet

For each rank r (r = 0, the base, is always scored; `full` adds dW whole), the model
W_base + U_r S_r V_r^T (each matrix's best rank-r approximation of dW, from its fp64
SVD: compute.lora.extract) is merged in memory, in the scoring dtype, from a fresh
copy of the base, and scored on the prompts next to the SFT model by the same scorer
as compute.run's behaviour half (compute.behaviour.scoring.Scorer: same prefix token,
windows, LM-head chunks). One rank-r model at a time: the SFT model and one merged
model are resident, as the base and the SFT are in the behaviour run (7B in bf16 on
one 80 GB device: docs/lora.md). A matrix with min(rows, cols) <= r takes dW whole.

What is truncated: the module types of --modules (default all matrices); the other
matrices keep the base's weights. The 1-D tensors (norms, biases) are the SFT's by
default (`--vectors sft`: the question is the matrices' rank; a LoRA fine-tune
usually trains or keeps them apart), so that r = full is the SFT model itself;
`--vectors base` keeps the base's (then r = full differs from the SFT by them).

Per post and rank it keeps sums over the post's tokens of the rank-r model's and the
SFT's log-probs and of KL(p_sft || p_r) and KL(p_r || p_sft); the dbt marts turn
them into the share of the SFT-minus-base log-prob delta that rank r recovers,

    recovered(r) = sum_posts sum_tokens (lp_r - lp_0) / sum_posts sum_tokens (lp_sft - lp_0)

with a 95% interval over posts, the share of KL(p_sft || p_base) removed, and the
smallest r reaching 90% / 99% (marts.fct_lora_recovery*). Output, resumable per
rank: OUT/<pair>/lora_recovery/<modules>/posts/r<rank>.parquet and ranks.parquet,
then loaded into raw.lora_recovery_posts and raw.lora_recovery_ranks.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from compute.io.checkpoints import CheckpointError
from compute.linalg.spectra import to_float64
from compute.lora.extract import (
    ExtractError,
    Target,
    delta,
    iter_triplets,
    open_pair,
    pair_args,
    resolve_pair_args,
    targets,
)
from compute.run.cli import attn_arg

FULL = "full"


@dataclasses.dataclass
class Config:
    pair: str
    base: str
    sft: str
    ranks: list[int]  # without 0 (always scored)
    full: bool = False
    modules: list[str] | None = None
    prompts: Path | None = None
    db: Path | None = None
    out: Path = Path("data/runs")
    device: str = "auto"
    dtype: str | None = None
    batch_size: int = 8
    window: int = 1024
    vectors: str = "sft"
    limit: int | None = None
    load: bool = True
    progress: bool = True
    embed_full: bool = False  # embeddings and LM head whole at every rank (mergekit)
    attn: str | None = None  # forced attention implementation (default: per class)

    @property
    def modules_key(self) -> str:
        """The truncated module types, sorted and comma-joined ("all": every one),
        and "+embed_full" when the vocabulary side is taken whole."""
        key = ",".join(sorted(self.modules)) if self.modules else "all"
        return key + ("+embed_full" if self.embed_full else "")

    @property
    def run_dir(self) -> Path:
        """OUT/<pair>/lora_recovery/<modules, + joined>."""
        return self.out / self.pair / "lora_recovery" / self.modules_key.replace(",", "+")


def parse_ranks(text: str) -> tuple[list[int], bool]:
    """'1,4,16,full' -> ([1, 4, 16], True); 0 is implied."""
    ranks, full = set(), False
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == FULL:
            full = True
            continue
        try:
            r = int(part)
        except ValueError:
            raise ValueError(f"--ranks: {part!r} is neither an integer nor 'full'"
                             ) from None
        if r < 0:
            raise ValueError(f"--ranks: {r} is negative")
        if r:
            ranks.add(r)
    return sorted(ranks), full


class Factors:
    """Each target's top singular triplets (fp32 copies, scaled: u s and vt), kept
    for the largest rank asked: r (rows + cols) floats per matrix."""

    def __init__(self, base, sft, tgts: list[Target], rmax: int, progress: bool,
                 device: str = "cpu"):
        self.us: dict[str, np.ndarray] = {}
        self.vt: dict[str, np.ndarray] = {}
        self.s_sq: dict[str, np.ndarray] = {}
        self.total: dict[str, float] = {}
        for t, tr in iter_triplets(base, sft, tgts, lambda t: min(rmax, t.n_short),
                                   device=device, progress=progress, desc="svd"):
            self.us[t.tensor] = (tr.u * tr.s[:tr.u.shape[1]]).astype(np.float32)
            self.vt[t.tensor] = tr.vt.astype(np.float32)
            self.s_sq[t.tensor] = tr.s ** 2
            self.total[t.tensor] = tr.total_sq

    def update(self, t: Target, r: int) -> np.ndarray:
        """(m, n) fp64: U_r S_r V_r^T of t's dW."""
        return (self.us[t.tensor][:, :r].astype(np.float64)
                @ self.vt[t.tensor][:r].astype(np.float64))


def merge(model, base, sft, tgts: list[Target], factors: Factors, r: int | None,
          vectors: str, vector_names: list[str]) -> None:
    """Turn a freshly loaded base `model` into W_base + rank-r truncation of dW
    (r None: dW whole), in place, in the model's dtype; 1-D tensors from `vectors`."""
    import torch

    def put(name: str, value: np.ndarray) -> None:
        try:
            p = model.get_parameter(name)
        except AttributeError:
            raise ExtractError(f"tensor {name}: the loaded model has no such "
                               "parameter") from None
        if tuple(p.shape) != value.shape:
            raise ExtractError(f"tensor {name}: {list(value.shape)} in the checkpoint,"
                               f" {list(p.shape)} in the loaded model")
        p.copy_(torch.from_numpy(value).to(device=p.device, dtype=p.dtype))

    with torch.no_grad():
        for t in tgts:
            wb = to_float64(*base.read_array(t.tensor))
            if r is None:
                put(t.tensor, wb + delta(base, sft, t.tensor))
            elif r > 0:
                k = min(r, t.n_short)
                put(t.tensor, wb + factors.update(t, k))
        if vectors == "sft":
            for name in vector_names:
                put(name, to_float64(*sft.read_array(name)))


def split_whole(tgts: list[Target], embed_full: bool
                ) -> tuple[list[Target], list[Target]]:
    """(targets truncated to rank r, targets taking dW whole at every rank): with
    --embed-full the embeddings and the LM head are whole, as mergekit-extract-lora
    stores them by default (modules_to_save)."""
    if not embed_full:
        return tgts, []
    return ([t for t in tgts if not t.vocab_side], [t for t in tgts if t.vocab_side])


def merge_whole(model, base, sft, whole: list[Target]) -> tuple[float, int]:
    """Put W_base + dW (= W_sft) of each `whole` target into `model` (None: only
    measure); returns (sum of their ||dW||_F^2, their parameters m n)."""
    import torch

    sq, params = 0.0, 0
    for t in whole:
        dw = delta(base, sft, t.tensor)
        sq += float(np.einsum("ij,ij->", dw, dw))
        params += t.shape[0] * t.shape[1]
        if model is not None:
            p = model.get_parameter(t.tensor)
            with torch.no_grad():
                p.copy_(torch.from_numpy(to_float64(*base.read_array(t.tensor)) + dw)
                        .to(device=p.device, dtype=p.dtype))
    return sq, params


def post_rows(posts, results, run_id: str, pair: str, modules: str, rank: int
              ) -> list[dict]:
    """raw.lora_recovery_posts rows of scored posts at rank `rank`."""
    return [{"run_id": run_id, "pair": pair, "modules": modules, "rank": rank,
             "post_id": p.post_id, "site": p.site, "grp": p.grp,
             "n_tokens": p.n_tokens,
             "sum_logprob": float(np.sum(res.logprob["base"])),
             "sum_logprob_sft": float(np.sum(res.logprob["sft"])),
             "sum_kl_sft_rank": float(np.sum(res.shift["kl_sft_base"])),
             "sum_kl_rank_sft": float(np.sum(res.shift["kl_base_sft"]))}
            for p, res in zip(posts, results, strict=True)]


def run(cfg: Config) -> Path:
    """Score every rank; write the Parquet files; return the folder."""
    import pyarrow as pa
    import torch
    from tqdm import tqdm

    from compute.behaviour.scoring import (
        Scorer,
        check_prompts,
        load_model,
        load_prompts,
        load_tokenizer,
        pick_dtype,
        plan_windows,
        prefix_id,
        tokenize_posts,
    )
    from compute.io.files import write_parquet
    from compute.plan.pair import pair_plan
    from ingest.lora import recovery_schemas

    t0 = time.perf_counter()
    base, sft = open_pair(cfg.base, cfg.sft)
    tgts, whole = split_whole(targets(base, sft, cfg.modules), cfg.embed_full)
    vector_names = pair_plan(base, sft).vectors
    if cfg.prompts is None:
        from ingest.warehouse import db_path

        source = db_path(cfg.db)
    else:
        source = cfg.prompts
    try:
        prompts = load_prompts(source)
    except Exception as exc:
        raise ExtractError(f"no prompts from {source} ({exc}); load a site and run "
                           "dbt, or pass --prompts FILE") from exc
    check_prompts(prompts)
    if cfg.limit is not None:
        prompts = prompts.groupby("grp", dropna=False).head(cfg.limit)
    context = cfg.window // 2
    plan_windows(0, cfg.window, context)
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    dtype = pick_dtype(dev, cfg.dtype)
    base_dir, sft_dir = Path(base.path), Path(sft.path)
    tok_b = load_tokenizer(base_dir)
    tok_s = load_tokenizer(sft_dir, fallback=base_dir)
    prefix = prefix_id(tok_b, tok_s)
    posts = [p for p in tokenize_posts(prompts, tok_b, tok_s) if p.n_tokens]
    if not posts:
        raise ExtractError(f"{source}: no prompt with tokens to score")

    run_dir = cfg.run_dir
    want = {"pair": cfg.pair, "base": base.ref, "sft": sft.ref,
            "base_revision": base.revision, "sft_revision": sft.revision,
            "modules": cfg.modules_key, "vectors": cfg.vectors, "window": cfg.window,
            "dtype": str(dtype), "posts": sorted(p.post_id for p in posts)}
    manifest_path = run_dir / "recovery.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if {k: old.get(k) for k in want} != want:
        shutil.rmtree(run_dir, ignore_errors=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        old = want | {"run_id": f"{cfg.pair}-lora-{stamp}"}
        run_dir.mkdir(parents=True, exist_ok=True)
        from compute.io.files import atomic_write_bytes

        atomic_write_bytes(manifest_path, json.dumps(old, indent=1).encode())
    run_id = old["run_id"]

    n_full = max(t.n_short for t in tgts)
    # a rank at or above every matrix's min(rows, cols) is dW whole: 'full'
    full = cfg.full or any(r >= n_full for r in cfg.ranks)
    ranks: list[int | None] = [0, *(r for r in cfg.ranks if r < n_full)]
    ranks += [None] if full else []
    factors = Factors(base, sft, tgts, max((r for r in ranks if r), default=0),
                      cfg.progress, dev.type)  # fp64 SVDs on the scoring device
    whole_sq, whole_params = merge_whole(None, base, sft, whole)
    total_sq = sum(factors.total.values()) + whole_sq
    rank_rows = []
    with torch.inference_mode():
        sft_model = load_model(sft_dir, dev, dtype, cfg.attn, base=base_dir)
        for r in ranks:
            rank = n_full if r is None else r
            path = run_dir / "posts" / (f"r{rank:06d}" + ("-full" if r is None else "")
                                        + ".parquet")
            t1 = time.perf_counter()
            kept = [min(rank, t.n_short) for t in tgts]
            retained = total_sq if r is None else whole_sq * (r > 0) + sum(
                float(np.sum(factors.s_sq[t.tensor][:k])) for t, k in zip(tgts, kept,
                                                                          strict=True))
            if not path.exists():
                model = load_model(base_dir, dev, dtype, cfg.attn)
                merge(model, base, sft, tgts, factors, r, cfg.vectors, vector_names)
                if r != 0:  # r = 0 stays the base as loaded
                    merge_whole(model, base, sft, whole)
                scorer = Scorer(model, sft_model, dev, prefix, cfg.window, context,
                                cfg.batch_size)
                rows = []
                label = FULL if r is None else str(r)
                for i in tqdm(range(0, len(posts), cfg.batch_size),
                              desc=f"rank {label} vs sft", unit="batch",
                              disable=not cfg.progress, dynamic_ncols=True):
                    batch = posts[i:i + cfg.batch_size]
                    rows += post_rows(batch, scorer.score(batch), run_id, cfg.pair,
                                      cfg.modules_key, rank)
                write_parquet(pa.Table.from_pylist(
                    rows, schema=recovery_schemas()["lora_recovery_posts"]), path)
                del model, scorer
            rank_rows.append({
                "run_id": run_id, "pair": cfg.pair, "base_model": base.ref,
                "sft_model": sft.ref, "modules": cfg.modules_key, "rank": rank,
                "is_full": r is None, "n_matrices": len(tgts) + len(whole),
                "n_params": whole_params * (r != 0) + sum(
                    k * sum(t.shape) for t, k in zip(tgts, kept, strict=True)),
                "retained_sq": retained, "frobenius_sq": total_sq,
                "vectors": cfg.vectors, "device": dev.type,
                "dtype": str(dtype).removeprefix("torch."),
                "seconds": round(time.perf_counter() - t1, 3)})
    write_parquet(pa.Table.from_pylist(
        rank_rows, schema=recovery_schemas()["lora_recovery_ranks"]),
        run_dir / "ranks.parquet")
    print(f"lora recovery {cfg.pair} ({cfg.modules_key}): ranks "
          f"{', '.join(FULL if r is None else str(r) for r in ranks)} on {len(posts)}"
          f" posts in {time.perf_counter() - t0:.1f} s; results in {run_dir}")
    return run_dir


def parse_args(argv: list[str] | None = None) -> Config:
    """python -m compute.lora_recovery's command line as a Config."""
    ap = argparse.ArgumentParser(
        prog="python -m compute.lora_recovery",
        description="Score the prompts with W_base + the rank-r truncation of dW for "
        "each r, next to the SFT model: how much of its behaviour each LoRA rank "
        "recovers.")
    pair_args(ap)
    ap.add_argument("--ranks", default="1,4,16,64", help="comma-separated ranks, "
                    "'full' for dW whole (default 1,4,16,64; 0, the base, always)")
    ap.add_argument("--modules", help="module types to truncate (default all)")
    ap.add_argument("--vectors", default="sft", choices=["sft", "base"],
                    help="whose 1-D tensors (norms, biases) the merged models take")
    ap.add_argument("--prompts", type=Path, help="Parquet of prompts (python -m "
                    "ingest.export_prompts) instead of the warehouse's marts.prompts")
    ap.add_argument("--limit", type=int, help="at most this many posts per group")
    ap.add_argument("--out", type=Path, default=Path("data/runs"),
                    help="results under OUT/<pair>/lora_recovery (default data/runs)")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", choices=["bfloat16", "float32"],
                    help="scoring dtype (default bfloat16 on a GPU, float32 on a CPU)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--window", type=int, default=1024)
    attn_arg(ap)
    ap.add_argument("--no-load", dest="load", action="store_false")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--embed-full", action="store_true",
                    help="embeddings and the LM head take dW whole at every rank "
                    "(mergekit-extract-lora's default); stored as modules "
                    "'<modules>+embed_full'")
    a = ap.parse_args(argv)
    try:
        ranks, full = parse_ranks(a.ranks)
    except ValueError as exc:
        ap.error(str(exc))
    if a.batch_size < 1 or (a.limit is not None and a.limit < 1):
        ap.error("--batch-size and --limit must be >= 1")
    pair, base, sft = resolve_pair_args(ap, a)
    modules = [m.strip() for m in a.modules.split(",") if m.strip()] \
        if a.modules else None
    return Config(pair, base, sft, ranks, full, modules, a.prompts, a.db, a.out,
                  a.device, a.dtype, a.batch_size, a.window, a.vectors, a.limit,
                  a.load, a.progress, a.embed_full, a.attn)


def main(argv: list[str] | None = None) -> int:
    """0 done; 2 refused input (named); 3 the warehouse is busy (results kept)."""
    cfg = parse_args(argv)
    try:
        run_dir = run(cfg)
    except (CheckpointError, ExtractError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.load:
        from ingest.lora import load_or_explain

        return load_or_explain(run_dir, cfg.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
