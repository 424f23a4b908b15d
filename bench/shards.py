"""Benchmark: how evenly `--shard I/N` splits the bench pair, and what `--ray` costs.

    python bench/shards.py                  # the 24-layer bench pair (bench/spectra.py's)
    python bench/shards.py --layers 4 --json data/bench/shards.json

On the 0.5B-shaped pair of bench/spectra.py (cached under data/bench/), measured in
the same run, each command in its own process:

  single  python -m compute.run --vectors 0 --skip-behaviour --no-load: the plain run
  ray     the same with --ray --shards 2 (a local Ray cluster started by the command)

Balance, for N = 2, 4 and 8: the largest shard over the mean, of the estimated cost
(k^2 (m + n), compute.shards) and of the measured time (each tensor's seconds, from
the single run's files, summed over the tensors the split gives each shard).
Ratio `ray_over_single`: the Ray path's wall time over the plain run's (target <=
1.10 on a pair large enough that a cluster's start is small beside the work).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import ratio, report, run_measured  # noqa: E402 (after sys.path)
from bench.spectra import build  # noqa: E402


def balance(loads: list[float]) -> float:
    return round(max(loads) / (sum(loads) / len(loads)), 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "bench")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)

    import duckdb

    from compute.checkpoints import pair_plan, resolve
    from compute.shards import split, tensor_costs

    pair, _ = build(a.data, a.layers)
    base, sft = resolve(str(pair / "base")), resolve(str(pair / "sft"))
    plan = pair_plan(base, sft)
    costs = tensor_costs(plan)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        common = [sys.executable, "-m", "compute.run", "--base", str(pair / "base"),
                  "--sft", str(pair / "sft"), "--name", "bench", "--vectors", "0",
                  "--skip-behaviour", "--no-load", "--no-progress"]
        for name, extra in (("single", []), ("ray", ["--ray", "--shards", "2"])):
            res = run_measured([*common, "--out", f"{tmp}/{name}", *extra], cwd=ROOT)
            if res["rc"]:
                print(res["stdout_tail"], file=sys.stderr)
                raise SystemExit(f"{name}: exit {res['rc']}")
            results[name] = res
        files = sorted(Path(tmp, "single", "bench", "spectra").glob("[0-9]*.parquet"))
        seconds = dict(duckdb.sql(
            "select source_tensor, sum(seconds) from read_parquet(?) group by all",
            params=[[str(f) for f in files]]).fetchall())
    measured = [seconds[name] for name in plan.matrices]
    results["balance"] = {
        str(n): {"estimated": balance([sum(costs[i] for i in p) for p in parts]),
                 "measured": balance([sum(measured[i] for i in p) for p in parts]),
                 "tensors": [len(p) for p in parts]}
        for n in (2, 4, 8) for parts in [split(costs, n)]}
    report("shards", results,
           {"ray_over_single": ratio(results["ray"]["seconds"],
                                     results["single"]["seconds"])},
           extra={"pair": str(pair), "layers": a.layers}, out=a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
