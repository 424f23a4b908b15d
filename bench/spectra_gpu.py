"""Benchmark: all three spectra of a 7B-shaped pair on a GPU, and where the time goes.

    python bench/spectra_gpu.py                    # Qwen2.5-7B shapes, 28 layers, cuda
    python bench/spectra_gpu.py --layers 4 --json data/bench/spectra-gpu.json
    python bench/spectra_gpu.py --small --device cpu   # a smoke run of every step

The pair has the real Qwen2.5-7B shapes (hidden 3584, intermediate 18944, 28 heads /
4 kv heads so k/v are 512 x 3584, vocab 152064, untied embeddings): 2 x 15 GB of bf16,
compute.fixtures.planted's pair (random weights, a planted low-rank dW plus dense noise) drawn on
the device (seconds on a GPU, minutes on the CPU), written once under --data and
reused while its spec is unchanged.

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
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import report  # noqa: E402 (after sys.path)
from bench.spectra import measure, sftscope_cmd  # noqa: E402

TARGET_SECONDS = 180.0


def spec_for(layers: int, small: bool):
    from compute.fixtures.planted import PairSpec

    if small:  # every step on a CPU in seconds
        return PairSpec(hidden=256, intermediate=704, layers=layers, heads=4, kv_heads=2,
                        vocab=2048, tie_embeddings=False, weight_files=2)
    return PairSpec(hidden=3584, intermediate=18944, layers=layers, heads=28, kv_heads=4,
                    vocab=152064, tie_embeddings=False, max_positions=32768,
                    weight_files=8)


def build(out: Path, spec, device: str) -> Path:
    """The pair (cached by spec and device): compute.fixtures.planted's planted pair, its
    weights drawn on `device`."""
    from compute.fixtures.planted import build_pair

    t0 = time.perf_counter()
    build_pair(out, spec, device=device)
    print(f"pair ready in {time.perf_counter() - t0:.1f} s: {out}", file=sys.stderr)
    return out


def gram_flops(shape) -> float:
    """fp64 flops of one Gram of the short side as a full gemm: 2 m^2 n, m <= n."""
    m, n = sorted(shape)
    return 2.0 * m * m * n


def phases(pair: Path, spec, device_name: str) -> dict:
    """Each step of layer 0's matrices and of the two embeddings, timed alone on the
    device and scaled to the whole pair (layers x per-layer time)."""
    import torch

    from compute.fixtures.planted import shapes
    from compute.io.checkpoints import resolve

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
    print(f"running compute.run --device {a.device} ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-spectra-gpu-") as tmp:
        cmd = [*sftscope_cmd(pair, Path(tmp) / "sftscope", None), "--device", a.device]
        r = measure("sftscope", cmd, Path(tmp), None)
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
