"""The command line of URIAL's protocol (compute.behaviour.urial): the SFT answers
the prompts' questions in its chat template, the base scores its tokens.

    python -m compute.urial --pair demo --generate 20 --max-new-tokens 64
    python -m compute.urial --base A --sft B --name N --prompts p.parquet --generate 5
    python -m compute.urial --pair demo --generate 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

from compute.behaviour import urial
from compute.behaviour.scoring import (
    load_model,
    load_prompts,
    load_tokenizer,
    pick_dtype,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """python -m compute.urial's command line."""
    ap = argparse.ArgumentParser(
        prog="python -m compute.urial",
        description="URIAL's token shift: the SFT answers each prompt in its chat "
        "template (greedy), the base ranks each token it chose")
    ap.add_argument("--pair", help="a known pair of compute.run (e.g. demo)")
    ap.add_argument("--base", help="base checkpoint: hub id or local folder")
    ap.add_argument("--sft", help="fine-tuned checkpoint")
    ap.add_argument("--name", help="the pair's name (with --base/--sft)")
    ap.add_argument("--generate", type=int, required=True, metavar="N",
                    help="answer the first N prompts (question posts first)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, metavar="B",
                    help="prompts per generate call, left-padded (default 8; the "
                    "answers are those of one prompt at a time)")
    ap.add_argument("--prompts", type=Path, help="Parquet of prompts (default: the "
                    "warehouse's marts.prompts)")
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    ap.add_argument("--out", type=Path, default=Path("data/runs"))
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--dtype", choices=["bfloat16", "float32"])
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--no-load", dest="load", action="store_false",
                    help="write the file only, not raw.generated_token_shift")
    a = ap.parse_args(argv)
    if a.generate < 1 or a.max_new_tokens < 1 or a.batch_size < 1:
        ap.error("--generate, --max-new-tokens and --batch-size must be >= 1")
    if not a.pair and not (a.base and a.sft):
        ap.error("give --pair, or --base and --sft")
    from compute.run.cli import parse_args as run_args

    cfg = run_args(["--pair", a.pair] if a.pair else
                   ["--base", a.base, "--sft", a.sft,
                    *(["--name", a.name] if a.name else [])])
    a.pair, a.base, a.sft = cfg.pair, cfg.base, cfg.sft
    return a


def questions(prompts, n: int) -> list[tuple[int, str]]:
    """(post_id, text) of the first n prompts, questions before answers."""
    if "post_type" in prompts.columns:
        prompts = prompts.sort_values("post_type", key=lambda s: s != "question",
                                      kind="stable")
    return [(int(r.post_id), str(r.text)) for r in prompts.head(n).itertuples()]


def main(argv: list[str] | None = None) -> int:
    """0 done; 2 refused input (named)."""
    a = parse_args(argv)
    from ingest.warehouse import db_path

    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available()
                          else "cpu" if a.device == "auto" else a.device)
    try:
        prompts = load_prompts(a.prompts or db_path(a.db))
        base_dir, sft_dir = Path(a.base), Path(a.sft)
        tok = load_tokenizer(sft_dir, fallback=base_dir)
        dtype = pick_dtype(device, a.dtype)
        base = load_model(base_dir, device, dtype, "sdpa")
        sft = load_model(sft_dir, device, dtype, "sdpa", base=base_dir)
        answers = urial.run_urial(base, sft, tok, questions(prompts, a.generate),
                                  a.max_new_tokens, device, a.progress,
                                  a.batch_size)
    except (urial.UrialError, OSError) as exc:
        print(f"error: {exc}\nNothing was written.", file=sys.stderr)
        return 2
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    table = urial.rows(answers, f"{a.pair}-urial-{stamp}", a.pair)
    path = urial.write(table, a.out / a.pair)
    shifted = sum(1 for c in table.column("shift_class").to_pylist()
                  if c == "shifted")
    print(f"urial {a.pair}: {len(answers)} answers, {table.num_rows} generated "
          f"tokens, {shifted / max(table.num_rows, 1):.1%} shifted; {path}")
    if a.load:
        from ingest.generated import load_or_explain

        return load_or_explain(path, a.db)
    return 0
