"""Every (pair, shard) of a compute.run as a Ray task; one load at the end.

    python -m compute.run --pair 72B --ray --shards 8             # a local Ray cluster
    python -m compute.run --pairs 0.5B,1.5B --ray ray://head:10001 --shards 4

Each task is `compute.run ... --shard I/N --no-load` in a Ray worker (`num_gpus=1`
when the run is for a GPU, one CPU otherwise), retried when it fails: a shard writes
one Parquet file per tensor under a temporary name and renames it, so a retried task
resumes where the failed one stopped and nothing is written twice. When every task is
done, this process (the one writer) loads each pair into the warehouse.
Needs the optional extra: pip install -e ".[cluster]".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from compute.pairs.pairs_file import task_argv

MAX_RETRIES = 2  # a failed task runs again up to this many times

def shard_task(argv: list[str], cwd: str, run: Callable[[list[str]], int]) -> str:
    """One shard (argv ends with --shard I/N) in a Ray worker; raises on failure so
    that Ray retries it. `run`: compute.run.cli.main (passed in, so that this module
    does not import the command line that imports it)."""
    os.chdir(cwd)  # relative paths mean what they meant to the driver
    code = run(argv)
    if code:
        raise RuntimeError(f"python -m compute.run {' '.join(argv)}: exit {code}")
    return argv[argv.index("--shard") + 1]


def jobs(pairs: Sequence[tuple[str, list[str]]], n_shards: int) -> list[list[str]]:
    """argv of every (pair, shard): `pairs` are (name, argv selecting that pair)."""
    return [[*argv, "--shard", f"{i}/{n_shards}", "--no-load", "--no-progress"]
            for _, argv in pairs for i in range(n_shards)]


def run_tasks(argvs: list[list[str]], *, run: Callable[[list[str]], int],
              address: str | None = None,
              gpus: bool | Sequence[bool] = False, progress: bool = True,
              task: Callable = shard_task) -> None:
    """Every argv as a Ray task, retried up to MAX_RETRIES times; one progress bar.
    Joins the running Ray session, or starts one (`address`: an existing cluster,
    None: a local one). `run`: what a task runs (compute.run.cli.main). `gpus`: whether the tasks (or each task) take a GPU."""
    try:
        import ray
    except ImportError:
        raise SystemExit('--ray needs Ray: pip install -e ".[cluster]"') from None
    from tqdm import tqdm

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=True,
                        num_cpus=1)(task)
    per_task = [gpus] * len(argvs) if isinstance(gpus, bool) else list(gpus)
    cwd = os.getcwd()
    pending = [remote.options(num_gpus=1 if g else 0).remote(argv, cwd, run)
               for argv, g in zip(argvs, per_task, strict=True)]
    with tqdm(total=len(pending), unit="task", desc="shards", disable=not progress,
              dynamic_ncols=True) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)  # re-raises a task that failed every retry
            bar.update(len(done))


def main(cfg, argv: list[str], entries: list | None, address: str | None,
         run: Callable[[list[str]], int]) -> int:
    """compute.run --ray: the pairs' shards as tasks, then their loads, in order.
    `entries`: the pairs of --pairs (compute.pairs.pairs_file.Entry), None: cfg's pair.
    `run`: the command line's main, each task's work."""
    base_argv = task_argv(argv)
    if entries:
        pairs = [(e.name, [*base_argv, *e.argv]) for e in entries]
        devices = [e.device or cfg.device for e in entries]
    else:
        pairs = [(cfg.pair, base_argv if "--base" in base_argv
                  else [*base_argv, "--pair", cfg.pair])]
        devices = [cfg.device]
    has_gpus = "auto" in devices and _cluster_has_gpus(address)
    gpus = [d == "cuda" or (d == "auto" and has_gpus)
            for d in devices for _ in range(cfg.shards)]
    root = cfg.remote or str(cfg.out)
    try:
        run_tasks(jobs(pairs, cfg.shards), run=run, address=address, gpus=gpus,
                  progress=cfg.progress)
    except Exception as exc:  # a task failed every retry: its message says which
        print(f"error: {exc}\nFinished parts are kept in {root}; run the same "
              "command again to resume.", file=sys.stderr)
        return 2
    if not cfg.load:
        return 0
    from ingest.compute_load import load_or_explain
    from ingest.results import child

    for name, _ in pairs:
        where = child(cfg.remote, name) if cfg.remote else Path(cfg.out) / name
        code = load_or_explain(where, cfg.db, done=f"{name}: loaded into the warehouse")
        if code:
            return code
    return 0


def _cluster_has_gpus(address: str | None) -> bool:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return ray.cluster_resources().get("GPU", 0) > 0
