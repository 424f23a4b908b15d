"""Benchmark: URIAL's generation (compute.behaviour.urial) in batches against one
prompt at a time, on the shipped demo pair, in the same process and run.

    python bench/urial.py                      # 16 prompts, 48 new tokens, batch 8
    python bench/urial.py --prompts 32 --batch-size 16 --device cuda

Both runs answer the same questions greedily (`generate_batch` with one prompt, then
with --batch-size prompts left-padded); the JSON gives each run's seconds and
generated tokens per second, the ratio (batched over one at a time) and whether the
answers were the same tokens. Scoring (the base's forward pass) is not timed here:
it is the same in both. Run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`.
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

QUESTIONS = ["How does a lens focus light onto a point?",
             "Why do heavier objects not fall faster in a vacuum?",
             "What makes the sky blue during the day and red at sunset?",
             "Is glass a liquid?", "How do vaccines train the immune system?",
             "Why is the boiling point of water lower on a mountain?",
             "What is the difference between weather and climate?",
             "How does a refrigerator move heat out of its box?"]


def timed(fn) -> tuple[float, object]:
    """(wall seconds, result) of fn()."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict:
    """Prints and returns the benchmark's JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    import torch

    from compute.behaviour import urial
    from compute.behaviour.scoring import load_model, load_tokenizer

    device = torch.device(a.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    sft = load_model(ROOT / "models" / "demo" / "sft", device, dtype, "sdpa")
    tok = load_tokenizer(ROOT / "models" / "demo" / "sft")
    stops = urial.stop_ids(tok)
    prompts = [urial.chat_ids(tok, f"{QUESTIONS[i % len(QUESTIONS)]} ({i})")
               for i in range(a.prompts)]
    urial.generate(sft, prompts[0], 4, stops, device)  # warm-up
    t1, alone = timed(lambda: [urial.generate(sft, p, a.max_new_tokens, stops, device)
                               for p in prompts])
    tb, batched = timed(lambda: [
        ans for i in range(0, len(prompts), a.batch_size)
        for ans in urial.generate_batch(sft, prompts[i:i + a.batch_size],
                                        a.max_new_tokens, stops, device)])
    n = sum(len(x) for x in alone)
    results = {"prompts": a.prompts, "batch_size": a.batch_size,
               "max_new_tokens": a.max_new_tokens, "generated_tokens": n,
               "one_at_a_time_s": round(t1, 3), "batched_s": round(tb, 3),
               "one_at_a_time_tok_s": round(n / t1, 1),
               "batched_tok_s": round(sum(len(x) for x in batched) / tb, 1),
               "same_tokens": alone == batched}
    return report("urial_generation", results,
                  {"batched_speedup": ratio(t1, tb)}, out=a.out)


if __name__ == "__main__":
    main()
