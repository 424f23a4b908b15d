"""Compute the spectra (and behaviour) of a base/SFT pair and load them.

    python -m compute.run --pair 7B                 # Qwen/Qwen2.5-7B vs -Instruct
    python -m compute.run --pair demo               # the trained demo pair, CPU, offline
    python -m compute.run --pair planted            # planted deltas (ground truth)
    python -m compute.run --base A --sft B --name N # any two hub ids or folders
    python -m compute.run --pair 7B --no-load --out /scratch/runs   # GPU box, no DB

Results are Parquet files under OUT/<pair>/ (one file per tensor, written to a
temporary name and renamed), so a killed run resumes where it stopped; then they are
loaded into the warehouse in one transaction that replaces the pair's earlier rows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import functools
import gc
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from compute.io.adapters import resolve_sft
from compute.io.checkpoints import Checkpoint, CheckpointError, resolve
from compute.io.files import atomic_path, atomic_write_bytes, now, write_parquet
from compute.linalg.directions import DEFAULT_VECTORS, FULL_BASIS_MAX
from compute.linalg.spectra import METHODS
from compute.pairs.registry import (
    FAMILIES,
    SIZES,
    PairError,
    build_if_planted,
    default_name,  # noqa: F401 (compute.run.cli.default_name)
    known_pairs,
    resolve_pair,
)
from compute.plan.pair import Plan, pair_plan

if TYPE_CHECKING:
    pass

AUTO_VECTORS_CPU_SIDE = 512  # the largest short side with vectors on by default



# pyarrow (and tqdm) are imported where they are used: on the spectra path that is
# after the workers have started, so the imports overlap the arithmetic instead of
# delaying it (`python -X importtime -m compute.run ...`). torch is imported only
# for a GPU, the svd methods and the behaviour half: the CPU spectra are NumPy's.
@functools.cache
def schemas() -> dict:
    """{"spectra": schema of raw.spectra's files, "vectors": raw.vector_changes'}."""
    import pyarrow as pa

    return {
        "spectra": pa.schema([
            ("run_id", pa.string()), ("pair", pa.string()), ("base_model", pa.string()),
            ("sft_model", pa.string()), ("tensor", pa.string()), ("layer", pa.int32()),
            ("module", pa.string()), ("expert", pa.int32()), ("part", pa.string()),
            ("source_tensor", pa.string()), ("stored_transposed", pa.bool_()),
            ("role", pa.string()), ("n_rows", pa.int32()),
            ("n_cols", pa.int32()), ("storage_dtype", pa.string()),
            ("singular_values", pa.list_(pa.float64())), ("frobenius_sq", pa.float64()),
            ("noise_sigma", pa.float64()), ("n_zero", pa.int64()),
            ("n_nonfinite", pa.int64()), ("method", pa.string()),
            ("device", pa.string()), ("seconds", pa.float64()),
        ]),
        "traps": pa.schema([
            ("run_id", pa.string()), ("pair", pa.string()), ("tensor", pa.string()),
            ("layer", pa.int32()), ("module", pa.string()), ("expert", pa.int32()),
            ("part", pa.string()), ("role", pa.string()), ("n_rows", pa.int32()),
            ("n_cols", pa.int32()), ("seed", pa.int64()), ("n_replicas", pa.int32()),
            ("random_singular_values", pa.list_(pa.float64())),
            ("rand_lambda_max", pa.float64()), ("rand_mp_sigma", pa.float64()),
            ("rand_bulk_max", pa.float64()), ("rand_bulk_min", pa.float64()),
            ("n_traps", pa.int64()), ("rand_mp_softrank", pa.float64()),
            ("rand_distance", pa.float64()), ("ww_softrank", pa.float64()),
            ("ww_maxdist", pa.float64()), ("seconds", pa.float64()),
        ]),
        "added_tokens": pa.schema([
            ("run_id", pa.string()), ("pair", pa.string()), ("tensor", pa.string()),
            ("token_id", pa.int64()), ("token", pa.string()), ("norm", pa.float64()),
        ]),
        "vectors": pa.schema([
            ("run_id", pa.string()), ("pair", pa.string()), ("tensor", pa.string()),
            ("layer", pa.int32()), ("module", pa.string()), ("numel", pa.int64()),
            ("storage_dtype", pa.string()), ("base_norm", pa.float64()),
            ("sft_norm", pa.float64()), ("delta_norm", pa.float64()),
            ("n_zero", pa.int64()), ("n_nonfinite", pa.int64()),
        ]),
    }


def write_rows(rows: list[dict], kind: str, path: Path) -> None:
    """Rows (dicts) as a Parquet file of `kind` ("spectra" or "vectors")."""
    import pyarrow as pa

    write_parquet(pa.Table.from_pylist(rows, schema=schemas()[kind]), path)


def attn_arg(ap: argparse.ArgumentParser) -> None:
    """--attn, for every command that loads models to score them."""
    ap.add_argument("--attn", choices=("sdpa", "eager"),
                    help="attention implementation of the scoring models (default: "
                    "sdpa where the model class supports it, else eager: Gemma-2, "
                    "BLOOM, MPT)")


@dataclasses.dataclass
class Config:
    pair: str
    base: str
    sft: str
    out: Path = Path("data/runs")
    db: Path | None = None
    device: str = "auto"
    method: str = "gram"
    revision_base: str | None = None
    revision_sft: str | None = None
    load: bool = True
    force: bool = False
    spectra: bool = True
    behaviour: bool = True
    prompts: Path | None = None
    batch_size: int = 8
    window: int | None = None  # tokens per window; None: min(1024, the context)
    max_tensors: int | None = None  # stop after this many (tests, dry runs)
    progress: bool = True
    check: bool = False  # only check the pair (compute.pairs.doctor), compute nothing
    scan: bool = False  # with check: hash the weight files, read every tensor for NaN/Inf
    vectors: int | None = None  # top singular vectors per matrix (0: none; None: auto)
    full_basis_max: int = FULL_BASIS_MAX  # CPU: all W_base vectors up to this side
    shard: tuple[int, int] | None = None  # (I, N): only part I of N (compute.plan.shards)
    shards: int = 1  # with dry_run: the number of parts to plan
    dry_run: bool = False  # print the shard plan from the headers, compute nothing
    ray: str | None = None  # every shard as a Ray task ("": a local cluster)
    pairs: list | None = None  # --pairs (compute.pairs.pairs_file.Entry); pair: the first
    remote: str | None = None  # --out as an object-store URI (out: its staging folder)
    attn: str | None = None  # forced attention implementation (default: per class)
    series_run: str | None = None  # "SERIES:step|difference": a --trajectory's run
    traps: bool = False  # WeightWatcher's correlation traps (compute.linalg.traps)
    trap_seed: int = 0  # the shuffles' seed (RandomState)

    @property
    def run_dir(self) -> Path:
        """OUT/<pair>: the pair's results folder."""
        return self.out / self.pair

    @property
    def results(self) -> str:
        """Where the pair's results end up: the folder, or its URI on a store."""
        from ingest.results import pair_results

        return pair_results(self.remote, self.run_dir)


def _checked(ap: argparse.ArgumentParser, a: argparse.Namespace
             ) -> tuple[tuple[int, int] | None, list | None]:
    """Refuse options that do not go together; (--shard as (I, N), --pairs'
    entries). With --pairs, the first entry is the pair of `a`."""
    shard = None
    if a.shard:
        from compute.plan.shards import parse_shard

        try:
            shard = parse_shard(a.shard)
        except ValueError as exc:
            ap.error(str(exc))
        if a.force:
            ap.error("--force with --shard would discard the other shards' results; "
                     "delete OUT/<pair> instead")
    if a.shards < 1:
        ap.error("--shards must be >= 1")
    pairs = None
    if a.pairs:
        from compute.pairs.pairs_file import PairsError, parse

        if a.pair or a.base or a.sft:
            ap.error("--pairs goes instead of --pair or --base/--sft")
        try:
            pairs = parse(a.pairs, known_pairs())
        except PairsError as exc:
            ap.error(str(exc))
        a.base, a.sft, a.name = pairs[0].base, pairs[0].sft, pairs[0].name
    if a.ray is not None and a.shard:
        ap.error("--ray runs every shard: give --shards N, not --shard")
    if a.vectors is not None and a.vectors < 0:
        ap.error("--vectors must be >= 0")
    if a.scan and not a.check:
        ap.error("--scan goes with --check")
    if a.traps and (a.shard or a.ray is not None):
        ap.error("--traps shuffles whole matrices: not with --shard or --ray")
    if a.traps and not a.spectra:
        ap.error("--traps is part of the spectra half: not with --skip-spectra")
    return shard, pairs


def parser() -> argparse.ArgumentParser:
    """compute.run's options: the pair, the arithmetic, the output, the checks and
    the scale-out (each group below)."""
    ap = argparse.ArgumentParser(
        prog="python -m compute.run",
        description="Spectra of every weight matrix of W_base, W_sft and dW, and "
        "per-token log-probs and residual drift on the warehouse's prompts, for a "
        "base/SFT checkpoint pair; results go to Parquet, then into the warehouse.",
        epilog="Examples: --pair 7B | --pair demo | --base Qwen/Qwen2.5-1.5B "
        "--sft Qwen/Qwen2.5-1.5B-Instruct --name 1.5B | --base ./a --sft ./b --name x",
    )
    _pair_options(ap)
    _compute_options(ap)
    _check_options(ap)
    _scale_options(ap)
    return ap


def _pair_options(ap: argparse.ArgumentParser) -> None:
    """Which pair: --pair, or --base/--sft/--name and their revisions."""
    ap.add_argument("--pair", help=f"a known pair: {', '.join(SIZES)} (Qwen2.5 base vs "
                    "Instruct), " + ", ".join(f"{k} ({a} vs {b})"
                                              for k, (a, b) in FAMILIES.items())
                    + " or 'demo' / 'planted' (local, offline)")
    ap.add_argument("--base", help="base checkpoint: hub id or local folder (with a "
                    "LoRA adapter as --sft, by default the base it names)")
    ap.add_argument("--sft", help="fine-tuned checkpoint: hub id or local folder")
    ap.add_argument("--name", help="the pair's name in the warehouse (with --base/--sft)")
    ap.add_argument("--revision-base", help="hub revision of the base (default main)")
    ap.add_argument("--revision-sft", help="hub revision of the SFT model")


def _compute_options(ap: argparse.ArgumentParser) -> None:
    """What runs where, and where the results go."""
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where the arithmetic runs (auto: cuda if available)")
    ap.add_argument("--method", default="gram", choices=METHODS,
                    help="gram: eigenvalues of the fp64 Gram matrix (default); "
                    "svd / svd64: LAPACK svdvals in fp32 / fp64 (reference)")
    ap.add_argument("--out", default="data/runs",
                    help="folder for the Parquet results (default data/runs), or an "
                    "object-store URI pyarrow understands (s3://bucket/prefix, "
                    "gs://..., file:///...; docs/scale.md)")
    ap.add_argument("--db", type=Path, help="warehouse file (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--no-load", dest="load", action="store_false",
                    help="only write Parquet; load later with python -m ingest.compute_load")
    ap.add_argument("--force", action="store_true",
                    help="start over: remove this pair's earlier results (only the "
                    "files compute.run wrote there), also in a folder that is not a "
                    "run of this pair (its other files are kept)")
    ap.add_argument("--skip-spectra", dest="spectra", action="store_false")
    ap.add_argument("--skip-behaviour", dest="behaviour", action="store_false")
    ap.add_argument("--prompts", type=Path, help="Parquet of prompts (from python -m "
                    "ingest.export_prompts) instead of the warehouse's marts.prompts")
    ap.add_argument("--batch-size", type=int, default=8, help="posts per forward pass")
    ap.add_argument("--window", type=int, help="tokens per window (default: 1024, or "
                    "the models' context where it is shorter)")
    attn_arg(ap)
    ap.add_argument("--max-tensors", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-progress", dest="progress", action="store_false")


def _check_options(ap: argparse.ArgumentParser) -> None:
    """--check / --scan (compute.doctor) and the singular vectors."""
    ap.add_argument("--check", action="store_true",
                    help="only check that the pair is complete and compatible "
                    "(python -m compute.doctor); compute and write nothing")
    ap.add_argument("--scan", action="store_true",
                    help="with --check: also hash the hub-cache weight files against "
                    "their sha256 names and read every tensor to count NaN/Inf")
    ap.add_argument("--vectors", type=int, metavar="K",
                    help="top-K singular vectors of W_base, W_sft and dW per matrix "
                    "(gram method; to OUT/<pair>/directions/vectors), with overlap, "
                    "principal angles, intruders and token labels (raw.direction_*, "
                    f"raw.intruders); 0 turns it off (default {DEFAULT_VECTORS} on a "
                    f"GPU, and on a CPU for models whose matrices are at most "
                    f"{AUTO_VECTORS_CPU_SIDE} on their short side; else 0)")
    ap.add_argument("--full-basis-max", type=int, default=FULL_BASIS_MAX, metavar="N",
                    help="on a CPU, all of W_base's singular vectors (intruders) only "
                    f"for matrices with min(rows, cols) <= N (default {FULL_BASIS_MAX}"
                    "; a GPU does every matrix)")
    ap.add_argument("--traps", action="store_true",
                    help="WeightWatcher's correlation traps: the singular values of "
                    "W_base and W_sft with their entries shuffled, and the MP bulk "
                    "they should fill (to OUT/<pair>/spectra/traps, "
                    "raw.random_spectra; docs/esd.md; 0.25-0.8x more spectra time)")
    ap.add_argument("--trap-seed", type=int, default=0, metavar="S",
                    help="seed of the shuffles (NumPy RandomState; default 0)")


def _scale_options(ap: argparse.ArgumentParser) -> None:
    """Shards, Ray, several pairs, the dry run."""
    ap.add_argument("--shard", metavar="I/N", help="compute only part I of N "
                    "(0 <= I < N) of the pair's tensors, split by estimated cost, into "
                    "the same OUT/<pair>; any mix of the N parts completes the pair, "
                    "then python -m ingest.compute_load OUT/<pair> loads it")
    ap.add_argument("--shards", type=int, default=1, metavar="N",
                    help="with --dry-run: plan N parts; with --ray: run N parts "
                    "(default 1)")
    ap.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                    help="run every (pair, shard) as a Ray task on the cluster at "
                    "ADDRESS (a local one without), then load (compute.run.cluster; pip "
                    'install -e ".[cluster]")')
    ap.add_argument("--pairs", metavar="A,B,... | FILE.toml",
                    help="these pairs instead of one: known pairs' names, or a TOML "
                    "file of [[pair]] tables (name, base, sft, options; "
                    "compute.pairs.pairs_file); as Ray tasks with --ray, else one after another")
    ap.add_argument("--trajectory", metavar="DIR|GLOB|FILE.toml|A@REV,B@REV",
                    help="instead of --sft: a fine-tune's checkpoints (checkpoint-N "
                    "folders, a glob, a TOML list, hub ids @revision), each step a "
                    "pair run against --base, with --name (compute.run.trajectory)")
    ap.add_argument("--series-run", metavar="SERIES:ROLE", help=argparse.SUPPRESS)
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan (tensors and estimated cost per shard, peak "
                    "device memory) from the headers; compute and write nothing")


def series_run(cfg: Config) -> dict | None:
    """The run record's `trajectory` option: the series and role ('step' or
    'difference') of a run compute.run.trajectory started (--series-run), else None;
    marts.dim_pairs reads it to keep a series' runs out of the pair pickers."""
    if not cfg.series_run:
        return None
    series, _, role = cfg.series_run.rpartition(":")
    return {"series": series, "role": role}


def parse_args(argv: list[str] | None = None) -> Config:
    """compute.run's command line as a Config (argparse's usage error and exit
    status 2 for options that do not go together or name no pair)."""
    ap = parser()
    a = ap.parse_args(argv)
    shard, pairs = _checked(ap, a)
    if a.sft and not a.base and not a.pair:  # an adapter names its base
        from compute.io.adapters import adapter_base
        from compute.io.checkpoints import CheckpointError

        try:
            a.base = adapter_base(a.sft, a.revision_sft)
        except CheckpointError as exc:
            ap.error(str(exc))
        if a.base is None:
            ap.error(f"give --base: --sft {a.sft} is a full checkpoint (only a LoRA "
                     "adapter names its base)")
        print(f"base: {a.base} (the adapter's base_model_name_or_path)",
              file=sys.stderr)
    try:
        name, base, sft = resolve_pair(a.pair, a.base, a.sft, a.name)
    except PairError as exc:
        ap.error(str(exc))
    from ingest.runfolder import PairNameError, check_name

    try:
        check_name(name, "--name" if a.name else "the pair name")
    except PairNameError as exc:
        ap.error(str(exc))
    from ingest.results import results_root

    out, remote = results_root(a.out)
    return Config(pair=name, base=base, sft=sft, out=out, db=a.db, device=a.device,
                  method=a.method, revision_base=a.revision_base,
                  revision_sft=a.revision_sft, load=a.load, force=a.force,
                  spectra=a.spectra, behaviour=a.behaviour, prompts=a.prompts,
                  batch_size=a.batch_size, window=a.window, max_tensors=a.max_tensors,
                  progress=a.progress, check=a.check, scan=a.scan,
                  vectors=a.vectors, full_basis_max=a.full_basis_max, shard=shard,
                  shards=shard[1] if shard else a.shards, dry_run=a.dry_run,
                  ray=a.ray, pairs=pairs, remote=remote, attn=a.attn,
                  series_run=a.series_run, traps=a.traps, trap_seed=a.trap_seed)


def shards_refused(base: str, sft: str, n: int) -> str | None:
    """Why --shards n is too many for the pair (base, sft), from the checkpoints'
    headers (compute.plan.shards.check_count; a hub id's by range requests, nothing
    downloaded); None when it fits, or when the headers cannot be read here (each
    shard's task then says what is wrong)."""
    from compute.io.checkpoints import hub_headers
    from compute.plan.shards import check_count

    try:
        b = hub_headers(base) or (resolve(base) if Path(base).is_dir() else None)
        s = hub_headers(sft) or (resolve_sft(sft, b) if b and Path(sft).is_dir()
                                 else None)
        if b is None or s is None:
            return None
        check_count(pair_plan(b, s), n, f"--shards {n}")
    except (CheckpointError, OSError):
        return None
    except ValueError as exc:
        return str(exc)
    return None


def torch_build_has_gpu() -> bool:
    """Whether the installed torch is a CUDA or ROCm build, from its torch/version.py
    (written at build time: `cuda = None` in a CPU wheel), without importing torch."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    version = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        tree = ast.parse(version.read_text())
    except (OSError, SyntaxError, ValueError):
        return True  # unknown: ask torch itself
    values = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            for target in (node.targets if isinstance(node, ast.Assign)
                           else [node.target]):
                if isinstance(target, ast.Name):
                    values[target.id] = node.value
    return not all(isinstance(values.get(key), ast.Constant) and values[key].value is None
                   for key in ("cuda", "hip"))


def pick_device(name: str) -> str:
    """"cpu" or "cuda" for --device; "auto" needs torch only when its build could
    have a GPU."""
    if name == "auto":
        if not torch_build_has_gpu():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
    return name


def code_version() -> str:
    """`git describe --always --dirty` of the repository, or "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


@contextlib.contextmanager
def pair_lock(run_dir: Path, name: str = ".lock") -> Iterator[None]:
    """One compute.run per pair folder (or shard of it) at a time; a second one fails
    clearly."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / name, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise SystemExit(f"{run_dir}: another compute.run ({holder}) is working on "
                         "this pair; wait for it or kill it") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"PID {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fh.close()


def open_manifest(cfg: Config, base: Checkpoint, sft: Checkpoint) -> dict:
    """The run's manifest: resumed when the same models and method, else fresh."""
    path = cfg.run_dir / "run.json"
    want = {"pair": cfg.pair, "base_model": base.ref, "sft_model": sft.ref,
            "base_revision": base.revision, "sft_revision": sft.revision,
            "method": cfg.method}
    if cfg.remote and not cfg.force:  # a store of other inputs: refused before
        from ingest.results import Store  # anything here is touched

        Store(cfg.results, cfg.run_dir).check(want)
    if path.exists() and not cfg.force:
        try:
            old = json.loads(path.read_text())
        except (ValueError, RecursionError):
            old = {}
        if not isinstance(old, dict):
            old = {}
        if all(old.get(k) == v for k, v in want.items()):
            return old
        print(f"{cfg.run_dir}: earlier results are for other models or options; "
              "starting over", file=sys.stderr)
    from ingest.runfolder import remove_run_files, run_of

    earlier = run_of(cfg.run_dir)  # its files go; files of nobody's run stay
    if earlier is not None and earlier.get("pair") == cfg.pair:
        remove_run_files(cfg.run_dir, earlier.get("run_id"))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    if cfg.remote:  # an object store: every shard derives the same id (no lock)
        from ingest.results import run_identity

        stamp = run_identity(want).removeprefix(f"{cfg.pair}-")
    manifest = want | {"run_id": f"{cfg.pair}-{stamp}", "code_version": code_version(),
                       "n_layers": base.n_layers, "kinds": {}}
    save_manifest(cfg, manifest)
    return manifest


def save_manifest(cfg: Config, manifest: dict) -> None:
    """Write run.json atomically (a shard keeps the other shards' kinds)."""
    path = cfg.run_dir / "run.json"
    if cfg.shard is None:
        atomic_write_bytes(path, json.dumps(manifest, indent=2, default=str).encode())
        return
    from compute.plan.shards import manifest_lock, merged

    with manifest_lock(cfg.run_dir):  # other shards write it too: keep their kinds
        atomic_write_bytes(path, json.dumps(merged(path, manifest), indent=2,
                                            default=str).encode())


def spectra_file(run_dir: Path, index: int) -> Path:
    """The spectra file of tensor `index`: spectra/NNNNN.parquet."""
    return run_dir / "spectra" / f"{index:05d}.parquet"


def traps_file(run_dir: Path, index: int) -> Path:
    """The correlation traps of tensor `index` (--traps): spectra/traps/NNNNN.parquet."""
    return run_dir / "spectra" / "traps" / f"{index:05d}.parquet"


def auto_vectors(plan: Plan, device: str) -> int:
    """--vectors' default: DEFAULT_VECTORS on a GPU; on a CPU only where cheap, for
    models whose matrices are all at most AUTO_VECTORS_CPU_SIDE on their short side
    (the demo and tiny pairs). On a 0.5B-shaped pair (short side 896) the vectors
    took 2.1x the spectra's CPU seconds (docs/directions.md), so they are asked for."""
    if device != "cpu":
        return DEFAULT_VECTORS
    side = max((min(v.shape) for views in plan.views.values() for v in views),
               default=0)
    if side <= AUTO_VECTORS_CPU_SIDE:
        return DEFAULT_VECTORS
    print(f"singular vectors off on the CPU for matrices of short side {side} "
          f"(about 2x the spectra's time): --vectors {DEFAULT_VECTORS} computes them",
          file=sys.stderr)
    return 0


def compute_spectra(cfg: Config, base: Checkpoint, sft: Checkpoint, plan: Plan,
                    manifest: dict, device: str, store=None) -> None:
    """Spectra of every matrix, one Parquet file per tensor (a killed run resumes).

    On a CPU, tensors are spread over worker threads (one per core, up to
    spectra.MAX_WORKERS) with single-threaded BLAS: 2 cores are better used by two
    tensors at once than by one multi-threaded eigensolve, and the reading of one
    overlaps the arithmetic of the other. The largest tensors start first; the 1-D
    tensors are done on this thread meanwhile (it only waits otherwise).
    `store` (ingest.results.Store): an object store the files are uploaded to as
    they are finished; a file counts as done when it is here or there.
    """
    SpectraHalf(cfg, base, sft, plan, manifest, device, store).run()


class SpectraHalf:
    """The spectra half of one run (`compute_spectra`): the manifest's entry, the
    tensors left to do (this shard's), each tensor's spectra (whole, or this shard's
    pieces of it and their merge), the 1-D tensors, the manifest once all are there.
    """

    def __init__(self, cfg: Config, base: Checkpoint, sft: Checkpoint, plan: Plan,
                 manifest: dict, device: str, store=None) -> None:
        import compute.linalg.spectra as spectra
        from compute.io.adapters import Adapter
        from compute.run import direction_files as dfiles

        self.cfg, self.base, self.sft, self.plan = cfg, base, sft, plan
        self.manifest, self.device, self.store = manifest, device, store
        self.spectra, self.dfiles = spectra, dfiles
        self.torch = None
        if device != "cpu" or cfg.method != "gram":  # else NumPy's path, no torch
            import torch

            self.torch = torch
        self.n_vectors = (auto_vectors(plan, device) if cfg.vectors is None
                          else cfg.vectors)
        self.want_dirs = self.n_vectors > 0 and cfg.method == "gram"
        self.adapter = isinstance(sft, Adapter)
        self.run_id, self.pair = manifest["run_id"], cfg.pair
        self.have = store.has if store is not None else Path.exists
        self.pieces: dict[int, list[tuple[int, int]]] = {}  # i -> (piece, of) here
        self.merging = threading.Lock()

    def run(self) -> None:
        """Start (or resume) the half, compute what is left, finish the manifest."""
        self.start()
        todo = self.todo()
        bad, workers = self.compute(todo)
        self.finish(bad, workers)

    def start(self) -> None:
        """The manifest's directions and spectra entries (resumed ones kept)."""
        from compute.plan.shards import joined

        cfg, manifest = self.cfg, self.manifest
        with joined(cfg.run_dir, manifest) if cfg.shard else contextlib.nullcontext():
            if self.want_dirs:  # shards: as the shards started before left them
                self.dfiles.start(cfg.run_dir, manifest, self.n_vectors,
                                  cfg.full_basis_max)
            else:
                manifest["kinds"].pop("directions", None)
            save_manifest(cfg, manifest)
        started = manifest["kinds"].get("spectra", {}).get("started_at") or now()
        manifest["kinds"]["spectra"] = {"started_at": started, "finished_at": None,
                                        "n_matrices": self.plan.n_views,
                                        "n_tensors": len(self.plan.matrices),
                                        "n_vectors": len(self.plan.vectors)}
        save_manifest(cfg, manifest)

    def is_done(self, i: int) -> bool:
        """Tensor i's spectra file (and its vectors, where asked for) is there."""
        run_dir = self.cfg.run_dir
        return self.have(spectra_file(run_dir, i)) and not (
            self.want_dirs and not self.have(self.dfiles.path(run_dir, "vectors", i))
        ) and not (self.cfg.traps and not self.have(traps_file(run_dir, i)))

    def todo(self) -> list[int]:
        """The tensors left to do (this shard's), largest first, so that the
        embedding does not finish alone at the end."""
        import math

        cfg, plan = self.cfg, self.plan
        todo = [i for i in range(len(plan.matrices)) if not self.is_done(i)]
        if cfg.shard is not None:
            from compute.plan.shards import shard_units

            for i, piece, of in shard_units(plan, cfg.shard):
                self.pieces.setdefault(i, []).append((piece, of))
            todo = [i for i in todo if i in self.pieces]
        if cfg.max_tensors is not None:
            todo = todo[:cfg.max_tensors]
        todo.sort(key=lambda i: -math.prod(self.base.tensors[plan.matrices[i]].shape))
        return todo

    def vectors(self) -> None:
        """The 1-D tensors' changes, and a resized vocabulary's added rows (part 0
        of a sharded run does them)."""
        from compute.arch.naming import Layout

        cfg, plan, base, sft = self.cfg, self.plan, self.base, self.sft
        vec_path = cfg.run_dir / "spectra" / "vectors.parquet"
        if self.have(vec_path) or (cfg.shard is not None and cfg.shard[0] != 0):
            return
        rows, layout = [], Layout(base.config)
        for name in plan.vectors:
            layer, module, _ = layout.place(name)
            (wb, storage), (ws, storage_s) = base.read_array(name), sft.read_array(name)
            rows.append({"run_id": self.run_id, "pair": self.pair, "tensor": name,
                         "layer": layer, "module": module,
                         "storage_dtype": storage if storage == storage_s
                         else f"{storage}|{storage_s}"}
                        | self.spectra.vector_change(wb, ws, storage, storage_s))
        if plan.vocab is not None:  # a resized vocabulary's added rows
            from compute.plan.vocab import added_token_rows

            write_rows([{"run_id": self.run_id, "pair": self.pair} | r
                        for r in added_token_rows(plan.vocab, sft)], "added_tokens",
                       cfg.run_dir / "spectra" / "added_tokens.parquet")
        write_rows(rows, "vectors", vec_path)

    def common_of(self, name: str, view, storage: str) -> dict:
        """The columns every raw.spectra row of `view` (of tensor `name`) shares."""
        return {"run_id": self.run_id, "pair": self.pair,
                "base_model": self.base.ref, "sft_model": self.sft.ref,
                "tensor": view.tensor, "layer": view.layer, "module": view.module,
                "expert": view.expert, "part": view.part, "source_tensor": name,
                "stored_transposed": view.transposed, "n_rows": view.shape[0],
                "n_cols": view.shape[1], "storage_dtype": storage,
                "method": self.cfg.method, "device": self.device}

    @staticmethod
    def rows_of(common: dict, rows: list[dict]) -> tuple[list[dict], list[str]]:
        """A view's three role rows as raw.spectra rows; their non-finite warnings."""
        warnings = []
        for r in rows:
            r["singular_values"] = r["singular_values"].tolist()
            if r["n_nonfinite"]:
                warnings.append(f"{common['tensor']} ({r['role']}: "
                                f"{r['n_nonfinite']} NaN/Inf)")
        return [common | r for r in rows], warnings

    def piece_paths(self, i: int, of: int) -> list[Path]:
        """Where the `of` pieces of tensor i are kept until their merge."""
        folder = self.cfg.run_dir / "spectra" / "pieces"
        return [folder / f"{i:05d}-{p}-of-{of}.npz" for p in range(of)]

    def piece(self, i: int, parts: list[tuple[int, int]]) -> list[str]:
        """This shard's pieces of tensor i (rows, compute.plan.shards.n_pieces) to
        spectra/pieces/; the tensor's spectra file once every piece is there."""
        import numpy as np

        from compute.plan.shards import piece_rows

        name, path = self.plan.matrices[i], self.piece_paths(i, parts[0][1])
        for p, of in parts:
            if self.have(path[p]):
                continue  # done before this shard was killed
            rows = piece_rows(self.base.tensors[name].shape[0], p, of)
            (wb, storage), (ws, storage_s) = (self.base.read_array(name, rows),
                                              self.sft.read_array(name, rows))
            arrays = self.spectra.gram_piece(wb, ws, storage, storage_s)
            del wb, ws
            with atomic_path(path[p]) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            if self.store is not None:  # before looking for the others' pieces
                self.store.push([path[p]])
        return self.merge(i, path)

    def merge(self, i: int, path: list[Path]) -> list[str]:
        """Tensor i's spectra file from its pieces, by the shard of the last piece,
        once (the lock is per process: its worker threads take turns first)."""
        import numpy as np

        from compute.io.checkpoints import STORAGE
        from compute.plan.shards import manifest_lock

        store, name, out_path = self.store, self.plan.matrices[i], spectra_file(
            self.cfg.run_dir, i)
        with self.merging, manifest_lock(self.cfg.run_dir):
            if store is not None:  # other machines' pieces: as the store has them
                store.listing("spectra")
            if self.have(out_path) or not all(self.have(f) for f in path):
                return []
            if store is not None:
                store.fetch(path)
            storages = tuple(STORAGE[c.tensors[name].dtype]
                             for c in (self.base, self.sft))
            rows = self.spectra.merge_pieces([dict(np.load(f)) for f in path],
                                             storages)
            out, warnings = self.rows_of(
                self.common_of(name, self.plan.views[name][0], storages[0]), rows)
            write_rows(out, "spectra", out_path)
            if store is not None:  # the spectra file replaces the pieces there too
                store.push([out_path])
                store.delete(path)
            for f in path:
                f.unlink(missing_ok=True)
        return warnings

    def one(self, i: int) -> list[str]:
        """Spectra of tensor i's matrices (compute.arch.naming's views: itself, its
        fused parts, its experts) into one Parquet file; the non-finite warnings."""
        from compute.io.adapters import view_factors

        name, torch = self.plan.matrices[i], self.torch
        parts = self.pieces.get(i, [(0, 1)])
        if parts[0][1] > 1:  # a tensor split across shards
            if torch is None and not self.want_dirs and not self.adapter:
                return self.piece(i, parts)
            if not any(p == 0 for p, _ in parts):
                return []  # the GPU, vectors or an adapter: piece 0's shard does all
        if torch is None:
            (wb, storage), (ws, storage_s) = (self.base.read_array(name),
                                              self.sft.read_array(name))
        else:
            wb, ws = self.base.read(name), self.sft.read(name)
            storage = self.spectra.storage_name(wb.dtype)
            storage_s = self.spectra.storage_name(ws.dtype)
        # an adapter: dW = its factors' product (None: W_sft is read), no rounding
        factors = self.sft.lowrank(name) if self.adapter else None
        out, warnings, traps = [], [], []
        tables: dict[str, list[dict]] = {}
        for view in self.plan.views[name]:
            rows, found = self.view_spectra(view.take(wb), view.take(ws), storage,
                                            storage_s, view,
                                            view_factors(view, factors))
            if self.cfg.traps:
                traps += self.trap_rows(view, (view.take(wb), storage),
                                        (view.take(ws), storage_s),
                                        view_factors(view, factors), rows)
            if self.adapter and self.sft.exact(name):
                rows[2]["noise_sigma"] = 0.0  # W_sft = W_base (+ BA): never rounded
            common = self.common_of(name, view, storage)
            view_rows, view_warnings = self.rows_of(common, rows)
            out += view_rows
            warnings += view_warnings
            if self.want_dirs:
                for table, recs in self.dfiles.matrix_rows(common, found).items():
                    tables.setdefault(table, []).extend(recs)
        del wb, ws
        if self.want_dirs:  # first: the spectra file marks tensor i done (resume)
            self.dfiles.write_tensor(self.cfg.run_dir, i, tables)
        if self.cfg.traps:
            write_rows(traps, "traps", traps_file(self.cfg.run_dir, i))
        write_rows(out, "spectra", spectra_file(self.cfg.run_dir, i))
        return warnings

    def trap_rows(self, view, base, sft, lowrank, rows: list[dict]) -> list[dict]:
        """The correlation traps of W_base and W_sft of one matrix (`base`, `sft`:
        (the view's array or tensor, storage)), as (out, in) fp64 arrays; `rows`:
        its spectra rows (base, sft, delta), whose singular values they compare."""
        import numpy as np

        from compute.linalg.traps import trap_row

        def fp64(w, storage):
            if not isinstance(w, np.ndarray):  # torch's path
                return w.double().cpu().numpy()
            return self.spectra.to_float64(w, storage)

        wb = fp64(*base)
        ws = wb + lowrank[0] @ lowrank[1] if lowrank is not None else fp64(*sft)
        out = []
        for role, w, row in (("base", wb, rows[0]), ("sft", ws, rows[1])):
            w = w.T if view.transposed else w
            out.append({"run_id": self.run_id, "pair": self.pair,
                        "tensor": view.tensor, "layer": view.layer,
                        "module": view.module, "expert": view.expert,
                        "part": view.part, "role": role, "n_rows": w.shape[0],
                        "n_cols": w.shape[1]}
                       | trap_row(w, row["singular_values"], self.cfg.trap_seed))
        return out

    def view_spectra(self, vb, vs, storage: str, storage_s: str, view,
                     lowrank) -> tuple[list[dict], object]:
        """The three role rows of one matrix (and its singular vectors, where asked
        for): NumPy's Gram path on a CPU, else torch's."""
        cfg, torch = self.cfg, self.torch
        if self.want_dirs:  # the same spectra, and the singular vectors
            return self.dfiles.compute(vb, vs, storage, storage_s, view, lowrank,
                                       torch, self.device, self.n_vectors,
                                       cfg.full_basis_max)
        if torch is None:
            return self.spectra.array_spectra(vb, vs, storage, storage_s,
                                              lowrank=lowrank), None
        with torch.inference_mode():  # thread-local: set in each worker
            return self.spectra.tensor_spectra(
                vb, vs, device=torch.device(self.device), method=cfg.method,
                lowrank=lowrank and tuple(map(torch.from_numpy, lowrank))), None

    def compute(self, todo: list[int]) -> tuple[dict[int, list[str]], int]:
        """Every tensor of `todo` on the worker threads, the 1-D tensors on this
        one; ({tensor index: non-finite warnings}, workers)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        bad: dict[int, list[str]] = {}
        workers = self.spectra.spectra_workers(self.device, len(todo))
        with self.spectra.worker_threads(workers), ThreadPoolExecutor(
                workers, thread_name_prefix="spectra") as pool:
            pending = {pool.submit(self.one, i): i for i in todo}
            try:
                self.vectors()
                from tqdm import tqdm

                n = len(self.plan.matrices)
                bar = tqdm(total=n, initial=n - len(todo), unit="tensor",
                           desc=f"spectra {self.pair}", disable=not self.cfg.progress,
                           dynamic_ncols=True)
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        i = pending.pop(fut)
                        bad[i] = fut.result()  # re-raises a worker's error
                        self.push_tensor(i)
                        bar.update(1)
                bar.close()
            finally:  # an error or ^C: start nothing new; running tensors finish
                for fut in pending:
                    fut.cancel()
        return bad, workers

    def push_tensor(self, i: int) -> None:
        """Upload the files of tensor i to the store (if any), its marker last."""
        if self.store is not None:
            run_dir, dfiles = self.cfg.run_dir, self.dfiles
            self.store.push([*([traps_file(run_dir, i)] if self.cfg.traps else []),
                             spectra_file(run_dir, i), *(
                dfiles.path(run_dir, t, i) for t in (*dfiles.TABLES, "vectors"))])

    def finish(self, bad: dict[int, list[str]], workers: int) -> None:
        """Warn of non-finite tensors; when every file of the pair is there (this
        shard's and the others'), the manifest says so and the directions finish."""
        import numpy as np

        from ingest.runfolder import inventory

        cfg, store, have, n = self.cfg, self.store, self.have, len(self.plan.matrices)
        bad_list = [w for i in sorted(bad) for w in bad[i]]
        for b in bad_list:
            print(f"warning: non-finite entries in {b}; its spectrum is left empty",
                  file=sys.stderr)
        if store is not None:  # what this shard made is there: the others' files?
            store.push(cfg.run_dir / "spectra" / f for f in ("vectors.parquet",
                                                             "added_tokens.parquet"))
            store.listing()
        if not (have(cfg.run_dir / "spectra" / "vectors.parquet") and all(
                have(spectra_file(cfg.run_dir, i)) for i in range(n))):
            return
        plan, sft, torch = self.plan, self.sft, self.torch
        self.manifest["kinds"]["spectra"] |= {
            "finished_at": now(), "device": self.device,
            "dtype": "fp64 gram" if cfg.method == "gram" else cfg.method,
            "options": {"method": cfg.method, "tied_embeddings": plan.tied,
                        "adapter": sft.summary() if self.adapter else None,
                        "vocabulary": plan.vocab.options() if plan.vocab else None,
                        "nonfinite_tensors": bad_list, "numpy": np.__version__,
                        "torch": torch.__version__ if torch else None,
                        "workers": workers, "trajectory": series_run(cfg)},
            "inventory": inventory(cfg.run_dir, "spectra",
                                   store.known if store is not None else None)}
        if self.want_dirs and all(have(self.dfiles.path(cfg.run_dir, "vectors", i))
                                  for i in range(n)):
            if store is not None:  # the token labels read every tensor's vectors
                store.pull(["directions/rows", "directions/vectors"])
            self.dfiles.finish(cfg.run_dir, self.manifest, sft, plan, self.device,
                               store.known if store is not None else None)
        save_manifest(cfg, self.manifest)


def default_window(base: Checkpoint, sft: Checkpoint, cap: int = 1024) -> int:
    """1024 tokens, or the shorter context of the two models (the trained demo
    pair's is 512): scoring past it would measure what neither model learned."""
    contexts = [c.config.get(k) for c in (base, sft)
                for k in ("max_position_embeddings", "n_positions", "seq_length")]
    return min([cap, *(n for n in contexts if isinstance(n, int) and n > 0)])


def run_behaviour_half(cfg: Config, base: Checkpoint, sft: Checkpoint, manifest: dict,
                       device: str, store=None) -> None:
    """Score the prompts with both models into OUT/<pair>/behaviour (resumed
    where a run stopped); the manifest records the kind when done."""
    from compute.behaviour.scoring import load_prompts, run_behaviour

    source = cfg.prompts
    if source is None:
        from ingest.warehouse import db_path

        source = db_path(cfg.db)
    try:
        prompts = load_prompts(source)
    except Exception as exc:  # a missing warehouse or mart is not fatal to spectra
        print(f"behaviour skipped: no prompts from {source} ({exc}). Load a site "
              "(python -m ingest.stackexchange) and run dbt first, or pass --prompts.",
              file=sys.stderr)
        return
    if len(prompts) == 0:
        print(f"behaviour skipped: {source} has no prompts", file=sys.stderr)
        return
    started = manifest["kinds"].get("behaviour", {}).get("started_at") or now()
    manifest["kinds"]["behaviour"] = {"started_at": started, "finished_at": None}
    save_manifest(cfg, manifest)
    score = functools.partial(
        run_behaviour, base.path, sft.path, prompts, cfg.run_dir,
        run_id=manifest["run_id"], pair=cfg.pair, device=device,
        batch_size=cfg.batch_size, window=cfg.window or default_window(base, sft),
        progress=cfg.progress, share=cfg.shard, attn_implementation=cfg.attn)
    options = score()
    if store is not None and options.get("n_posts_pending"):
        # other machines' parts: upload this one's, fetch theirs, count again (this
        # part is done: nothing is scored)
        store.push_all("behaviour")
        store.pull(["behaviour"])
        options["n_posts_pending"] = score()["n_posts_pending"]
    pending = options.get("n_posts_pending", 0)
    if pending:  # shards: the part that finds every post done marks it finished
        print(f"behaviour: {pending} post(s) of other shards are not done yet",
              file=sys.stderr)
        return
    from compute.behaviour.scoring import count_nonfinite
    from ingest.runfolder import inventory

    options["n_tokens_nonfinite"] = bad = count_nonfinite(cfg.run_dir)
    for role, n in bad.items():
        if n:
            print(f"warning: behaviour: the {role} model's logits are not finite at {n}"
                  " scored token(s) (NaN/Inf weights: python -m compute.doctor --scan);"
                  " their log-probs are NaN, flagged in raw.token_logprobs.nonfinite "
                  "and left out of the marts", file=sys.stderr)
    manifest["kinds"]["behaviour"] |= {
        "finished_at": now(), "device": device,
        "dtype": str(options.get("dtype")), "options": options,
        "inventory": inventory(cfg.run_dir, "behaviour")}
    save_manifest(cfg, manifest)
    if (cfg.run_dir / "directions" / "vectors").is_dir() and cfg.shard is None:
        from compute.run.direction_signs import write_signs

        n = write_signs(cfg.run_dir, source, device)  # dW's effect signs on the posts
        print(f"directions: effect signs of {n} directions from the posts' activations")
        if "directions" in manifest["kinds"]:  # its inventory lists signs.parquet now
            manifest["kinds"]["directions"]["inventory"] = inventory(cfg.run_dir,
                                                                     "directions")
            save_manifest(cfg, manifest)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done; 2 a problem with the input (checkpoints, prompts, earlier
    results), named in the message; 3 the warehouse is held by another process (the
    results are kept: load them later); 130 interrupted. Never a traceback for these."""
    from compute.run.trajectory import run_trajectory, wants_trajectory

    if wants_trajectory(sys.argv[1:] if argv is None else argv):  # a series of steps
        return run_trajectory(sys.argv[1:] if argv is None else argv, main)
    cfg = parse_args(argv)
    try:
        device = pick_device(cfg.device)
    except SystemExit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if cfg.pairs and (cfg.ray is None or cfg.dry_run):
        from compute.pairs.pairs_file import one_after_another

        return one_after_another(sys.argv[1:] if argv is None else argv, cfg.pairs,
                                 main)
    if cfg.ray is not None and not cfg.dry_run:
        heads = [(e.base, e.sft) for e in cfg.pairs] if cfg.pairs else [
            (cfg.base, cfg.sft)]
        too_many = next(filter(None, (shards_refused(b, s, cfg.shards)
                                      for b, s in heads)), None)
        if too_many:  # before N tasks are made
            print(f"error: {too_many}", file=sys.stderr)
            return 2
        from compute.run.cluster import main as on_ray

        return on_ray(cfg, sys.argv[1:] if argv is None else argv, cfg.pairs,
                      cfg.ray or None, main)
    build_if_planted(cfg.pair, cfg.base)
    if cfg.check:
        from compute.pairs.doctor import check_pair

        ok = check_pair(cfg.base, cfg.sft, revision_base=cfg.revision_base,
                        revision_sft=cfg.revision_sft, scan=cfg.scan,
                        progress=cfg.progress and sys.stderr.isatty())
        return 0 if ok else 2
    opened = open_checkpoints(cfg)
    if isinstance(opened, int):
        return opened
    base, sft, plan = opened
    if refused_shard_count(cfg, plan):
        return 2
    if cfg.dry_run:
        from compute.plan.shards import dry_run, print_plan

        print_plan(dry_run(plan, cfg.shards), cfg.pair)
        return 0
    print(f"pair {cfg.pair}: {base.ref} ({base.revision}) vs {sft.ref} "
          f"({sft.revision}); {plan.n_views} matrices in {len(plan.matrices)} "
          f"tensors, {len(plan.vectors)} "
          f"1-D tensors{', tied embeddings' if plan.tied else ''}; device {device}",
          flush=True)
    code = compute_and_load(cfg, base, sft, plan, device,
                            sys.argv[1:] if argv is None else argv)
    if code:
        return code
    print(f"done in {time.perf_counter() - t0:.1f} s; results in {cfg.results}")
    return 0


def open_checkpoints(cfg: Config) -> tuple[Checkpoint, Checkpoint, Plan] | int:
    """(base, SFT, the pair's plan), or the exit status after saying why not (a dry
    run of hub ids reads their headers only, not the weights)."""
    try:
        from compute.io.checkpoints import hub_headers

        heads = (cfg.base, cfg.revision_base), (cfg.sft, cfg.revision_sft)
        base, sft = (hub_headers(*h) if cfg.dry_run else None for h in heads)
        base = base or resolve(cfg.base, cfg.revision_base)
        sft = sft or resolve_sft(cfg.sft, base, cfg.revision_sft)
        return base, sft, pair_plan(base, sft)
    except CheckpointError as exc:
        print(f"error: {exc}\n(python -m compute.doctor --base {cfg.base} --sft "
              f"{cfg.sft} lists every problem of the pair)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was computed or changed", file=sys.stderr)
        return 130


def refused_shard_count(cfg: Config, plan: Plan) -> bool:
    """Whether --shards (of a shard or a dry run) is above the pair's work units,
    after saying so: refused before anything is computed."""
    if cfg.shard is None and not cfg.dry_run:
        return False
    from compute.plan.shards import check_count

    try:
        check_count(plan, cfg.shards, f"--shard {cfg.shard[0]}/{cfg.shards}"
                    if cfg.shard else f"--shards {cfg.shards}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return True
    return False


def compute_and_load(cfg: Config, base: Checkpoint, sft: Checkpoint, plan: Plan,
                     device: str, argv: list[str]) -> int:
    """A folder that is not a run of the pair refused (unless --force), then both
    halves under the pair folder's lock, then the load (or, for a shard, what to
    run when every shard is done); the exit status. A failed behaviour half still
    loads what finished, then names the command (from `argv`) that completes the
    run."""
    from ingest.runfolder import FolderError, check_folder

    try:  # before the lock file is made in it
        check_folder(cfg.run_dir, cfg.pair, force=cfg.force)
    except FolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        try:
            from compute.plan.shards import lock_name

            stack.enter_context(pair_lock(cfg.run_dir, lock_name(cfg.shard)))
        except SystemExit as exc:  # another compute.run holds this pair's folder
            print(f"error: {exc}", file=sys.stderr)
            return 2
        halves = compute_halves(cfg, base, sft, plan, device)
        if isinstance(halves, int):
            return halves
        manifest, failed = halves
        kinds = [k for k, v in manifest["kinds"].items() if v.get("finished_at")]
        if failed is not None and not kinds:
            print(f"error: behaviour: {type(failed).__name__}: {failed}\nResults so "
                  f"far are kept in {cfg.run_dir}; nothing was loaded into the "
                  "warehouse.", file=sys.stderr)
            return 2
        if cfg.shard is not None:  # one load, once every part is there
            print(f"shard {cfg.shard[0]}/{cfg.shard[1]} done; when all "
                  f"{cfg.shard[1]} are: python -m ingest.compute_load "
                  f"{shlex.quote(cfg.results)}")
        elif cfg.load and kinds and cfg.max_tensors is None:
            from ingest.compute_load import load_or_explain

            code = load_or_explain(cfg.run_dir, cfg.db, kinds,
                                   done="loaded into the warehouse")
            if code or failed is None:
                return code
        if failed is not None:
            print(partial_message(failed, kinds, argv,
                                  cfg.load and cfg.shard is None), file=sys.stderr)
            return 2
    return 0


def partial_message(exc: Exception, kinds: list[str], argv: list[str],
                    loaded: bool) -> str:
    """What a run whose behaviour half failed tells its user: the error, what
    finished (and was loaded), and the command that completes the run (the same
    arguments, the finished spectra kept: --skip-spectra, never --force)."""
    drop = {"--force", "--skip-behaviour", "--skip-spectra"}
    again = shlex.join(["python", "-m", "compute.run",
                        *(a for a in argv if a not in drop), "--skip-spectra"])
    return (f"error: behaviour: {type(exc).__name__}: {exc}\n"
            f"partial result: {', '.join(kinds)} finished"
            + (" and loaded into the warehouse" if loaded else "")
            + f"; the behaviour half did not. To complete the run:\n  {again}")


def compute_halves(cfg: Config, base: Checkpoint, sft: Checkpoint, plan: Plan,
                   device: str) -> tuple[dict, Exception | None] | int:
    """The manifest (opened or resumed), the spectra and behaviour halves, the
    store's copy; (the manifest, the behaviour half's error or None: what finished
    is loaded all the same), or the exit status after saying what went wrong
    (results so far are kept)."""
    from compute.plan.shards import manifest_lock
    from ingest.results import ResultsError

    kept = f"Results so far are kept in {cfg.run_dir}"
    try:
        with (manifest_lock(cfg.run_dir) if cfg.shard
              else contextlib.nullcontext()):  # shards: the first one creates it
            manifest = open_manifest(cfg, base, sft)
        store = None
        if cfg.remote:  # an object store: claim the prefix, pull what it has
            from ingest.results import attach

            store = attach(cfg.results, cfg.run_dir, manifest, force=cfg.force)
        if cfg.spectra:
            compute_spectra(cfg, base, sft, plan, manifest, device, store=store)
        failed = None
        if cfg.behaviour and cfg.max_tensors is None:  # shards: their posts
            try:
                run_behaviour_half(cfg, base, sft, manifest, device, store=store)
            except ResultsError:
                raise
            except Exception as exc:  # a model transformers cannot load or run
                failed = exc
        if store is not None:  # the files, then the records of finished kinds
            store.push_all()
            store.publish_kinds(manifest)
    except (ResultsError, OSError) as exc:  # the store refused, or is unreachable
        print(f"error: {exc}\n{kept} (and under {cfg.results}); nothing was loaded "
              "into the warehouse.", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"error: {exc}\n{kept}; nothing was loaded into the warehouse.",
              file=sys.stderr)
        return 2
    except ValueError as exc:  # refused input
        print(f"error: {type(exc).__name__}: {exc}\n{kept}; nothing was loaded "
              "into the warehouse.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: results so far are kept in {cfg.run_dir}; run the "
              "same command again to resume.", file=sys.stderr)
        return 130
    return manifest, failed


if __name__ == "__main__":
    # The objects of the imports (~170k when torch is loaded) need no cycle
    # collection: frozen, the collector's full passes during the run stop walking them.
    gc.freeze()
    code = main()
    # Everything is written and closed: skip the interpreter's teardown (with torch
    # loaded, about 0.5 s of module and library finalizers, longer than small runs).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
