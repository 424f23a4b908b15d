"""Benchmark: the correlation traps of compute.run --traps against the spectra they
sit beside, per matrix, in the same process.

    python bench/traps.py                          # Qwen2.5-0.5B's two shapes
    python bench/traps.py --shapes 896x896,4864x896,3584x3584

For each shape, a random fp32 W_base and W_sft = W_base + a small change: the
spectra of all three roles as compute.run computes them on a CPU
(compute.linalg.spectra.array_spectra), then the traps of W_base and W_sft
(compute.linalg.traps.trap_row: a shuffle, a Gram's eigenvalues and an MP fit
each). CPU seconds of each after a warm-up (imports, workspaces), and their ratio:
what --traps adds to the spectra half. Run under
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import ratio, report  # noqa: E402 (after sys.path)


def measure(shape: tuple[int, int], seed: int = 0) -> dict:
    """CPU seconds of the spectra (three roles) and of the traps (two sides)."""
    import numpy as np

    from compute.linalg.spectra import array_spectra
    from compute.linalg.traps import trap_row

    rng = np.random.default_rng(seed)
    wb = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    ws = wb + (rng.standard_normal(shape) * 0.001).astype(np.float32)
    t = time.process_time()
    rows = array_spectra(wb, ws, "float32")
    spectra = time.process_time() - t
    t = time.process_time()
    for w, row in ((wb, rows[0]), (ws, rows[1])):
        trap_row(w.astype(np.float64), row["singular_values"], 0)
    traps = time.process_time() - t
    return {"spectra_cpu_s": round(spectra, 2), "traps_cpu_s": round(traps, 2)}


def main(argv: list[str] | None = None) -> dict:
    """Prints and returns the benchmark's JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="896x896,4864x896")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    measure((64, 64))  # warm-up: imports, BLAS, workspaces
    results = {f"{m}x{n}": measure((m, n)) for m, n in shapes}
    ratios = {k: ratio(v["traps_cpu_s"], v["spectra_cpu_s"])
              for k, v in results.items()}
    return report("traps", results, {f"traps_over_spectra_{k}": v
                                     for k, v in ratios.items()}, out=a.out)


if __name__ == "__main__":
    main()
