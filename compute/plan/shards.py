"""Split a pair's tensors into N shards of about equal cost; the plan of a dry run.

    python -m compute.run --pair 72B --shard 0/8 --no-load   # one of 8 parts, anywhere
    python -m compute.run --pair 72B --dry-run --shards 8    # the plan, from headers only

A shard computes only its tensors' spectra into the pair's folder (one Parquet file
per tensor, as a single run writes them), so any mix of shards, in any order, on any
machines that share OUT completes the pair; `python -m ingest.compute_load OUT/<pair>`
then loads it once. The split is a pure function of the tensor shapes: every shard
computes the same split without talking to the others.

Cost of an m x n matrix: k^2 (m + n) with k = min(m, n) (the Gram of the short side,
k^2 max(m, n) multiply-adds, and its eigensolve, ~k^3), summed over the matrices a
tensor gives (compute.arch.naming's views: fused parts and experts too). Shards are filled
largest first, each tensor to the least loaded shard (ties: the lower index), which
keeps the largest shard within one unit's cost of the mean. A tensor larger than the
mean share is split into pieces of rows (n_pieces), whose partial Grams the last
piece's shard sums before the eigensolve (compute.linalg.spectra.merge_pieces).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

BYTES_FP64 = 8


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" (0 <= I < N, as SLURM array and Kubernetes indexed-job indices count)."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= I < N (the shards of N=4 "
                         "are 0/4, 1/4, 2/4, 3/4)")
    return i, n


def matrix_cost(m: int, n: int) -> float:
    """k^2 (m + n), k = min(m, n): the Gram and its eigensolve, in multiply-adds."""
    k = min(m, n)
    return float(k) * k * (m + n)


def tensor_costs(plan) -> list[float]:
    """Estimated cost of each of plan.matrices (all its views)."""
    return [sum(matrix_cost(*v.shape) for v in plan.views[name])
            for name in plan.matrices]


def split(costs: Sequence[float], n: int) -> list[list[int]]:
    """Indices of `costs` in n shards: largest first, each to the least loaded shard
    (ties to the lower shard); deterministic, every index in exactly one shard."""
    if n < 1:
        raise ValueError("the number of shards must be >= 1")
    loads = [0.0] * n
    parts: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        s = min(range(n), key=lambda s: (loads[s], s))
        loads[s] += costs[i]
        parts[s].append(i)
    return [sorted(p) for p in parts]


def n_pieces(plan, n: int) -> list[int]:
    """Pieces of each of plan.matrices at n shards: 1, or, for a tall matrix taken
    whole (no fused parts, experts or transposition) whose cost exceeds a shard's
    mean share, ceil(cost / mean) pieces of rows (each at least as tall as wide).
    A piece's partial Grams are summed before the eigensolve (compute.linalg.spectra.
    merge_pieces), so the tensor's spectra are those of the whole matrix."""
    costs = tensor_costs(plan)
    mean = sum(costs) / n if costs else 0.0
    out = []
    for name, cost in zip(plan.matrices, costs, strict=True):
        v = plan.views[name][0]
        out.append(max(1, min(math.ceil(cost / mean), v.shape[0] // v.shape[1]))
                   if n > 1 and _whole(plan, name) and cost > mean else 1)
    return out


def _whole(plan, name: str) -> bool:
    """Whether tensor `name` is one tall matrix taken whole (it can be cut in rows):
    no fused parts, experts or transposition."""
    v = plan.views[name][0]
    return (len(plan.views[name]) == 1 and v.stack is None and v.rows is None
            and not v.transposed and v.shape[0] >= v.shape[1] > 0)


def piece_rows(n_rows: int, piece: int, pieces: int) -> slice:
    """The rows of piece `piece` of `pieces` (balanced, in order)."""
    return slice(n_rows * piece // pieces, n_rows * (piece + 1) // pieces)


def units(plan, n: int) -> tuple[list[tuple[int, int, int]], list[float]]:
    """The units the n shards share, (tensor index, piece, pieces), and their
    estimated costs: whole tensors, and the pieces of the ones n_pieces splits."""
    out, costs = [], []
    for i, (cost, p) in enumerate(zip(tensor_costs(plan), n_pieces(plan, n),
                                      strict=True)):
        out += [(i, j, p) for j in range(p)]
        costs += [cost / p] * p
    return out, costs


def most_units(plan) -> int:
    """The most work units any number of shards gives the pair: a tall matrix taken
    whole splits into at most rows // cols pieces (n_pieces), any other tensor into
    none. Counted from shapes, without lists of n entries."""
    shapes = (plan.views[name][0].shape for name in plan.matrices)
    return sum(m // n if _whole(plan, name) else 1
               for name, (m, n) in zip(plan.matrices, shapes, strict=True))


def check_count(plan, n: int, flag: str) -> None:
    """Refuse (ValueError) a number of shards above the pair's work units at that
    number (some shards would have nothing to do): at once, however large n is."""
    have = most_units(plan)
    if n <= have:
        have = len(units(plan, n)[0])
    if n > have:
        raise ValueError(f"{flag}: {n} shards, but the pair has only {have} work "
                         f"unit(s) at that count ({len(plan.matrices)} tensors, some "
                         f"split into pieces of rows); use at most "
                         f"{len(plan.matrices)} shards")


def shard_units(plan, shard: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The units (tensor index, piece, pieces) that shard (I, N) computes."""
    i, n = shard
    all_units, costs = units(plan, n)
    return [all_units[k] for k in split(costs, n)[i]]


def peak_bytes(m: int, n: int) -> int:
    """Device memory bound of one m x n matrix: the matrix in fp64 and its k x k Gram
    twice (the Gram and the eigensolver's copy); the storage-dtype copies (2 x bf16 =
    half of fp64) and the fp64 column blocks fit inside the fp64 matrix's share."""
    k = min(m, n)
    return BYTES_FP64 * (m * n + 2 * k * k)


def dry_run(plan, n: int) -> dict:
    """The plan of n shards: tensors, estimated cost and peak memory of each; the
    pair's largest matrix and its memory bound. Reads shapes only."""
    all_units, costs = units(plan, n)
    parts = split(costs, n)
    views = {name: plan.views[name] for name in plan.matrices}
    shapes = [v.shape for vs in views.values() for v in vs]
    big = max(shapes, key=lambda s: peak_bytes(*s)) if shapes else (0, 0)
    total = sum(costs)
    shards = []
    for s, idx in enumerate(parts):
        mine = [all_units[k] for k in idx]
        names = list(dict.fromkeys(plan.matrices[i] for i, _, _ in mine))
        shards.append({
            "shard": f"{s}/{n}", "tensors": len(names),
            "pieces": sum(p > 1 for _, _, p in mine),
            "matrices": sum(len(views[m]) for m in names),
            "cost": sum(costs[k] for k in idx),
            "peak_bytes": max((peak_bytes(*v.shape) for m in names for v in views[m]),
                              default=0),
            "first_tensors": names[:3]})
    mean = total / n
    return {"n_shards": n, "n_tensors": len(plan.matrices),
            "n_matrices": len(shapes), "n_vectors": len(plan.vectors),
            "n_split": sum(p > 1 for p in n_pieces(plan, n)),
            "total_cost": total,
            "balance": max(s["cost"] for s in shards) / mean if total else 1.0,
            "largest_matrix": list(big), "peak_bytes": peak_bytes(*big),
            "shards": shards}


def print_plan(info: dict, pair: str) -> None:
    """Print a dry run's plan (compute.plan.shards.dry_run) of `pair`."""
    gib = 1024 ** 3
    m, n = info["largest_matrix"]
    print(f"dry run of {pair}: {info['n_tensors']} tensors ({info['n_matrices']} "
          f"matrices, {info['n_vectors']} 1-D) in {info['n_shards']} shard(s); "
          f"estimated cost {info['total_cost']:.3e} (k^2 (m + n)); largest shard / "
          f"mean {info['balance']:.3f}")
    print(f"peak device memory: largest matrix {m} x {n}: fp64 {m * n * 8 / gib:.2f} "
          f"GiB + Gram {min(m, n)}^2 x 2 x 8 B = {info['peak_bytes'] / gib:.2f} GiB")
    if info["n_split"]:
        print(f"{info['n_split']} tensor(s) larger than a shard's share split into "
              "pieces of rows (their partial Grams summed before the eigensolve)")
    for s in info["shards"]:
        pieces = f" ({s['pieces']} of them pieces)" if s["pieces"] else ""
        print(f"  shard {s['shard']}: {s['tensors']} tensors{pieces}, {s['matrices']} "
              f"matrices, cost {s['cost']:.3e}, peak {s['peak_bytes'] / gib:.2f} GiB"
              f" (e.g. {', '.join(s['first_tensors'])})")


_held: dict[str, int] = {}


@contextlib.contextmanager
def manifest_lock(run_dir: Path) -> Iterator[None]:
    """Shards of one pair share run.json: its read-modify-writes take this lock
    (blocking; re-entrant within a process)."""
    key = str(run_dir.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".manifest.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _held[key] = 1
        try:
            yield
        finally:
            _held[key] = 0


def merged(path: Path, manifest: dict) -> dict:
    """`manifest` with the kinds other shards finished kept: a kind finished on disk
    stays finished unless this process finished it too (then its record wins)."""
    try:
        disk = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return manifest
    if disk.get("run_id") != manifest.get("run_id"):
        return manifest
    kinds = dict(disk.get("kinds", {}))
    for name, info in manifest["kinds"].items():
        if kinds.get(name, {}).get("finished_at") and not info.get("finished_at"):
            continue
        kinds[name] = info
    manifest["kinds"] = kinds
    return manifest


@contextlib.contextmanager
def joined(run_dir: Path, manifest: dict) -> Iterator[None]:
    """Hold the manifest lock with `manifest`'s kinds as run.json has them now, so a
    shard starts its kinds as the shards before it left them (not as they were when
    it read run.json: another shard may have started the directions since)."""
    with manifest_lock(run_dir):
        try:
            disk = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError, RecursionError):
            disk = {}
        if disk.get("run_id") == manifest.get("run_id"):
            manifest["kinds"] = disk.get("kinds", {})
        yield


def lock_name(shard: tuple[int, int] | None) -> str:
    """The pair folder's lock file: one per shard, so shards run side by side."""
    return ".lock" if shard is None else f".lock.shard-{shard[0]}-of-{shard[1]}"
