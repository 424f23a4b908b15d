"""A fine-tune's checkpoints as a series: each step a pair run against one base.

    python -m compute.run --base B --trajectory runs/sft/ --name N       # checkpoint-*/
    python -m compute.run --base B --trajectory 'runs/sft/step_*' --name N   # a glob
    python -m compute.run --base B --trajectory steps.toml --name N      # [[step]] list
    python -m compute.run --base org/base --trajectory org/sft@step-500,org/sft@step-1000 --name N
    python -m compute.run ... --trajectory ... --dry-run                  # the cost only

The series is ordered by step: the number of a `checkpoint-<step>` folder (any
folder's trailing number), of a hub revision (`org/sft@step-1000`), or the `step` of a
TOML table (`[[step]]` with `step`, `model`, optional `revision` and `tokens_seen`;
paths relative to the file). Tokens seen and the training loss come from a
checkpoint's `trainer_state.json` where it has one (transformers' Trainer writes
it; `num_input_tokens_seen` is logged when the Trainer counts tokens), else from the
TOML.

Every step is an ordinary pair run (compute.run's own `main`, with the options given
here: `--skip-behaviour`, `--vectors K`, `--device` ...) named `N-step<step>` under
OUT/N/steps/, its run record marked as a run of the series (`--series-run`); besides
it, for every step after the first, a spectra-only run of the consecutive pair
(checkpoint t-1 as the base, t as the SFT),
named `N-diff<step>`: its dW is W_t - W_{t-1} = dW_t - dW_{t-1}, so the step-to-step
norms and (noise-aware signal) ranks are measured by the same arithmetic as dW itself,
rounding noise of both checkpoints included (they are not derivable from the two
spectra). The first step's difference is dW_1 itself. OUT/N/trajectory.json is the
series' one manifest (the steps, their pairs, what is done); a step whose runs are
done is skipped, so a killed series resumes at its first unfinished step, and inside
it at its first unfinished tensor. Once all are done, the overlap of consecutive top-k
dW subspaces is computed from the steps' singular vectors (compute.run --vectors) to
OUT/N/trajectory/overlap.parquet, and the series is loaded (ingest.trajectory).

    python -m compute.run ... --trajectory ... --shard 2/8 --no-load  # one part
    python -m compute.run ... --trajectory ... --ray --shards 4        # on Ray

`--shard I/N` deals the series' runs (cut into parts of their tensors and posts when
there are fewer runs than shards) to the shards as compute.plan.shards deals tensors
(shard_runs); `--ray` runs every run's N shards as tasks at once (run_on_ray). Then
the command without them finishes the steps and loads, computing nothing again.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import tomllib

from compute.io.files import atomic_write_bytes, now, write_parquet

STATE_FILE = "trainer_state.json"
_STEP = re.compile(r"(\d+)$")


class TrajectoryError(ValueError):
    """A series we refuse (the message names the folder, file or item)."""


@dataclasses.dataclass
class Step:
    step: int
    model: str  # a folder or a hub id
    revision: str | None = None
    tokens_seen: int | None = None
    train_loss: float | None = None

    @property
    def label(self) -> str:
        """The checkpoint as the user named it: `model` or `model@revision`."""
        return self.model + (f"@{self.revision}" if self.revision else "")


def wants_trajectory(argv: list[str]) -> bool:
    """Whether a command line asks for a series (`--trajectory` among its options)."""
    return any(a == "--trajectory" or a.startswith("--trajectory=") for a in argv)


def step_of(name: str) -> int | None:
    """The trailing number of a folder or revision name (`checkpoint-500` -> 500)."""
    found = _STEP.search(name.rstrip("/"))
    return int(found.group(1)) if found else None


def read_trainer_state(folder: Path, step: int) -> tuple[int | None, float | None]:
    """(tokens seen, training loss) at `step` from a folder's trainer_state.json: the
    last logged values at or before the step; (None, None) without the file."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None, None
    try:
        history = json.loads(path.read_text()).get("log_history") or []
    except (json.JSONDecodeError, OSError, AttributeError) as exc:
        raise TrajectoryError(f"{path}: unreadable ({exc})") from None
    tokens = loss = None
    for entry in sorted((e for e in history if isinstance(e, dict)
                         and isinstance(e.get("step"), int) and e["step"] <= step),
                        key=lambda e: e["step"]):
        tokens = entry.get("num_input_tokens_seen", tokens)
        loss = entry.get("loss", loss)
    return (int(tokens) if tokens is not None else None,
            float(loss) if loss is not None else None)


def _from_toml(path: Path) -> list[Step]:
    try:
        tables = tomllib.loads(path.read_text()).get("step")
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise TrajectoryError(f"{path}: {exc}") from None
    if not isinstance(tables, list) or not tables:
        raise TrajectoryError(f"{path}: no [[step]] tables (step = N, model = ...)")
    steps = []
    for k, t in enumerate(tables, start=1):
        if not isinstance(t.get("step"), int) or not isinstance(t.get("model"), str):
            raise TrajectoryError(f"{path}: step table {k} needs step (an integer) "
                                  "and model (a folder or hub id)")
        model = t["model"]
        if (path.parent / model).is_dir():
            model = str(path.parent / model)
        steps.append(Step(t["step"], model, t.get("revision"), t.get("tokens_seen"),
                          t.get("train_loss")))
    return steps


def _from_folders(folders: list[Path], source: str) -> list[Step]:
    steps = []
    for f in folders:
        number = step_of(f.name)
        if number is None:
            raise TrajectoryError(f"{f}: no step number at the end of the folder's "
                                  f"name (from {source}); list the steps in a TOML file")
        steps.append(Step(number, str(f)))
    return steps


def _from_list(items: list[str]) -> list[Step]:
    steps = []
    for item in items:
        model, _, revision = item.partition("@")
        number = step_of(revision) if revision else step_of(Path(model).name)
        if number is None or (revision and re.fullmatch(r"[0-9a-f]{40}", revision)):
            raise TrajectoryError(f"{item}: cannot tell its step from the name; list "
                                  "the steps in a TOML file ([[step]] step = N, model "
                                  "= ..., revision = ...)")
        steps.append(Step(number, model, revision or None))
    return steps


def parse_series(spec: str) -> list[Step]:
    """The steps `--trajectory` names, sorted by step, with tokens seen and the loss
    from trainer_state.json where a local checkpoint has one."""
    path = Path(spec).expanduser()
    if spec.endswith(".toml"):
        if not path.is_file():
            raise TrajectoryError(f"{spec}: no such file")
        steps = _from_toml(path)
    elif path.is_dir() and not (path / "config.json").exists():
        found = [d for d in path.iterdir() if d.is_dir() and re.fullmatch(
            r"checkpoint-\d+", d.name)]
        if not found:
            raise TrajectoryError(f"{spec}: no checkpoint-<step> folders in it")
        steps = _from_folders(found, spec)
    elif any(c in spec for c in "*?["):
        found = [Path(p) for p in glob.glob(spec) if Path(p).is_dir()]
        if not found:
            raise TrajectoryError(f"{spec}: the pattern matches no folder")
        steps = _from_folders(found, spec)
    else:
        steps = _from_list([s.strip() for s in spec.split(",") if s.strip()])
    steps.sort(key=lambda s: s.step)
    for a, b in itertools.pairwise(steps):
        if a.step == b.step:
            raise TrajectoryError(f"{spec}: step {a.step} appears twice ({a.label}, "
                                  f"{b.label})")
    for s in steps:
        if Path(s.model).is_dir() and s.tokens_seen is None:
            tokens, loss = read_trainer_state(Path(s.model), s.step)
            s.tokens_seen, s.train_loss = tokens, s.train_loss if loss is None else loss
    if len(steps) < 2:
        raise TrajectoryError(f"{spec}: a series needs at least two steps; for one "
                              "checkpoint use --sft")
    return steps


def step_pair(name: str, step: int) -> str:
    """The pair name of step `step` of series `name` (base vs the checkpoint)."""
    return f"{name}-step{step:07d}"


def diff_pair(name: str, step: int) -> str:
    """The pair name of the consecutive difference ending at `step`."""
    return f"{name}-diff{step:07d}"


@dataclasses.dataclass
class Series:
    name: str
    base: str
    steps: list[Step]
    out: Path  # OUT/<name>
    pair_args: list[str]  # options every step's run gets
    revision_base: str | None = None
    load: bool = True
    db: Path | None = None
    dry_run: bool = False
    shards: int = 1
    shard: tuple[int, int] | None = None  # --shard I/N: this process's part of the runs
    ray: str | None = None  # --ray [ADDRESS]: every run's shards as Ray tasks

    @property
    def sharded(self) -> bool:
        """Whether this process computes one part of the series (--shard I/N)."""
        return self.shard is not None

    @property
    def steps_dir(self) -> Path:
        """The folder of the step runs (`OUT/NAME/steps/`)."""
        return self.out / "steps"

    @property
    def manifest_path(self) -> Path:
        """The series' one manifest, `OUT/NAME/trajectory.json`."""
        return self.out / "trajectory.json"


def parse_trajectory_args(argv: list[str]) -> Series:
    """The series' own options; every other option is passed to each step's run."""
    ap = argparse.ArgumentParser(
        prog="python -m compute.run --trajectory", allow_abbrev=False,
        description="Each checkpoint of a fine-tune as a pair run against one base "
        "(compute.run.trajectory); other options go to every step's run.")
    ap.add_argument("--trajectory", required=True, metavar="DIR|GLOB|FILE.toml|LIST")
    ap.add_argument("--base", required=True, help="the base: hub id or folder")
    ap.add_argument("--name", required=True, help="the series' name")
    ap.add_argument("--revision-base")
    ap.add_argument("--out", default="data/runs")
    ap.add_argument("--db", type=Path)
    ap.add_argument("--no-load", dest="load", action="store_false")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--shards", type=int, default=1)
    a, rest = ap.parse_known_args(argv)
    for bad in ("--sft", "--pair", "--pairs", "--revision-sft"):
        if any(r == bad or r.startswith(bad + "=") for r in rest):
            ap.error(f"{bad} does not go with --trajectory (the steps are the SFT side)")
    if "/" in a.name or a.name in ("", ".", ".."):
        ap.error(f"--name {a.name!r}: one path component, please")
    if "://" in a.out:
        ap.error("--trajectory writes to a local --out folder (load it with python -m "
                 "ingest.trajectory); an object store takes single pairs")
    try:
        steps = parse_series(a.trajectory)
    except TrajectoryError as exc:
        ap.error(str(exc))
    split = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    split.add_argument("--shard")
    split.add_argument("--ray", nargs="?", const="")
    own, rest = split.parse_known_args(rest)
    shard = None
    if own.shard is not None:
        from compute.plan.shards import parse_shard

        try:
            shard = parse_shard(own.shard)
        except ValueError as exc:
            ap.error(str(exc))
        if own.ray is not None:
            ap.error("--ray runs every shard: give --shards N, not --shard")
    pair_args = [*rest, "--db", str(a.db)] if a.db else list(rest)
    return Series(a.name, a.base, steps, Path(a.out) / a.name, pair_args,
                  a.revision_base, a.load, a.db, a.dry_run, a.shards, shard, own.ray)


def step_argv(series: Series, i: int, *, diff: bool) -> list[str]:
    """compute.run's command line for step i (0-based), or for its consecutive
    difference (checkpoint i-1 as the base, spectra only, no vectors); the series'
    --shard and --ray are not in it (shard_runs and run_on_ray add their own)."""
    step = series.steps[i]
    if diff:
        prev = series.steps[i - 1]
        base = ["--base", prev.model] + (["--revision-base", prev.revision]
                                         if prev.revision else [])
        name = diff_pair(series.name, step.step)
    else:
        base = ["--base", series.base] + (["--revision-base", series.revision_base]
                                          if series.revision_base else [])
        name = step_pair(series.name, step.step)
    argv = [*base, "--sft", step.model, "--name", name, "--out", str(series.steps_dir),
            *series.pair_args, "--series-run",
            f"{series.name}:{'difference' if diff else 'step'}"]
    if step.revision:
        argv += ["--revision-sft", step.revision]
    if diff:
        argv += ["--skip-behaviour", "--vectors", "0"]
    if not series.load:
        argv.append("--no-load")
    return argv


def open_series_manifest(series: Series) -> dict:
    """OUT/<name>/trajectory.json: kept when the base and the options are the same
    (its finished steps are then skipped), else started afresh."""
    want = {"name": series.name, "base_model": series.base,  # shards share steps:
            "base_revision": series.revision_base,  # pair_args has no --shard, --ray
            "pair_args": series.pair_args}
    path = series.manifest_path
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if all(old.get(k) == v for k, v in want.items()):
            return old
        print(f"{path}: earlier steps were run with another base or options; running "
              "every step again", file=sys.stderr)
    return want | {"started_at": now(), "steps": {}}


def save_series_manifest(series: Series, manifest: dict) -> None:
    """The manifest with every step's row (done or not), written atomically."""
    done = manifest.setdefault("steps", {})
    rows = []
    for i, s in enumerate(series.steps):
        rows.append({"step": s.step, "position": i + 1, "model": s.model,
                     "revision": s.revision, "tokens_seen": s.tokens_seen,
                     "train_loss": s.train_loss,
                     "pair": step_pair(series.name, s.step),
                     "diff_pair": diff_pair(series.name, s.step) if i else None,
                     "done": bool(done.get(str(s.step)))})
    manifest["series"] = rows
    series.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(series.manifest_path,
                       json.dumps(manifest, indent=2, default=str).encode())


def run_steps(series: Series, manifest: dict, pair_main: Callable[[list[str]], int]
              ) -> int:
    """Every step not yet done: its pair run, then its consecutive difference's;
    stops at the first failure (exit status of that run)."""
    done = manifest.setdefault("steps", {})
    total = len(series.steps)
    for i, step in enumerate(series.steps):
        if done.get(str(step.step)):
            print(f"step {step.step} ({i + 1}/{total}): done earlier", flush=True)
            continue
        for diff in (False, True) if i else (False,):
            what = "difference to the step before" if diff else "vs the base"
            print(f"step {step.step} ({i + 1}/{total}), {what}: {step.label}",
                  flush=True)
            code = pair_main(step_argv(series, i, diff=diff))
            if code:
                print(f"error: step {step.step} ({step.label}) stopped with exit "
                      f"status {code}; the steps before it are kept: run the same "
                      "command again to resume", file=sys.stderr)
                return code
        done[str(step.step)] = now()
        save_series_manifest(series, manifest)
    return 0


def series_runs(series: Series) -> list[tuple[int, bool]]:
    """Every pair run of the series in order: (step index, whether the consecutive
    difference); 2 n - 1 of them."""
    return [(i, diff) for i in range(len(series.steps))
            for diff in ((False, True) if i else (False,))]


def shard_runs(series: Series, costs: list[float]) -> list[tuple[int, bool, int, int]]:
    """This shard's part of the series (--shard I/N): units (step index, difference,
    part, parts), each the pair run's own `--shard part/parts`. The runs are cut into
    parts = ceil(N / runs) (1 while there are at least as many runs as shards) of
    cost costs[step] / parts and the units dealt as compute.plan.shards.split deals
    tensors (largest first to the least loaded shard), so the N shards cover every
    tensor of every run exactly once, each computing the same split alone."""
    from compute.plan.shards import split

    index, n = series.shard
    runs = series_runs(series)
    parts = -(-n // len(runs))
    units = [(i, diff, j, parts) for i, diff in runs for j in range(parts)]
    dealt = split([costs[i] / parts for i, *_ in units], n)[index]
    return [units[u] for u in dealt]


def run_shard(series: Series, pair_main: Callable[[list[str]], int]) -> int:
    """The units shard_runs gives this shard, each a pair run with its `--shard`;
    nothing is loaded or marked done (the run without --shard does that)."""
    costs = step_costs(series)
    if costs is None:
        return 2
    mine = shard_runs(series, costs)
    print(f"shard {series.shard[0]}/{series.shard[1]} of {series.name}: {len(mine)} "
          f"of the {len(series_runs(series))} runs' parts", flush=True)
    for i, diff, part, parts in mine:
        step = series.steps[i]
        print(f"step {step.step}, {'difference' if diff else 'vs the base'}, part "
              f"{part}/{parts}: {step.label}", flush=True)
        code = pair_main([*step_argv(series, i, diff=diff),
                          "--shard", f"{part}/{parts}"])
        if code:
            print(f"error: step {step.step} ({step.label}), part {part}/{parts}, "
                  f"stopped with exit status {code}; run this shard again to resume",
                  file=sys.stderr)
            return code
    return 0


def run_on_ray(series: Series, pair_main: Callable[[list[str]], int]) -> int:
    """--ray: every run of the series x --shards N as Ray tasks at once (steps and
    differences in parallel, compute.run.cluster); 1 when a task failed every retry.
    The plain pass after it finishes, loads and marks the steps."""
    from compute.run import cluster

    named = [(step_pair(series.name, series.steps[i].step),
              step_argv(series, i, diff=d)) for i, d in series_runs(series)]
    try:
        cluster.run_tasks(cluster.jobs(named, series.shards), run=pair_main,
                          address=series.ray or None,
                          progress="--no-progress" not in series.pair_args)
    except RuntimeError as exc:
        print(f"error: {exc}; the parts done are kept: run the same command again "
              "to resume", file=sys.stderr)
        return 1
    return 0


OVERLAP_FILE = Path("trajectory") / "overlap.parquet"


def overlap_schema():
    """Columns of OUT/<name>/trajectory/overlap.parquet (raw.trajectory_overlap)."""
    import pyarrow as pa

    return pa.schema([
        ("trajectory", pa.string()), ("step", pa.int64()), ("prev_step", pa.int64()),
        ("tensor", pa.string()), ("layer", pa.int32()), ("module", pa.string()),
        ("side", pa.string()), ("k", pa.int32()), ("share", pa.float64()),
        ("random_share", pa.float64())])


def delta_vectors(run_dir: Path) -> dict[tuple[str, str], tuple[dict, object]]:
    """(tensor, side) -> (its key columns, the (k, dim) top singular vectors of dW,
    rows in order of k) from a pair run's directions/vectors files; {} without them."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted((run_dir / "directions" / "vectors").glob("*.parquet"))
    out = {}
    for f in files:
        t = pq.read_table(f)
        t = t.filter(pc.equal(t["role"], "delta")).sort_by([("tensor", "ascending"),
                                                            ("side", "ascending"),
                                                            ("k", "ascending")])
        rows = t.to_pylist()
        for key in dict.fromkeys((r["tensor"], r["side"]) for r in rows):
            mine = [r for r in rows if (r["tensor"], r["side"]) == key]
            vecs = np.asarray([r["vector"] for r in mine], dtype=np.float64)
            out[key] = ({"tensor": key[0], "layer": mine[0]["layer"],
                         "module": mine[0]["module"], "side": key[1]}, vecs)
    return out


def subspace_overlap(prev, cur) -> list[float]:
    """share(k) = ||P_k Q_k^T||_F^2 / k for k = 1 .. min(K_prev, K_cur): the mean
    squared cosine of the principal angles between the two top-k subspaces (rows of
    `prev`, `cur`: orthonormal vectors in order of singular value); 1 when the
    subspaces agree, k / dim expected of random ones."""
    import numpy as np

    k_max = min(len(prev), len(cur))
    if k_max == 0:
        return []
    cross = (prev[:k_max] @ cur[:k_max].T) ** 2
    sums = np.cumsum(np.cumsum(cross, axis=0), axis=1)  # sums[k-1, k-1]: top-left k x k
    return [float(sums[k - 1, k - 1] / k) for k in range(1, k_max + 1)]


def write_overlap(series: Series) -> int:
    """Consecutive steps' subspace overlaps to OUT/<name>/trajectory/overlap.parquet
    (an empty file when the steps have no vectors); the row count."""
    import pyarrow as pa

    rows, prev = [], None
    for i, step in enumerate(series.steps):
        cur = delta_vectors(series.steps_dir / step_pair(series.name, step.step))
        if i and prev:
            for key, (cols, vecs) in cur.items():
                if key not in prev:
                    continue
                dim = vecs.shape[1]
                for k, share in enumerate(subspace_overlap(prev[key][1], vecs), 1):
                    rows.append({"trajectory": series.name, "step": step.step,
                                 "prev_step": series.steps[i - 1].step, **cols,
                                 "k": k, "share": share,
                                 "random_share": k / dim if dim else None})
        prev = cur
    write_parquet(pa.Table.from_pylist(rows, schema=overlap_schema()),
                  series.out / OVERLAP_FILE)
    return len(rows)


def step_plans(series: Series) -> list | None:
    """Every step's pair plan (compute.plan.pair) from the headers (a hub id's by
    range requests); None, with the error printed, on an unusable checkpoint."""
    from compute.io.adapters import resolve_sft
    from compute.io.checkpoints import CheckpointError, hub_headers, resolve
    from compute.plan.pair import pair_plan

    try:
        base = (hub_headers(series.base, series.revision_base)
                or resolve(series.base, series.revision_base))
        return [pair_plan(base, hub_headers(s.model, s.revision)
                          or resolve_sft(s.model, base, s.revision))
                for s in series.steps]
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def step_costs(series: Series) -> list[float] | None:
    """Every step's spectra cost, k^2 (m + n) summed over its matrices
    (compute.plan.shards.tensor_costs); a difference costs its step's."""
    from compute.plan.shards import tensor_costs

    plans = step_plans(series)
    return None if plans is None else [sum(tensor_costs(p)) for p in plans]


def print_dry_run(series: Series) -> int:
    """The series' cost from the headers: every step's plan (compute.plan.shards),
    the differences' (the same tensors), the total; 2 on an unusable checkpoint."""
    from compute.plan.shards import dry_run

    plans = step_plans(series)
    if plans is None:
        return 2
    infos = [dry_run(plan, series.shards) for plan in plans]
    n = len(series.steps)
    print(f"dry run of trajectory {series.name}: {n} steps vs {series.base}, each a "
          f"pair run (spectra, vectors and behaviour as configured), and {n - 1} "
          "consecutive differences (spectra only), in "
          f"{series.shards} shard(s) each")
    total = 0.0
    for i, (s, info) in enumerate(zip(series.steps, infos, strict=True)):
        cost = info["total_cost"] * (2 if i else 1)
        total += cost
        tokens = f"{s.tokens_seen} tokens" if s.tokens_seen is not None else "tokens ?"
        print(f"  step {s.step:>8} ({tokens}): {s.label}: {info['n_matrices']} "
              f"matrices, cost {info['total_cost']:.3e}"
              + (f" + difference {info['total_cost']:.3e}" if i else ""))
    peak = max(info["peak_bytes"] for info in infos) / 1024 ** 3
    print(f"total spectra cost {total:.3e} (k^2 (m + n); {2 * n - 1} pair runs' "
          f"worth), peak device memory {peak:.2f} GiB")
    return 0


def load_series(series: Series) -> int:
    """raw.trajectory_steps and raw.trajectory_overlap from the series' folder
    (ingest.trajectory); the step pairs were loaded by their own runs."""
    from ingest.trajectory import load_or_explain

    return load_or_explain(series.out, series.db)


def run_trajectory(argv: list[str], pair_main: Callable[[list[str]], int]) -> int:
    """`python -m compute.run --trajectory ...`: the steps, the overlaps, the load.
    `pair_main`: compute.run's main, run for every step (passed in, as to
    compute.pairs.pairs_file)."""
    series = parse_trajectory_args(argv)
    if series.dry_run:
        return print_dry_run(series)
    manifest = open_series_manifest(series)
    save_series_manifest(series, manifest)
    if series.sharded:
        code = run_shard(series, pair_main)
        if not code:
            print(f"shard {series.shard[0]}/{series.shard[1]} of {series.name} is "
                  "done; when every shard is, run the same command without --shard "
                  "to finish the series (nothing is computed again)")
        return code
    if series.ray is not None and (code := run_on_ray(series, pair_main)):
        return code
    code = run_steps(series, manifest, pair_main)
    if code:
        return code
    n = write_overlap(series)
    manifest["finished_at"] = now()
    save_series_manifest(series, manifest)
    print(f"trajectory {series.name}: {len(series.steps)} steps, {n} subspace-overlap "
          f"rows; manifest {series.manifest_path}")
    if series.load:
        return load_series(series)
    print(f"load later: python -m ingest.trajectory {series.out}")
    return 0
