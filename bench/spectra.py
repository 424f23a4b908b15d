"""Benchmark: all three spectra (base, SFT, dW) of every matrix of a 0.5B-shaped pair.

    python bench/spectra.py                 # 24 layers (Qwen2.5-0.5B shapes), ~15 min
    python bench/spectra.py --quick         # 2 layers, a smoke run
    python bench/spectra.py --layers 8 --skip ww --json data/bench/spectra.json
    python bench/spectra.py --skip ww svd --repeat 3   # naive vs sftscope, 3 rounds

The pair has the real Qwen2.5-0.5B shapes (hidden 896, intermediate 4864, 14 heads /
2 kv heads so k/v are 128 x 896, vocab 151936, tied embeddings), random bf16 weights and
a planted low-rank dW (compute.fixtures.planted.build_pair); it is cached under data/bench/ so
re-runs skip generation. Measured in the same run, each in its own process (clean peak
RSS from os.wait4):

  naive     from_pretrained both models, torch.linalg.svdvals in fp32 of each matrix
            and of each difference (what the seed did)
  ww        WeightWatcher analyze() of the base, of the SFT model and of the delta
            (base_model=); it skips the 151936 x 896 embedding
  svd       python -m compute.run --method svd (fp32 LAPACK reference)
  sftscope  python -m compute.run (default method), on the pair
  sftscope_noembed  the same on a copy of the pair without the embedding: like for
            like against WeightWatcher
  sftscope_vectors  python -m compute.run --vectors 32 (the GPU default): the spectra
            and the singular vectors (compute.linalg.directions); the others run with
            --vectors 0, spectra only, what the baselines compute

Prints {"bench": "spectra", "machine", "results", "ratios", "accuracy"} as JSON. Each
result has wall and CPU seconds, peak RSS, and `others_cpu_seconds`: the CPU time the
machine's other processes took during the run (/proc/stat), a gauge of how shared the
cores were. With --repeat N every run is measured N times round robin and the run of
median wall time is reported (all times listed beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import ratio, report, run_measured  # noqa: E402 (after sys.path)
from compute.linalg.directions import DEFAULT_VECTORS  # noqa: E402

RUNS = ("naive", "ww", "svd", "sftscope", "sftscope_noembed", "sftscope_vectors")
EMBED = "model.embed_tokens.weight"


def spec_for(layers: int):
    from compute.fixtures.planted import PairSpec

    return PairSpec(hidden=896, intermediate=4864, layers=layers, heads=14, kv_heads=2,
                    vocab=151936, tie_embeddings=True, max_positions=32768)


def build(data: Path, layers: int) -> tuple[Path, Path]:
    """The pair (cached) and a copy of it without the embedding (cached)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from compute.fixtures.planted import build_pair

    pair = data / f"qwen2.5-0.5b-shaped-L{layers}"
    t0 = time.perf_counter()
    build_pair(pair, spec_for(layers))
    noembed = data / f"qwen2.5-0.5b-shaped-L{layers}-noembed"
    stamp = noembed / "source.json"
    key = (pair / "planted.json").stat().st_mtime_ns
    if not (stamp.exists() and json.loads(stamp.read_text()).get("key") == key):
        shutil.rmtree(noembed, ignore_errors=True)
        for role in ("base", "sft"):
            (noembed / role).mkdir(parents=True)
            with safe_open(pair / role / "model.safetensors", framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys() if k != EMBED}
            save_file(tensors, str(noembed / role / "model.safetensors"),
                      metadata={"format": "pt"})
            del tensors
            shutil.copy(pair / role / "config.json", noembed / role / "config.json")
        stamp.write_text(json.dumps({"key": key}))
    print(f"pair ready in {time.perf_counter() - t0:.1f} s: {pair}", file=sys.stderr)
    return pair, noembed


# ---- baselines, each run in its own process (python bench/spectra.py --worker X) ----

def load_models(base: Path, sft: Path):
    import torch
    from transformers import AutoModelForCausalLM

    mb = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    ms = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.bfloat16)
    return mb, ms


def worker_naive(base: Path, sft: Path) -> dict:
    import torch

    t0 = time.perf_counter()
    mb, ms = load_models(base, sft)
    t_load = time.perf_counter() - t0
    n, t_embed = 0, 0.0
    with torch.inference_mode():
        params_s = dict(ms.named_parameters())
        for name, pb in mb.named_parameters():
            if pb.ndim != 2:
                continue
            t1 = time.perf_counter()
            b, s = pb.float(), params_s[name].float()
            for mat in (b, s, s - b):
                torch.linalg.svdvals(mat)
                n += 1
            if "embed_tokens" in name:
                t_embed += time.perf_counter() - t1
    return {"spectra": n, "load_seconds": round(t_load, 2),
            "embedding_seconds": round(t_embed, 2)}


def worker_ww(base: Path, sft: Path) -> dict:
    import logging
    import warnings

    import weightwatcher as ww

    warnings.filterwarnings("ignore")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    mb, ms = load_models(base, sft)
    t_load = time.perf_counter() - t0
    counts = {}
    for label, kw in (("base", {"model": mb}), ("sft", {"model": ms}),
                      ("delta", {"model": ms, "base_model": mb})):
        df = ww.WeightWatcher(**kw).analyze()
        counts[label] = len(df)
    return {"spectra": sum(counts.values()), "per_analysis": counts,
            "load_seconds": round(t_load, 2)}


def worker_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["naive", "ww"])
    ap.add_argument("--base", type=Path)
    ap.add_argument("--sft", type=Path)
    ap.add_argument("--result", type=Path)
    a = ap.parse_args(argv)
    fn = {"naive": worker_naive, "ww": worker_ww}[a.worker]
    a.result.write_text(json.dumps(fn(a.base, a.sft)))


# ---- sftscope through its entry point ----

def sftscope_cmd(pair: Path, out: Path, method: str | None,
                 vectors: int | None = 0) -> list[str]:
    """compute.run's command; `vectors` None: its default --vectors."""
    cmd = [sys.executable, "-m", "compute.run", "--base", str(pair / "base"),
           "--sft", str(pair / "sft"), "--name", "bench", "--no-load",
           "--skip-behaviour", "--out", str(out), "--force", "--no-progress"]
    if vectors is not None:
        cmd += ["--vectors", str(vectors)]
    return cmd + (["--method", method] if method else [])


def read_spectra(out: Path) -> dict:
    import pyarrow.parquet as pq

    spectra = {}
    for f in sorted((out / "bench" / "spectra").glob("[0-9]*.parquet")):
        for r in pq.read_table(f, columns=["tensor", "role", "singular_values"]
                               ).to_pylist():
            spectra[(r["tensor"], r["role"])] = r["singular_values"]
    return spectra


def accuracy(test: dict, ref: dict) -> dict:
    """max over spectra of max_i |s_i - ref_i| / ref_1 (ref_1: that matrix's s_1)."""
    import numpy as np

    worst, where, by_role = 0.0, None, {}
    for key, r in ref.items():
        a, b = np.asarray(test[key]), np.asarray(r)
        assert a.shape == b.shape, (key, a.shape, b.shape)
        err = float(np.max(np.abs(a - b)) / b[0]) if b.size and b[0] > 0 else 0.0
        by_role[key[1]] = max(by_role.get(key[1], 0.0), err)
        if err > worst:
            worst, where = err, key
    return {"max_rel_err": worst, "worst": list(where) if where else None,
            "max_rel_err_by_role": by_role, "spectra_compared": len(ref)}


def accuracy_vs_numpy(test: dict, pair: Path, layer: int = 0) -> dict:
    """Against NumPy float64 SVD on one layer's matrices (and the embedding's dW)."""
    import numpy as np
    import torch
    from safetensors import safe_open

    names = [n for (n, role) in test if role == "base"
             and (f"layers.{layer}." in n)]
    ref = {}
    with safe_open(pair / "base" / "model.safetensors", framework="pt") as fb, \
            safe_open(pair / "sft" / "model.safetensors", framework="pt") as fs:
        for name in names:
            b = fb.get_tensor(name).to(torch.float64).numpy()
            s = fs.get_tensor(name).to(torch.float64).numpy()
            for role, mat in (("base", b), ("sft", s), ("delta", s - b)):
                ref[(name, role)] = np.linalg.svd(mat, compute_uv=False)
    return accuracy({k: test[k] for k in ref}, ref) | {"layer": layer}


def vm_busy_seconds() -> float | None:
    """CPU seconds this machine has spent busy since boot, all processes (/proc/stat);
    around a run, minus the run's own CPU seconds: what others ran meanwhile."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measure(run: str, cmd: list[str], tmp: Path, res_file: Path | None) -> dict:
    """One measured run of `run` (its own process), with what it produced."""
    busy0 = vm_busy_seconds()
    r = run_measured(cmd, cwd=ROOT)
    busy1 = vm_busy_seconds()
    if r["rc"] != 0:
        print(r["stdout_tail"], file=sys.stderr)
        raise SystemExit(f"{run} failed with exit code {r['rc']}")
    tail = r.pop("stdout_tail")
    if busy0 is not None and busy1 is not None and r["cpu_seconds"] is not None:
        r["others_cpu_seconds"] = round(max(0.0, busy1 - busy0 - r["cpu_seconds"]), 1)
    if res_file is not None:
        r |= json.loads(res_file.read_text())
    else:
        r["spectra"] = 3 * len(list((tmp / run / "bench" / "spectra")
                                    .glob("[0-9]*.parquet")))
        r["log"] = tail.strip().splitlines()[-1:]
    r["matrices_per_second"] = round(r["spectra"] / r["seconds"], 2)
    if run == "naive":  # its time without the embedding, for like for like
        r["seconds_without_embedding"] = round(
            r["seconds"] - r["embedding_seconds"], 2)
    return r


def median_run(rs: list[dict]) -> dict:
    """The run of median wall time, with every run's wall and CPU seconds."""
    best = dict(sorted(rs, key=lambda r: r["seconds"])[(len(rs) - 1) // 2])
    if len(rs) > 1:
        best["seconds_all"] = [r["seconds"] for r in rs]
        best["cpu_seconds_all"] = [r["cpu_seconds"] for r in rs]
        best["others_cpu_seconds_all"] = [r.get("others_cpu_seconds") for r in rs]
    return best


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        worker_main(argv)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="2 layers (a smoke run)")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "bench")
    ap.add_argument("--skip", nargs="*", default=[], choices=RUNS,
                    help="runs to leave out")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="measure every run N times, round robin (the runs of one "
                    "round are back to back); report the run of median wall time")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    layers = 2 if a.quick else a.layers
    pair, noembed = build(a.data, layers)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-spectra-") as tmp:
        tmp = Path(tmp)
        for rep in range(max(1, a.repeat)):
            for run in RUNS:
                if run in a.skip:
                    continue
                res_file = None
                if run in ("naive", "ww"):
                    res_file = tmp / f"{run}.json"
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker",
                           run, "--base", str(pair / "base"), "--sft",
                           str(pair / "sft"), "--result", str(res_file)]
                else:
                    method = "svd" if run == "svd" else None
                    cmd = sftscope_cmd(noembed if run == "sftscope_noembed" else pair,
                                       tmp / run, method,
                                       DEFAULT_VECTORS if run == "sftscope_vectors"
                                       else 0)
                print(f"running {run} ({rep + 1}/{a.repeat}) ...", file=sys.stderr,
                      flush=True)
                r = measure(run, cmd, tmp, res_file)
                runs.setdefault(run, []).append(r)
                print(f"  {run}: {r['seconds']} s, {r['cpu_seconds']} CPU s, "
                      f"{r['peak_rss_mb']} MB, {r['spectra']} spectra; others' CPU "
                      f"meanwhile {r.get('others_cpu_seconds')} s", file=sys.stderr,
                      flush=True)
        results = {run: median_run(rs) for run, rs in runs.items()}
        acc = {}
        if "sftscope" in results:
            test = read_spectra(tmp / "sftscope")
            if "svd" in results:
                acc["vs_svd_fp32"] = accuracy(test, read_spectra(tmp / "svd"))
            acc["vs_numpy_fp64"] = accuracy_vs_numpy(test, pair)
            acc["bound"] = 1e-7
    sec = {k: v["seconds"] for k, v in results.items()}
    ours, ours_ne = sec.get("sftscope"), sec.get("sftscope_noembed")
    ratios = {
        "naive_over_sftscope": ratio(sec.get("naive"), ours),
        "ww_over_sftscope_noembed": ratio(sec.get("ww"), ours_ne),
        "naive_noembed_over_sftscope_noembed": ratio(
            results.get("naive", {}).get("seconds_without_embedding"), ours_ne),
        "svd_over_sftscope": ratio(sec.get("svd"), ours),
        # the cost of the default --vectors K (on) against spectra only (off)
        "vectors_on_over_off": ratio(sec.get("sftscope_vectors"), ours),
        "targets": {"naive_over_sftscope": 4.0, "ww_over_sftscope_noembed": 3.0,
                    "sftscope_peak_rss_mb_max": 1536},
    }
    if a.repeat > 1:  # each round's own ratio: its runs were back to back
        rounds = [{k: rs[i]["seconds"] for k, rs in runs.items()}
                  for i in range(a.repeat)]
        ratios["naive_over_sftscope_by_round"] = [
            ratio(r.get("naive"), r.get("sftscope")) for r in rounds]
        ratios["vectors_on_over_off_by_round"] = [
            ratio(r.get("sftscope_vectors"), r.get("sftscope")) for r in rounds]
    report("spectra", results, ratios, out=a.json,
           extra={"pair": {"layers": layers, "path": str(pair.relative_to(ROOT))
                           if pair.is_relative_to(ROOT) else str(pair)},
                  "repeat": a.repeat, "accuracy": acc})
    return 0


if __name__ == "__main__":
    sys.exit(main())
