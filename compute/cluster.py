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

MAX_RETRIES = 2  # a failed task runs again up to this many times
# options the driver handles: name -> takes a value (None: an optional one)
DRIVER_OPTIONS = {"--ray": None, "--pairs": True, "--shards": True, "--pair": True,
                  "--shard": True, "--no-load": False, "--no-progress": False}


def shard_task(argv: list[str], cwd: str) -> str:
    """One shard (argv ends with --shard I/N) in a Ray worker; raises on failure so
    that Ray retries it."""
    from compute.run import main

    os.chdir(cwd)  # relative paths mean what they meant to the driver
    code = main(argv)
    if code:
        raise RuntimeError(f"python -m compute.run {' '.join(argv)}: exit {code}")
    return argv[argv.index("--shard") + 1]


def task_argv(argv: Sequence[str]) -> list[str]:
    """`argv` without the options the driver handles (DRIVER_OPTIONS)."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        name = arg.split("=", 1)[0]
        if name not in DRIVER_OPTIONS:
            out.append(arg)
        elif "=" not in arg and (DRIVER_OPTIONS[name] or (
                DRIVER_OPTIONS[name] is None and rest
                and not rest[0].startswith("-"))):
            rest.pop(0)  # its value
    return out


def jobs(pairs: Sequence[tuple[str, list[str]]], n_shards: int) -> list[list[str]]:
    """argv of every (pair, shard): `pairs` are (name, argv selecting that pair)."""
    return [[*argv, "--shard", f"{i}/{n_shards}", "--no-load", "--no-progress"]
            for _, argv in pairs for i in range(n_shards)]


def run_tasks(argvs: list[list[str]], *, address: str | None = None, gpus: bool = False,
              progress: bool = True, task: Callable = shard_task) -> None:
    """Every argv as a Ray task, retried up to MAX_RETRIES times; one progress bar.
    Joins the running Ray session, or starts one (`address`: an existing cluster,
    None: a local one)."""
    try:
        import ray
    except ImportError:
        raise SystemExit('--ray needs Ray: pip install -e ".[cluster]"') from None
    from tqdm import tqdm

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=True,
                        num_gpus=1 if gpus else 0, num_cpus=1)(task)
    cwd = os.getcwd()
    pending = [remote.remote(argv, cwd) for argv in argvs]
    with tqdm(total=len(pending), unit="task", desc="shards", disable=not progress,
              dynamic_ncols=True) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)  # re-raises a task that failed every retry
            bar.update(len(done))


def main(cfg, argv: list[str], pair_names: list[str] | None, address: str | None,
         ) -> int:
    """compute.run --ray: the pairs' shards as tasks, then their loads, in order."""
    names = pair_names or [cfg.pair]
    base_argv = task_argv(argv)
    pairs = [(n, [*base_argv, "--pair", n] if pair_names or "--base" not in base_argv
              else base_argv) for n in names]
    gpus = cfg.device == "cuda" or (cfg.device == "auto"
                                    and _cluster_has_gpus(address))
    try:
        run_tasks(jobs(pairs, cfg.shards), address=address, gpus=gpus,
                  progress=cfg.progress)
    except Exception as exc:  # a task failed every retry: its message says which
        print(f"error: {exc}\nFinished parts are kept in {cfg.out}; run the same "
              "command again to resume.", file=sys.stderr)
        return 2
    if not cfg.load:
        return 0
    from ingest.compute_load import load_or_explain

    for name in names:
        code = load_or_explain(Path(cfg.out) / name, cfg.db,
                               done="loaded into the warehouse")
        if code:
            return code
    return 0


def _cluster_has_gpus(address: str | None) -> bool:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return ray.cluster_resources().get("GPU", 0) > 0
