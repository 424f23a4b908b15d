"""Benchmark: how evenly `--shard I/N` splits the bench pair, and what `--ray` costs.

    python bench/shards.py                  # the 24-layer bench pair (bench/spectra.py's)
    python bench/shards.py --layers 4 --json data/bench/shards.json
    python bench/shards.py --pair DIR       # any pair folder with base/ and sft/

On the 0.5B-shaped pair of bench/spectra.py (cached under data/bench/), measured in
the same run, each command in its own process:

  single  python -m compute.run --vectors 0 --skip-behaviour --no-load: the plain run
  ray     the same with --ray --shards 2 (a local Ray cluster started by the command)
  shards  the same with --shard I/N, for I = 0 .. N-1 one after the other, N = 2, 4, 8

Balance, for N = 2, 4 and 8: the largest shard over the mean, of the estimated cost
(k^2 (m + n) of the units compute.plan.shards gives each shard: whole tensors, and pieces
of rows of a tensor larger than the mean share; `estimated_whole`: with whole
tensors only, as before pieces), of the shard runs' measured wall and CPU seconds,
and of each tensor's seconds in the single run's files summed per shard (a piece
counted as its share of its tensor's seconds). Ratio `ray_over_single`: the Ray
path's wall time over the plain run's (target <= 1.10 on a pair large enough that a
cluster's start is small beside the work).
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
    ap.add_argument("--pair", type=Path, help="a pair folder (base/, sft/) instead of "
                    "the generated bench pair")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)

    import duckdb

    from compute.io.checkpoints import resolve
    from compute.plan.pair import pair_plan
    from compute.plan.shards import split, tensor_costs, units

    pair = a.pair or build(a.data, a.layers)[0]
    base, sft = resolve(str(pair / "base")), resolve(str(pair / "sft"))
    plan = pair_plan(base, sft)
    costs = tensor_costs(plan)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        common = [sys.executable, "-m", "compute.run", "--base", str(pair / "base"),
                  "--sft", str(pair / "sft"), "--name", "bench", "--vectors", "0",
                  "--skip-behaviour", "--no-load", "--no-progress"]

        def measured(name: str, *extra: str) -> dict:
            res = run_measured([*common, "--out", f"{tmp}/{name}", *extra], cwd=ROOT)
            if res["rc"]:
                print(res["stdout_tail"], file=sys.stderr)
                raise SystemExit(f"{name} {' '.join(extra)}: exit {res['rc']}")
            return res

        results["single"] = measured("single")
        results["ray"] = measured("ray", "--ray", "--shards", "2")
        runs = {n: [measured(f"n{n}", "--shard", f"{i}/{n}") for i in range(n)]
                for n in (2, 4, 8)}
        files = sorted(Path(tmp, "single", "bench", "spectra").glob("[0-9]*.parquet"))
        seconds = dict(duckdb.sql(
            "select source_tensor, sum(seconds) from read_parquet(?) group by all",
            params=[[str(f) for f in files]]).fetchall())
        for n in (2, 4, 8):  # the shards completed the pair: its rows, once each
            got = duckdb.sql("select count(*), count(distinct tensor || role) from "
                             "read_parquet(?)", params=[str(Path(
                                 tmp, f"n{n}", "bench", "spectra", "[0-9]*.parquet"))]
                             ).fetchall()
            assert got == [(3 * plan.n_views,) * 2], (n, got)
    measured_s = [seconds[name] for name in plan.matrices]
    results["balance"] = {}
    for n in (2, 4, 8):
        unit, unit_costs = units(plan, n)
        parts = split(unit_costs, n)
        results["balance"][str(n)] = {
            "estimated": balance([sum(unit_costs[k] for k in p) for p in parts]),
            "estimated_whole": balance([sum(costs[i] for i in p)
                                        for p in split(costs, n)]),
            "measured_wall": balance([r["seconds"] for r in runs[n]]),
            "measured_cpu": balance([r["cpu_seconds"] for r in runs[n]]),
            "from_tensor_seconds": balance([sum(measured_s[unit[k][0]] / unit[k][2]
                                                for k in p) for p in parts]),
            "units": [len(p) for p in parts],
            "pieces": [sum(unit[k][2] > 1 for k in p) for p in parts],
            "shard_wall": [r["seconds"] for r in runs[n]],
            "shard_cpu": [r["cpu_seconds"] for r in runs[n]],
            "sum_wall_over_single": ratio(sum(r["seconds"] for r in runs[n]),
                                          results["single"]["seconds"]),
            "sum_cpu_over_single": ratio(sum(r["cpu_seconds"] for r in runs[n]),
                                         results["single"]["cpu_seconds"])}
    report("shards", results,
           {"ray_over_single": ratio(results["ray"]["seconds"],
                                     results["single"]["seconds"])},
           extra={"pair": str(pair), "layers": a.layers if a.pair is None else None},
           out=a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
