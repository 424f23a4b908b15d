"""Benchmark: what WeightWatcher's ESD measures cost when fitted from stored spectra.

    python bench/esd.py                  # 4 layers of Qwen2.5-0.5B shapes (28 matrices)
    python bench/esd.py --layers 24 --json data/bench/esd.json
    python bench/esd.py --quick          # 1 layer, a smoke run
    python bench/esd.py --skip ww        # without WeightWatcher

Matrices of the real Qwen2.5-0.5B shapes (q/o 896 x 896, k/v 128 x 896, gate/up
4864 x 896, down 896 x 4864), heavy-tailed random weights (Student t, 3 degrees of
freedom, plus a few strong directions), seeded. Measured in the same run, each in
its own process (peak RSS from os.wait4), the timed part reported by the worker:

  spectra   NumPy float64 singular values of every matrix: what compute.run stores
            (here a plain SVD: the cost the ESD measures are set against)
  sftscope  compute.linalg.esd.esd_measures on those singular values (what the dbt model
            int_esd_fits does per spectrum): power-law fit, norms, MP fit
  ww        WeightWatcher 0.7.7 analyze(mp_fit=True) of the same matrices as an
            nn.Sequential of fp32 Linear layers (its SVD included: it has no other
            way in); the bench extra

Prints {"bench": "esd", "machine", "results", "ratios", "agreement"} as JSON:
the ratios ww / sftscope, sftscope / spectra (what the fits add to the spectra) and
ww / (spectra + sftscope) (like for like: WeightWatcher does its own SVD), and the
largest |alpha difference| between the two tools on these matrices.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ratio, report, run_measured  # noqa: E402

SHAPES = {"q_proj": (896, 896), "k_proj": (128, 896), "v_proj": (128, 896),
          "o_proj": (896, 896), "gate_proj": (4864, 896), "up_proj": (4864, 896),
          "down_proj": (896, 4864)}


def matrices(layers: int, seed: int = 0) -> list[np.ndarray]:
    """The benchmark's matrices, float32, layer by layer in SHAPES order."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        for m, n in SHAPES.values():
            w = rng.standard_t(3, (m, n)).astype(np.float32) * 0.02
            u, v = rng.standard_normal((m, 4)), rng.standard_normal((4, n))
            out.append(w + (u @ v).astype(np.float32) * 0.01)
    return out


def worker(kind: str, layers: int) -> dict:
    """Time one kind in this process; returns its seconds and its alphas."""
    mats = matrices(layers)
    c0, t0 = time.process_time(), time.perf_counter()
    if kind == "ww":
        import logging
        import warnings

        import torch
        import weightwatcher as ww

        warnings.simplefilter("ignore")
        logging.getLogger("weightwatcher").setLevel(logging.ERROR)
        seq = torch.nn.Sequential()
        for w in mats:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data = torch.from_numpy(w)
            seq.append(lin)
        c0, t0 = time.process_time(), time.perf_counter()
        alphas = ww.WeightWatcher(model=seq).analyze(mp_fit=True)["alpha"].tolist()
    else:
        values = [np.linalg.svd(w.astype(np.float64), compute_uv=False) for w in mats]
        alphas = []
        if kind == "sftscope":
            from compute.linalg.esd import esd_measures

            c0, t0 = time.process_time(), time.perf_counter()
            alphas = [esd_measures(s, *w.shape)["alpha"]
                      for s, w in zip(values, mats, strict=True)]
    return {"seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(time.process_time() - c0, 3), "alphas": alphas}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="1 layer")
    ap.add_argument("--skip", nargs="*", default=[], choices=["ww"])
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    layers = 1 if args.quick else args.layers
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, layers)))
        return
    results, alphas = {}, {}
    for kind in ("spectra", "sftscope", *([] if "ww" in args.skip else ["ww"])):
        res = run_measured([sys.executable, __file__, "--worker", kind,
                            "--layers", str(layers)], cwd=ROOT)
        line = [x for x in res.pop("stdout_tail").splitlines()
                if x.startswith("RESULT ")]
        if res["rc"] != 0 or not line:
            results[kind] = {"failed": True, **res}
            continue
        timed = json.loads(line[-1][len("RESULT "):])
        alphas[kind] = timed.pop("alphas")
        results[kind] = {"timed": timed, "process": res}
    secs = {k: r["timed"]["seconds"] for k, r in results.items() if "timed" in r}
    agreement = None
    if "ww" in alphas and "sftscope" in alphas:
        agreement = {"max_abs_alpha_difference": max(
            abs(a - b) for a, b in zip(alphas["ww"], alphas["sftscope"], strict=True))}
    report("esd", results, {
        "ww / sftscope": ratio(secs.get("ww"), secs.get("sftscope")),
        "sftscope / spectra": ratio(secs.get("sftscope"), secs.get("spectra")),
        # like for like: WeightWatcher computes its own SVD
        "ww / (spectra + sftscope)": ratio(
            secs.get("ww"), (secs.get("spectra") or 0) + (secs.get("sftscope") or 0)),
    }, extra={"matrices": layers * len(SHAPES), "agreement": agreement}, out=args.json)


if __name__ == "__main__":
    main()
