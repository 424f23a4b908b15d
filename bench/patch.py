"""Benchmark: weight patching per group against a plain behaviour run of the same posts.

    python bench/patch.py                       # the demo pair's shape, CPU
    python bench/patch.py --quick               # a smoke run (tiny pair, 8 posts)
    python bench/patch.py --device cuda --shape 0.5B --posts 64 --batch-size 16

Two processes on the same planted pair and posts (bench.common.run_measured: wall and
CPU seconds, peak RSS):

  behaviour  python -m compute.run --skip-spectra: the pair's behaviour run, the base
             and the SFT scored together (its own scoring seconds, from run.json)
  patch      python -m compute.patch --by layer on that run: per group an add and a
             revert model, each merged in memory and scored next to the SFT
             (compute.behaviour.merge_score), the seconds of each model and of its
             merge from raw.patch_models' files

Ratios, measured in the same run: per model (one merged model scored next to the SFT,
what the behaviour run does with the base) and per group (add + revert) over the
behaviour run's scoring seconds; the merge's share of a model's seconds. Goal: <= 1.2
per group on a CPU, the merge never dominating. `--device cuda` runs the same
commands on a GPU (the behaviour run's device; bf16 there).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.behaviour import prompts, scoring_setup  # noqa: E402 (after sys.path)
from bench.common import ratio, report, run_measured  # noqa: E402

GROUP_TARGET = 1.2


def measured(cmd: list[str]) -> dict:
    res = run_measured([sys.executable, "-m", *cmd], cwd=ROOT)
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed (exit {res['rc']}):\n"
                         f"{res['stdout_tail']}")
    res.pop("stdout_tail")
    return res


def per_model(folder: Path) -> list[dict]:
    """The patch run's models (raw.patch_models rows) from its files."""
    import pandas as pd

    files = sorted((folder / "models").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]).to_dict("records")


def summarize(models: list[dict], score_seconds: float) -> tuple[dict, dict]:
    """(results, ratios) of the patch run against the behaviour run's scoring."""
    patched = [m for m in models if m["mode"] != "base"]
    groups: dict[str, float] = {}
    for m in patched:
        groups[m["patch_group"]] = groups.get(m["patch_group"], 0.0) + m["seconds"]
    model_s = statistics.median(m["seconds"] for m in patched)
    group_s = statistics.median(groups.values())
    merge = statistics.median(m["merge_seconds"] / m["seconds"] for m in patched)
    results = {"groups": len(groups), "models": len(models),
               "median_model_seconds": round(model_s, 3),
               "median_group_seconds": round(group_s, 3),
               "median_merge_seconds": round(statistics.median(
                   m["merge_seconds"] for m in patched), 3)}
    per_group = ratio(group_s, score_seconds)
    ratios = {"model_over_behaviour": ratio(model_s, score_seconds),
              "group_over_behaviour": per_group, "group_target": GROUP_TARGET,
              "meets_group_target": per_group is not None
              and per_group <= GROUP_TARGET,
              "merge_share_of_model": round(merge, 3)}
    return results, ratios


def main(argv: list[str] | None = None) -> int:
    """Run both, print the JSON."""
    a, base, sft, build_seconds = scoring_setup(argv, __doc__.splitlines()[0],
                                                posts=48, window=512)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prompts(a.posts).to_parquet(tmp / "prompts.parquet")
        pair = ["--base", str(base), "--sft", str(sft), "--name", "bench",
                "--prompts", str(tmp / "prompts.parquet"), "--out", str(tmp / "out"),
                "--no-load", "--no-progress"]
        behaviour = measured(["compute.run", *pair, "--skip-spectra", "--device",
                              a.device, "--window", str(a.window), "--batch-size",
                              str(a.batch_size)])
        run = json.loads((tmp / "out" / "bench" / "run.json").read_text())
        behaviour["score_seconds"] = run["kinds"]["behaviour"]["options"][
            "score_seconds"]
        patch = measured(["compute.patch", *pair, "--by", "layer"])
        models = per_model(tmp / "out" / "bench" / "patch" / "layer")
    results, ratios = summarize(models, behaviour["score_seconds"])
    report("patch", {"behaviour": behaviour, "patch": patch | results}, ratios,
           out=a.json, extra={"pair": {"shape": a.shape, "build_seconds":
                                       build_seconds},
                              "options": {"device": a.device, "posts": a.posts,
                                          "batch_size": a.batch_size,
                                          "window": a.window}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
