"""Benchmark: all three spectra of a 7B-shaped pair on a GPU, and where the time goes.

    python bench/spectra_gpu.py                    # Qwen2.5-7B shapes, 28 layers, cuda
    python bench/spectra_gpu.py --layers 4 --json data/bench/spectra-gpu.json
    python bench/spectra_gpu.py --small --device cpu   # a smoke run of every step

The pair has the real Qwen2.5-7B shapes (hidden 3584, intermediate 18944, 28 heads /
4 kv heads so k/v are 512 x 3584, vocab 152064, untied embeddings): 2 x 15 GB of bf16,
random weights with a planted low-rank dW plus dense noise. It is generated on the
device (a few seconds on a GPU, where the demo's CPU generator would take minutes),
written once under --data and reused while its spec is unchanged.

Two measurements, printed as JSON in the shape of bench/common.py:

  sftscope  python -m compute.run --device DEVICE on the pair, in its own process:
            wall and CPU seconds, peak RSS, spectra per second; the target is all
            3 x 198 spectra in under 180 s on one H100
  phases    in this process, the steps of one layer and of the embedding timed one
            by one (reading from the page cache, host-to-device copy, upcast to fp64,
            Gram product, eigensolve; the device synchronised around each), scaled
            to the whole pair, against the limits: the bytes read and the fp64 flops
            of the Gram products (2 m^2 n per Gram as a full gemm)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import report, run_measured  # noqa: E402 (after sys.path)

TARGET_SECONDS = 180.0


def spec_for(layers: int, small: bool):
    from compute.demo import PairSpec

    if small:  # every step on a CPU in seconds
        return PairSpec(hidden=256, intermediate=704, layers=layers, heads=4, kv_heads=2,
                        vocab=2048, tie_embeddings=False, shards=2)
    return PairSpec(hidden=3584, intermediate=18944, layers=layers, heads=28, kv_heads=4,
                    vocab=152064, tie_embeddings=False, max_positions=32768, shards=8)


def build(out: Path, spec, device: str) -> Path:
    """The pair (cached by spec): bf16 weights drawn on `device`, a planted rank-r dW
    (r from compute.demo's schedule) and dense noise, as sharded safetensors."""
    import torch

    from compute.demo import parse_name, qwen2_config, shapes, write_checkpoint

    stamp = out / "planted.json"
    key = spec.key() + "-gpu-bench-v1"
    if stamp.exists() and json.loads(stamp.read_text()).get("spec_key") == key:
        return out
    t0 = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(spec.seed)
    base, sft, planted = {}, {}, {}
    for name, shape in shapes(spec).items():
        w0 = torch.randn(shape, generator=gen, device=device) * spec.init_std
        if len(shape) == 2:
            layer, module = parse_name(name)
            m, n = shape
            r = min(spec.rank_fn(module, layer, spec.layers), m, n)
            u = torch.randn(m, r, generator=gen, device=device) / math.sqrt(m)
            v = torch.randn(r, n, generator=gen, device=device) / math.sqrt(n)
            w1 = w0 + spec.s_hi * (u @ v) + spec.dense_std * torch.randn(
                shape, generator=gen, device=device)
            planted[name] = {"rank": r, "shape": list(shape)}
        else:
            w1 = w0 + 1e-3 * torch.randn(shape, generator=gen, device=device)
            if name.endswith("norm.weight"):
                w0, w1 = w0 + 1.0, w1 + 1.0
        base[name] = w0.to(torch.bfloat16).cpu()
        sft[name] = w1.to(torch.bfloat16).cpu()
        del w0, w1
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for role, tensors in (("base", base), ("sft", sft)):
        write_checkpoint(tmp / role, tensors, spec.shards)
        (tmp / role / "config.json").write_text(json.dumps(qwen2_config(spec, 0), indent=2))
    (tmp / "planted.json").write_text(json.dumps(
        {"spec_key": key, "seconds": round(time.perf_counter() - t0, 1),
         "tensors": planted}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"pair built in {time.perf_counter() - t0:.1f} s: {out}", file=sys.stderr)
    return out


def gram_flops(shape) -> float:
    """fp64 flops of one Gram of the short side as a full gemm: 2 m^2 n, m <= n."""
    m, n = sorted(shape)
    return 2.0 * m * m * n


def phases(pair: Path, spec, device_name: str) -> dict:
    """Each step of layer 0's matrices and of the two embeddings, timed alone on the
    device and scaled to the whole pair (layers x per-layer time)."""
    import torch

    from compute.checkpoints import resolve
    from compute.demo import shapes

    device = torch.device(device_name)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    base, sft = resolve(str(pair / "base")), resolve(str(pair / "sft"))
    names = [n for n, s in shapes(spec).items() if len(s) == 2]
    layer0 = [n for n in names if ".layers.0." in n]
    outside = [n for n in names if ".layers." not in n]
    steps = ("read", "to_device", "upcast", "gram", "eigvalsh")
    per = {"layer": dict.fromkeys(steps, 0.0), "outside": dict.fromkeys(steps, 0.0)}
    with torch.inference_mode():
        for group, group_names in (("layer", layer0), ("outside", outside)):
            acc = per[group]
            for name in group_names:
                t = time.perf_counter()
                wb, ws = base.read(name), sft.read(name)
                acc["read"] += time.perf_counter() - t
                sync()
                t = time.perf_counter()
                wb, ws = wb.to(device), ws.to(device)
                sync()
                acc["to_device"] += time.perf_counter() - t
                t = time.perf_counter()
                b, s = wb.double(), ws.double()
                d = s - b
                sync()
                acc["upcast"] += time.perf_counter() - t
                for x in (b, s, d):
                    a = x if x.shape[0] <= x.shape[1] else x.T
                    t = time.perf_counter()
                    g = a @ a.T
                    sync()
                    acc["gram"] += time.perf_counter() - t
                    t = time.perf_counter()
                    torch.linalg.eigvalsh(g)
                    sync()
                    acc["eigvalsh"] += time.perf_counter() - t
                    del g
                del wb, ws, b, s, d
    whole = {k: per["layer"][k] * spec.layers + per["outside"][k] for k in steps}
    total = sum(whole.values())
    n_bytes = sum(math.prod(s) * 2 for n, s in shapes(spec).items()) * 2
    flops = 3 * sum(gram_flops(s) for n, s in shapes(spec).items() if len(s) == 2)
    return {
        "device": device_name,
        "estimated_seconds": {k: round(v, 2) for k, v in whole.items()}
        | {"total": round(total, 2)},
        "share": {k: round(v / total, 3) for k, v in whole.items()} if total else {},
        "layer0_seconds": {k: round(v, 4) for k, v in per["layer"].items()},
        "embeddings_seconds": {k: round(v, 4) for k, v in per["outside"].items()},
        "limits": {
            "bytes_read_gb": round(n_bytes / 1e9, 2),
            "read_gb_per_s": round(n_bytes / 1e9 / whole["read"], 2) if whole["read"] else None,
            "gram_tflop": round(flops / 1e12, 1),
            "gram_tflop_per_s": round(flops / 1e12 / whole["gram"], 1) if whole["gram"] else None,
            "eigensolves": 3 * len(names),
            "eigvalsh_ms_each": round(1000 * whole["eigvalsh"] / (3 * len(names)), 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--small", action="store_true",
                    help="small shapes (hidden 256), for a smoke run on a CPU")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "bench")
    ap.add_argument("--skip-phases", action="store_true",
                    help="only the compute.run measurement")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu --small)")
    spec = spec_for(a.layers, a.small)
    tag = "small" if a.small else "qwen2.5-7b-shaped"
    pair = build(a.data / f"{tag}-L{a.layers}-gpu", spec, a.device)
    out = a.data / "spectra-gpu-run"
    cmd = [sys.executable, "-m", "compute.run", "--base", str(pair / "base"), "--sft",
           str(pair / "sft"), "--name", "bench", "--no-load", "--skip-behaviour",
           "--out", str(out), "--force", "--no-progress", "--device", a.device]
    print(f"running compute.run --device {a.device} ...", file=sys.stderr, flush=True)
    r = run_measured(cmd, cwd=ROOT)
    if r["rc"] != 0:
        print(r["stdout_tail"], file=sys.stderr)
        raise SystemExit(f"compute.run failed with exit code {r['rc']}")
    r.pop("stdout_tail")
    n_spectra = 3 * len(list((out / "bench" / "spectra").glob("[0-9]*.parquet")))
    r |= {"spectra": n_spectra, "matrices_per_second": round(n_spectra / r["seconds"], 2)}
    results = {"sftscope": r, "pair": {"layers": a.layers, "small": a.small,
                                       "path": str(pair)}}
    if not a.skip_phases:
        print("timing the phases ...", file=sys.stderr, flush=True)
        results["phases"] = phases(pair, spec, a.device)
    ratios = {"target_seconds": TARGET_SECONDS,
              "target_over_sftscope": round(TARGET_SECONDS / r["seconds"], 2)}
    gpu = torch.cuda.get_device_name(0) if a.device == "cuda" else None
    report("spectra_gpu", results, ratios, out=a.json, extra={"gpu_name": gpu})
    return 0


if __name__ == "__main__":
    sys.exit(main())
