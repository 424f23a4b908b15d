"""How much of the fine-tuned behaviour a rank-r LoRA keeps, for each r.

    python -m compute.run --pair planted                   # the behaviour run first
    python -m compute.lora_recovery --pair planted --ranks 1,4,16,64
    python -m compute.lora_recovery --pair 7B --ranks 8,64,full --modules q_proj,v_proj

Each model is scored in the pair's behaviour run's own setting (its OUT/<pair>/
run.json: the posts it scored, its window and carried context, prefix token, dtype,
batches; compute.behaviour.merge_score), next to the SFT model. For each rank r (r = 0 always;
`full` adds dW whole) two steps: "matrices at rank r", W_base + U_r S_r V_r^T for
each matrix (its best rank-r approximation of dW, from the fp64 SVD:
compute.lora.extract) with every 1-D tensor the base's, so that r = 0 is the base
exactly as loaded and r = full "matrices" has the SFT's matrices only; and "plus
norms", the same with the SFT's 1-D tensors (norms, biases), whose full is the SFT
itself (`--vectors base|sft` scores one step; where no 1-D tensor moved the two
steps are one model, scored once: "plus norms" copies its rows). The adapter
extract_lora writes at
rank r is the "matrices at rank r" model. A matrix with min(rows, cols) <= r takes
all its triplets. What is truncated: the module types of --modules (default all
matrices); the other matrices keep the base's weights.

Per post and model it keeps sums over the post's tokens of the model's and the
SFT's log-probs and of KL(p_sft || p_r) and KL(p_r || p_sft); the dbt marts turn
them into the share of the SFT-minus-base log-prob delta that the model recovers,

    recovered(r) = sum_posts sum_tokens (lp_r - lp_0) / sum_posts sum_tokens (lp_sft - lp_0)

(lp_0 the base as loaded) with a 95% interval over posts, the share of
KL(p_sft || p_base) removed, and the smallest r below full reaching 90% / 99%
(marts.fct_lora_recovery*). Output, resumable per model: OUT/<pair>/lora_recovery/
<modules>/posts/r<rank>[-full]-<base|sft>.parquet and ranks.parquet, then loaded into
raw.lora_recovery_posts and raw.lora_recovery_ranks; timings.json beside them holds
each step's wall and CPU seconds (bench/lora_recovery.py reads it). Weights with a
NaN or an Inf are refused before anything is written, naming the tensor.
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
from compute.lora.extract import (
    ExtractError,
    Target,
    check_finite,
    delta,
    finite_delta,
    iter_triplets,
    open_pair,
    pair_args,
    resolve_pair_args,
    targets,
)

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
    device: str | None = None  # None: the behaviour run's
    vectors: str = "both"
    load: bool = True
    progress: bool = True
    embed_full: bool = False  # embeddings and LM head whole at every rank (mergekit)

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


def step_deltas(base, sft, tgts: list[Target], factors: Factors, r: int | None,
                vectors: str, vector_names: list[str], whole: list[Target] = ()
                ) -> dict:
    """The deltas of one step (compute.behaviour.merge_score): each target's rank-r
    part of dW (r None: dW whole; 0: none), dW whole of the `whole` targets at every
    r but 0 (--embed-full), plus dW of every 1-D tensor when `vectors` is 'sft'
    ("plus norms"); every other tensor stays the base's as loaded."""
    out: dict = {t.tensor: (lambda t=t: delta(base, sft, t.tensor))
                 for t in whole if r != 0}
    for t in tgts:
        if r is None:
            out[t.tensor] = lambda t=t: delta(base, sft, t.tensor)
        elif r > 0:
            out[t.tensor] = lambda t=t: factors.update(t, min(r, t.n_short))
    if vectors == "sft":
        out |= {n: (lambda n=n: delta(base, sft, n)) for n in vector_names}
    return out


def split_whole(tgts: list[Target], embed_full: bool
                ) -> tuple[list[Target], list[Target]]:
    """(targets truncated to rank r, targets taking dW whole at every rank): with
    --embed-full the embeddings and the LM head are whole, as mergekit-extract-lora
    stores them by default (modules_to_save)."""
    if not embed_full:
        return tgts, []
    return ([t for t in tgts if not t.vocab_side], [t for t in tgts if t.vocab_side])


def whole_size(base, sft, whole: list[Target]) -> tuple[float, int]:
    """(sum of the `whole` targets' ||dW||_F^2, their parameters m n): what taking
    them whole (--embed-full) adds at every r but 0."""
    sq, params = 0.0, 0
    for t in whole:
        dw = finite_delta(base, sft, t.tensor)
        sq += float(np.einsum("ij,ij->", dw, dw))
        params += t.shape[0] * t.shape[1]
    return sq, params


def post_rows(posts, results: dict, run_id: str, pair: str, modules: str, rank: int,
              vectors: str) -> list[dict]:
    """One raw.lora_recovery_posts row per post: sums over its tokens of the step's
    and the SFT's log-probs and of both KLs; `results` post_id -> PostResult, exactly
    the posts' ids."""
    if set(results) != {p.post_id for p in posts}:
        raise ValueError(f"results for posts {sorted(results)[:5]}, rows asked for "
                         f"{sorted(p.post_id for p in posts)[:5]}")
    return [{"run_id": run_id, "pair": pair, "modules": modules, "rank": rank,
             "vectors": vectors, "post_id": p.post_id, "site": p.site, "grp": p.grp,
             "post_type": p.post_type, "n_tokens": p.n_tokens,
             "sum_logprob": float(np.sum(res.logprob["base"])),
             "sum_logprob_sft": float(np.sum(res.logprob["sft"])),
             "sum_kl_sft_rank": float(np.sum(res.shift["kl_sft_base"])),
             "sum_kl_rank_sft": float(np.sum(res.shift["kl_base_sft"]))}
            for p, res in zip(posts, (results[p.post_id] for p in posts),
                              strict=True)]


def open_setting(cfg: Config):
    """The behaviour run's setting (compute.behaviour.merge_score), checked to be this pair's."""
    from compute.behaviour.merge_score import BehaviourSetting, SettingError

    source = cfg.prompts
    if source is None:
        from ingest.warehouse import db_path

        source = db_path(cfg.db)
    try:
        setting = BehaviourSetting.from_run(cfg.out / cfg.pair, source, cfg.device)
    except SettingError as exc:
        raise ExtractError(f"{exc} (python -m compute.run ... --out {cfg.out} scores "
                           "the pair; recovery reuses its setting)") from exc
    base, sft = open_pair(cfg.base, cfg.sft)
    if (setting.base.ref, setting.sft.ref) != (base.ref, sft.ref):
        raise ExtractError(f"{cfg.out / cfg.pair}/run.json: its behaviour run scored "
                           f"{setting.base.ref} vs {setting.sft.ref}, not {base.ref} "
                           f"vs {sft.ref}")
    return setting


def steps(cfg: Config, n_full: int) -> list[tuple[int | None, str]]:
    """(r, vectors) in scoring order: r = 0 first, 'full' (None) last; for each r the
    matrices alone ('base' 1-D tensors) and then plus the SFT's ('sft')."""
    full = cfg.full or any(r >= n_full for r in cfg.ranks)
    ranks: list[int | None] = [0, *(r for r in cfg.ranks if r < n_full)]
    ranks += [None] if full else []
    kinds = ["base", "sft"] if cfg.vectors == "both" else [cfg.vectors]
    if "base" not in kinds:
        kinds = ["base", *kinds]  # r = 0 with the base's own 1-D tensors: the base
    return [(r, v) for r in ranks for v in kinds
            if v == "sft" or r == 0 or cfg.vectors != "sft"]


def recovery_run_id(cfg: Config, setting) -> str:
    """The run id of cfg.run_dir's recovery.json where it was written for this very
    setting (its finished steps are kept); otherwise the folder is cleared and a new
    run id written."""
    from compute.io.files import atomic_write_bytes

    run_dir = cfg.run_dir
    base, sft = setting.base, setting.sft
    want = {"pair": cfg.pair, "base": base.ref, "sft": sft.ref,
            "behaviour_run_id": setting.run_id, "modules": cfg.modules_key,
            "vectors": cfg.vectors, "window": setting.window,
            "context": setting.context, "dtype": setting.dtype,
            "device": setting.device, "posts": [p.post_id for p in setting.posts]}
    manifest_path = run_dir / "recovery.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if {k: old.get(k) for k in want} != want:
        shutil.rmtree(run_dir, ignore_errors=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        old = want | {"run_id": f"{cfg.pair}-lora-{stamp}"}
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(manifest_path, json.dumps(old, indent=1).encode())
    return old["run_id"]


def run(cfg: Config) -> Path:
    """Score every step; write the Parquet files (and timings.json: each step's wall
    and CPU seconds); return the folder."""
    import pyarrow as pa

    from compute.behaviour.merge_score import DeltaScorer
    from compute.io.files import atomic_write_bytes, write_parquet
    from compute.plan.pair import pair_plan
    from ingest.lora import recovery_schemas

    t0, c0 = time.perf_counter(), time.process_time()
    base, sft = open_pair(cfg.base, cfg.sft)
    tgts, whole = split_whole(targets(base, sft, cfg.modules), cfg.embed_full)
    plan = pair_plan(base, sft)
    # every tensor's weights finite: these first, the truncated ones in their SVDs
    svd_names = {t.tensor for t in [*tgts, *whole]}
    check_finite(base, sft, [n for n in [*plan.matrices, *plan.vectors]
                             if n not in svd_names])
    setting = open_setting(cfg)
    base, sft = setting.base, setting.sft
    n_full = max(t.n_short for t in tgts)
    todo = steps(cfg, n_full)
    factors = Factors(base, sft, tgts, max((r for r, _ in todo if r), default=0),
                      cfg.progress, setting.device)  # fp64 SVDs on the scoring device
    whole_sq, whole_params = whole_size(base, sft, whole)
    run_id = recovery_run_id(cfg, setting)  # after every refusal: nothing written
    job = Job(cfg, setting, run_id, tgts, whole, plan.vectors, factors,
              sum(factors.total.values()) + whole_sq, whole_sq, whole_params,
              n_full, DeltaScorer(setting),
              any(np.any(delta(base, sft, n)) for n in plan.vectors))
    timings = {"setup": {"seconds": round(time.perf_counter() - t0, 3),
                         "cpu_seconds": round(time.process_time() - c0, 3)},
               "steps": []}
    rank_rows = []
    for r, vectors in todo:
        t1, c1 = time.perf_counter(), time.process_time()
        row, scored = job.step(r, vectors)
        row["seconds"] = round(time.perf_counter() - t1, 3)
        rank_rows.append(row)
        timings["steps"].append({"rank": row["rank"], "is_full": r is None,
                                 "vectors": vectors, "scored": scored,
                                 "seconds": row["seconds"], "cpu_seconds": round(
                                     time.process_time() - c1, 3)})
    write_parquet(pa.Table.from_pylist(
        rank_rows, schema=recovery_schemas()["lora_recovery_ranks"]),
        cfg.run_dir / "ranks.parquet")
    timings |= {"seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3)}
    atomic_write_bytes(cfg.run_dir / "timings.json",
                       json.dumps(timings, indent=1).encode())
    print(f"lora recovery {cfg.pair} ({cfg.modules_key}): "
          f"{len(todo)} models on {len(setting.posts)} posts of behaviour run "
          f"{setting.run_id} (window {setting.window}) in "
          f"{time.perf_counter() - t0:.1f} s; results in {cfg.run_dir}")
    return cfg.run_dir


@dataclasses.dataclass
class Job:
    """One recovery run's fixed parts: its steps are scored by `step`."""

    cfg: Config
    setting: object  # compute.behaviour.merge_score.BehaviourSetting
    run_id: str
    tgts: list[Target]
    whole: list[Target]
    vector_names: list[str]
    factors: Factors
    total_sq: float
    whole_sq: float
    whole_params: int
    n_full: int
    scorer: object  # compute.behaviour.merge_score.DeltaScorer
    vectors_moved: bool  # some 1-D tensor differs: 'plus norms' is another model

    def path(self, rank: int, full: bool, vectors: str) -> Path:
        """The posts' file of a step."""
        return self.cfg.run_dir / "posts" / (f"r{rank:06d}" + ("-full" if full else "")
                                             + f"-{vectors}.parquet")

    def score_rows(self, r: int | None, rank: int, vectors: str) -> list[dict]:
        """The step's raw.lora_recovery_posts rows: the posts scored with its model,
        or, for 'plus norms' where no 1-D tensor moved (the same model as 'matrices
        at rank r'), the rows of that step's file."""
        import pyarrow.parquet as pq

        cfg, setting = self.cfg, self.setting
        same = self.path(rank, r is None, "base")
        if vectors == "sft" and not self.vectors_moved and same.exists():
            return [row | {"vectors": vectors} for row in pq.read_table(same).to_pylist()]
        label = (FULL if r is None else str(r)) + (
            " plus norms" if vectors == "sft" else "")
        results = self.scorer.score(
            step_deltas(setting.base, setting.sft, self.tgts, self.factors, r,
                        vectors, self.vector_names, self.whole),
            cfg.progress, f"rank {label} vs sft", drift=False)
        return post_rows(setting.posts, results, self.run_id, cfg.pair,
                         cfg.modules_key, rank, vectors)

    def step(self, r: int | None, vectors: str) -> tuple[dict, bool]:
        """(the step's raw.lora_recovery_ranks row, whether it was scored now): its
        posts' file written unless an earlier run of this run id left it."""
        import pyarrow as pa

        from compute.io.files import write_parquet
        from ingest.lora import recovery_schemas

        cfg, setting, tgts = self.cfg, self.setting, self.tgts
        base, sft = setting.base, setting.sft
        rank = self.n_full if r is None else r
        path = self.path(rank, r is None, vectors)
        kept = [min(rank, t.n_short) for t in tgts]
        retained = self.total_sq if r is None else self.whole_sq * (r > 0) + sum(
            float(np.sum(self.factors.s_sq[t.tensor][:k]))
            for t, k in zip(tgts, kept, strict=True))
        scored = not path.exists()
        if scored:
            write_parquet(pa.Table.from_pylist(
                self.score_rows(r, rank, vectors),
                schema=recovery_schemas()["lora_recovery_posts"]), path)
        return {
            "run_id": self.run_id, "pair": cfg.pair, "base_model": base.ref,
            "sft_model": sft.ref, "modules": cfg.modules_key, "rank": rank,
            "is_full": r is None, "n_matrices": len(tgts) + len(self.whole),
            "n_params": self.whole_params * (r != 0) + sum(
                k * sum(t.shape) for t, k in zip(tgts, kept, strict=True)),
            "retained_sq": retained, "frobenius_sq": self.total_sq,
            "vectors": vectors,
            "n_vectors": len(self.vector_names) if vectors == "sft" else 0,
            "behaviour_run_id": setting.run_id, "window_tokens": setting.window,
            "device": setting.device, "dtype": setting.dtype}, scored


def parse_args(argv: list[str] | None = None) -> Config:
    """python -m compute.lora_recovery's command line as a Config."""
    ap = argparse.ArgumentParser(
        prog="python -m compute.lora_recovery",
        description="Score the behaviour run's posts with W_base + the rank-r "
        "truncation of dW for each r, next to the SFT model: how much of its "
        "behaviour each LoRA rank recovers.")
    pair_args(ap)
    ap.add_argument("--ranks", default="1,4,16,64", help="comma-separated ranks, "
                    "'full' for dW whole (default 1,4,16,64; 0, the base, always)")
    ap.add_argument("--modules", help="module types to truncate (default all)")
    ap.add_argument("--vectors", default="both", choices=["both", "base", "sft"],
                    help="the 1-D tensors (norms, biases) of each rank's model: the "
                    "base's ('matrices at rank r'), the SFT's ('plus norms'), or each "
                    "rank both ways (default)")
    ap.add_argument("--prompts", type=Path, help="Parquet of prompts (python -m "
                    "ingest.export_prompts) holding the behaviour run's posts, "
                    "instead of the warehouse's marts.prompts")
    ap.add_argument("--out", type=Path, default=Path("data/runs"),
                    help="compute.run's --out: the behaviour run is OUT/<pair>, the "
                    "results go to OUT/<pair>/lora_recovery (default data/runs)")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    help="scoring device (default the behaviour run's; the dtype, "
                    "window, prefix and batches are always the run's)")
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
    pair, base, sft = resolve_pair_args(ap, a)
    modules = [m.strip() for m in a.modules.split(",") if m.strip()] \
        if a.modules else None
    return Config(pair, base, sft, ranks, full, modules, a.prompts, a.db, a.out,
                  a.device, a.vectors, a.load, a.progress, a.embed_full)


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
