"""Benchmark: LoRA recovery's cost per rank against a behaviour pass of the same posts.

    python bench/lora_recovery.py                      # the demo pair, make demo's ranks
    python bench/lora_recovery.py --quick              # 8 short posts, ranks 1 and 4
    python bench/lora_recovery.py --prompts data/bench/demo-prompts.parquet --json out.json

Two processes on the same posts, one after the other, in the same run
(bench.common.run_measured: wall and CPU seconds, peak RSS):

  behaviour  python -m compute.run --skip-spectra: the pair's behaviour pass, both
             models on every post (log-probs, token shift, drift), the run recovery
             reads its setting from
  recovery   python -m compute.lora_recovery --ranks R (default make demo's 1,4,16,64):
             r = 0 and each r, each with the base's and the SFT's 1-D tensors; its
             timings.json gives every step's wall and CPU seconds and the set-up's
             (loading, tokenizing, the SVDs)

Per rank: the wall and CPU seconds of its steps (both 1-D settings) and their ratio to
the whole behaviour process, whose CPU seconds are the steadier figure on shared
cores. A recovery that wrote no timings.json (before it did) is read from its
ranks.parquet (wall seconds per step only). The pair is the shipped demo pair
(models/demo, windows of its 512-token context); the posts are --prompts (a Parquet
file of prompts, e.g. the demo warehouse's marts.prompts) or --posts of
bench/behaviour.py's corpus posts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import ratio, report, run_measured  # noqa: E402 (after sys.path)

DEMO = ROOT / "models" / "demo"
DEMO_RANKS = "1,4,16,64"  # the Makefile's DEMO_LORA_RANKS


def measured(cmd: list[str], what: str) -> dict:
    """run_measured of a `python -m` command; exits naming `what` when it fails."""
    res = run_measured([sys.executable, "-m", *cmd], cwd=ROOT)
    if res["rc"] != 0:
        raise SystemExit(f"{what} failed (exit {res['rc']}):\n{res['stdout_tail']}")
    res.pop("stdout_tail")
    return res


def recovery_steps(run_dir: Path) -> tuple[dict, list[dict]]:
    """(the set-up's timings, each step's) from the recovery folder's timings.json,
    or from ranks.parquet (wall seconds only) where there is none."""
    timings = run_dir / "timings.json"
    if timings.exists():
        doc = json.loads(timings.read_text())
        return doc["setup"], doc["steps"]
    import pandas as pd

    ranks = pd.read_parquet(run_dir / "ranks.parquet")
    return {}, [{"rank": int(r.rank), "is_full": bool(r.is_full),
                 "vectors": r.vectors, "seconds": float(r.seconds),
                 "cpu_seconds": None} for r in ranks.itertuples()]


def per_rank(steps: list[dict]) -> dict[str, dict]:
    """rank -> wall and CPU seconds of its steps (both 1-D settings)."""
    out: dict[str, dict] = {}
    for s in steps:
        key = "full" if s["is_full"] else str(s["rank"])
        row = out.setdefault(key, {"steps": 0, "seconds": 0.0, "cpu_seconds": 0.0})
        row["steps"] += 1
        row["seconds"] = round(row["seconds"] + s["seconds"], 3)
        row["cpu_seconds"] = None if s["cpu_seconds"] is None or \
            row["cpu_seconds"] is None else round(row["cpu_seconds"]
                                                  + s["cpu_seconds"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure both processes; print (and with --json write) the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=DEMO / "base")
    ap.add_argument("--sft", type=Path, default=DEMO / "sft")
    ap.add_argument("--ranks", default=DEMO_RANKS)
    ap.add_argument("--prompts", type=Path, help="a Parquet file of prompts (default "
                    "--posts posts of bench/behaviour.py's corpus)")
    ap.add_argument("--posts", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="8 posts, ranks 1,4")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    if a.quick:
        a.posts, a.ranks = 8, "1,4"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prompts = a.prompts
        if prompts is None:
            from bench.behaviour import prompts as corpus_posts

            prompts = tmp / "prompts.parquet"
            corpus_posts(a.posts).to_parquet(prompts)
        pair = ["--base", str(a.base), "--sft", str(a.sft), "--name", "bench",
                "--prompts", str(prompts), "--out", str(tmp / "runs"), "--no-load",
                "--no-progress"]
        behaviour = measured(["compute.run", *pair, "--skip-spectra", "--device",
                              "cpu"], "the behaviour pass")
        run = json.loads((tmp / "runs" / "bench" / "run.json").read_text())
        opts = run["kinds"]["behaviour"]["options"]
        behaviour |= {k: opts.get(k) for k in ("score_seconds", "n_posts",
                                               "n_tokens_scored", "window")}
        recovery = measured(["compute.lora_recovery", *pair, "--ranks", a.ranks],
                            "the recovery")
        setup, steps = recovery_steps(tmp / "runs" / "bench" / "lora_recovery" / "all")
    ranks = per_rank(steps)
    ratios = {f"rank_{r}_over_behaviour": {
        "cpu": ratio(v["cpu_seconds"], behaviour["cpu_seconds"]),
        "wall": ratio(v["seconds"], behaviour["seconds"])} for r, v in ranks.items()}
    ratios["recovery_over_behaviour"] = {
        "cpu": ratio(recovery["cpu_seconds"], behaviour["cpu_seconds"]),
        "wall": ratio(recovery["seconds"], behaviour["seconds"])}
    report("lora_recovery", {"behaviour": behaviour, "recovery": recovery | {
        "setup": setup, "steps": steps}, "per_rank": ranks}, ratios, out=a.json,
        extra={"pair": {"base": str(a.base), "sft": str(a.sft), "ranks": a.ranks,
                        "prompts": str(a.prompts) if a.prompts else
                        f"{a.posts} corpus posts"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
