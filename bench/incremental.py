"""Benchmark: `dbt build` after loading one more pair, incremental against full.

    python bench/incremental.py                      # 1, 10 and 50 pairs (~10 min)
    python bench/incremental.py --quick              # 1 and 3 pairs, tiny shapes
    python bench/incremental.py --sizes 1,10 --layers 28 --posts 200 --json out.json

The weight and behaviour marts are incremental per run (docs/scale.md): a build
after a load works on the loaded run only. This bench shows what that buys as the
warehouse grows. Synthetic pairs are written straight into the raw tables, as
`ingest.compute_load` leaves them (one spectra and one behaviour row in
raw.compute_runs per pair, the rows of each raw table); no model is run. For each
size N of --sizes the warehouse is brought to N pairs and built, then:

  incremental   one more pair loaded, `dbt build` (what a user runs after a load)
  full          `dbt build --full-refresh` of the same N + 1 pairs

each in its own process (bench.common.run_measured). A build's time is split, from
dbt's run_results.json, into the models, the data tests (they read whole marts) and
the on-run-end hook that publishes the read-only snapshot, a copy of the whole file
(ingest/snapshot.py), which grows with the warehouse whatever the marts do.

Shapes (per pair): Qwen2.5-7B's matrices (hidden 3584, MLP 18944, k/v 512 x 3584,
vocabulary 152064) with --layers of its 28 layers (default 4, so that the 50-pair
warehouse is built twice within minutes on a small machine): 7 matrices per layer
plus embed_tokens and lm_head, three spectra each (W_base, W_sft, dW), all their
singular values; --posts posts (default 40) of --tokens tokens (default 256) scored
by both models, with token shift and the residual drift of every layer. --quick
uses 2 layers of hidden 256 and 8 posts of 64 tokens. The figures the README quotes
say which shapes they used.

Ratios: full over incremental build seconds at each size (how much a user saves),
and each path's seconds at the largest size over the smallest (how they grow: the
incremental path should stay near 1 apart from the snapshot copy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import ratio, report, run_measured  # noqa: E402 (after sys.path)

DBT_DIR = ROOT / "dbt_project"


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    kv: int
    layers: int
    vocab: int
    posts: int
    tokens: int

    def matrices(self) -> list[tuple[str, str, int, int]]:
        """(kind, module, rows, cols) of one block's weight matrices."""
        h, i, kv = self.hidden, self.intermediate, self.kv
        return [("self_attn", "q_proj", h, h), ("self_attn", "k_proj", kv, h),
                ("self_attn", "v_proj", kv, h), ("self_attn", "o_proj", h, h),
                ("mlp", "gate_proj", i, h), ("mlp", "up_proj", i, h),
                ("mlp", "down_proj", h, i)]

    def n_values(self) -> int:
        """Singular values per pair (three roles)."""
        block = sum(min(m, n) for _, _, m, n in self.matrices())
        return 3 * (self.layers * block + 2 * min(self.vocab, self.hidden))


def shape_7b(layers: int, posts: int, tokens: int) -> Shape:
    return Shape(hidden=3584, intermediate=18944, kv=512, layers=layers, vocab=152064,
                 posts=posts, tokens=tokens)


QUICK = Shape(hidden=256, intermediate=768, kv=64, layers=2, vocab=2048, posts=8,
              tokens=64)


def add_pair(con, index: int, shape: Shape) -> str:
    """Write pair `index`'s raw rows (one transaction); returns its run id."""
    pair, run_id = f"syn{index:03d}", f"syn{index:03d}-20260101T000000"
    con.execute("begin transaction")
    for kind in ("spectra", "behaviour"):
        con.execute(
            "insert into raw.compute_runs by name select ? as run_id, ? as pair, "
            "? as kind, 'bench/base' as base_model, 'bench/sft' as sft_model, "
            "'bench' as code_version, 'cpu' as device, 'bfloat16' as dtype, "
            "'gram' as method, ? as n_layers, timestamp '2026-01-01' as started_at, "
            "timestamp '2026-01-01 01:00' + to_seconds(?) as finished_at, "
            "'{}'::json as options", [run_id, pair, kind, shape.layers, index])
    blocks = [(f"model.layers.{layer}.{kind}.{module}.weight", layer, module, m, n)
              for layer in range(shape.layers)
              for kind, module, m, n in shape.matrices()]
    blocks += [("model.embed_tokens.weight", None, "embed_tokens", shape.vocab,
                shape.hidden),
               ("lm_head.weight", None, "lm_head", shape.vocab, shape.hidden)]
    con.execute("create or replace temp table bench_matrices (tensor varchar, "
                "layer integer, module varchar, n_rows integer, n_cols integer)")
    con.executemany("insert into bench_matrices values (?, ?, ?, ?, ?)", blocks)
    # descending spectra: a power law per matrix, dW a thousand times smaller, with
    # a few planted directions on top of its noise floor
    con.execute("""
        insert into raw.spectra by name
        select ? as run_id, ? as pair, 'bench/base' as base_model,
            'bench/sft' as sft_model, m.tensor, m.layer, m.module, r.role, m.n_rows,
            m.n_cols, 'bfloat16' as storage_dtype,
            list_transform(range(least(m.n_rows, m.n_cols)),
                lambda i: r.scale * (1 + hash(m.tensor) % 7) / pow(1 + i, 0.5)
                    * (case when r.role = 'delta' and i < 8 then 20 else 1 end))
                as singular_values,
            null::double as frobenius_sq,
            case when r.role = 'delta' then 2e-5 end as noise_sigma,
            0::bigint as n_zero, 0::bigint as n_nonfinite, 'gram' as method,
            'cpu' as device, 0.1 as seconds
        from bench_matrices as m
        cross join (values ('base', 1.0), ('sft', 1.01), ('delta', 0.001))
            as r(role, scale)
    """, [run_id, pair])
    con.execute("update raw.spectra set frobenius_sq = list_sum(list_transform("
                "singular_values, lambda s: s * s)) where run_id = ?", [run_id])
    posts, tokens = shape.posts, shape.tokens
    con.execute("""
        insert into raw.post_texts by name
        select ? as run_id, ? as pair, p as post_id, 'bench' as site,
            case when p % 2 = 0 then 'high' else 'low' end as grp,
            ? as n_tokens, 4 * ? as n_bytes, ? as n_words
        from range(1, ? + 1) as t(p)
    """, [run_id, pair, tokens, tokens, tokens, posts])
    con.execute("""
        insert into raw.token_logprobs by name
        select ? as run_id, ? as pair, r.role, p as post_id, i as position,
            (hash(p, i) % 151000)::integer as token_id, 'tok' as token_text,
            -((hash(p, i, r.role) % 1000) / 100.0) as logprob
        from range(1, ? + 1) as a(p), range(?) as b(i),
            (values ('base'), ('sft')) as r(role)
    """, [run_id, pair, posts, tokens])
    con.execute("""
        insert into raw.token_shift by name
        select ? as run_id, ? as pair, p as post_id, i as position,
            (hash(p, i, 1) % 1000) / 1000.0 as kl_sft_base,
            (hash(p, i, 2) % 1000) / 1000.0 as kl_base_sft,
            (hash(p, i, 3) % 1000) / 100.0 as entropy_base,
            (hash(p, i, 4) % 1000) / 100.0 as entropy_sft,
            (1 + hash(p, i, 5) % 6)::integer as rank_sft_top_in_base,
            (1 + hash(p, i, 6) % 6)::integer as rank_base_top_in_sft,
            (hash(p, i, 7) % 151000)::integer as top_id_base,
            (hash(p, i, 8) % 151000)::integer as top_id_sft,
            'a' as top_text_base, 'b' as top_text_sft
        from range(1, ? + 1) as a(p), range(?) as b(i)
    """, [run_id, pair, posts, tokens])
    con.execute("""
        insert into raw.residual_drift by name
        select ? as run_id, ? as pair, p as post_id, l as layer, ? as n_tokens,
            0.01 * l * ? as sum_rel_l2, (1 - 0.01 * l) * ? as sum_cos,
            l * 1.0 as sum_sq_diff, 100.0 * ? as sum_sq_base
        from range(1, ? + 1) as a(p), range(? + 1) as b(l)
    """, [run_id, pair, tokens, tokens, tokens, tokens, posts, shape.layers])
    con.execute("commit")
    return run_id


def fill(db: Path, upto: int, shape: Shape) -> None:
    """Bring the warehouse to `upto` synthetic pairs (pairs 0 .. upto - 1)."""
    from ingest.warehouse import connect, ensure_raw_schema

    with connect(db) as con:
        ensure_raw_schema(con)
        have = con.execute("select count(distinct pair) from raw.compute_runs "
                           "where pair like 'syn%'").fetchone()[0]
        for i in range(have, upto):
            add_pair(con, i, shape)


def dbt_build(db: Path, target: Path, *flags: str, command: str = "build",
              **extra_env: str) -> dict:
    """`dbt build` in its own process; wall seconds and the split of its nodes."""
    env = {**os.environ, "SFTSCOPE_DB": str(db), "DBT_TARGET_PATH": str(target),
           "DBT_LOG_PATH": str(target / "logs"), "PYTHONPATH": str(ROOT),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", **extra_env}
    dbt = str(Path(sys.executable).with_name("dbt"))
    res = run_measured([dbt, command, "--quiet", *flags], cwd=DBT_DIR, env=env)
    if res["rc"] != 0:
        raise SystemExit(f"dbt {command} {' '.join(flags)} failed:\n"
                         f"{res['stdout_tail']}")
    split = {"models_seconds": 0.0, "tests_seconds": 0.0, "publish_seconds": 0.0}
    results = json.loads((target / "run_results.json").read_text())["results"]
    for r in results:
        kind = r["unique_id"].split(".", 1)[0]
        key = {"model": "models_seconds", "test": "tests_seconds",
               "unit_test": "tests_seconds", "operation": "publish_seconds"}.get(kind)
        if key:
            split[key] += r["execution_time"]
    slowest = sorted((r for r in results if r["unique_id"].startswith("model.")),
                     key=lambda r: -r["execution_time"])[:3]
    return {"seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"],
            "peak_rss_mb": res["peak_rss_mb"],
            **{k: round(v, 2) for k, v in split.items()},
            "slowest_models": {r["unique_id"].rsplit(".", 1)[-1]:
                               round(r["execution_time"], 2) for r in slowest},
            "db_mb": round(db.stat().st_size / 2**20, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", help="pairs in the warehouse before the one added "
                    "(default 1,10,50; 1,3 with --quick)")
    ap.add_argument("--layers", type=int, default=4,
                    help="7B-shaped layers per pair (default 4 of its 28)")
    ap.add_argument("--posts", type=int, default=40, help="posts scored per pair")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per post")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes (and sizes 1,3): a smoke run")
    ap.add_argument("--data", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    shape = QUICK if a.quick else shape_7b(a.layers, a.posts, a.tokens)
    sizes = sorted(int(s) for s in (a.sizes or ("1,3" if a.quick else "1,10,50"))
                   .split(","))
    with tempfile.TemporaryDirectory(dir=a.data) as tmp:
        work = Path(tmp)
        db, target = work / "warehouse.duckdb", work / "target"
        results: dict[str, dict] = {}
        for n in sizes:
            fill(db, n, shape)
            # the marts of the n pairs (not measured: every model the first time,
            # then the per-run ones, without publishing a snapshot)
            catch_up = dbt_build(db, target, *([] if n == sizes[0] else [
                "--select", "config.materialized:incremental"]), command="run",
                SFTSCOPE_SNAPSHOTS="0")
            fill(db, n + 1, shape)  # one more pair loaded
            incremental = dbt_build(db, target)
            full = dbt_build(db, target, "--full-refresh")
            results[f"pairs_{n}"] = {"pairs_before": n, "catch_up_build": catch_up,
                                     "incremental": incremental, "full": full}
            print(f"{n} + 1 pairs: incremental {incremental['seconds']} s, "
                  f"full {full['seconds']} s", file=sys.stderr)
    lo, hi = results[f"pairs_{sizes[0]}"], results[f"pairs_{sizes[-1]}"]
    ratios = {f"full_over_incremental_{k}": ratio(v["full"]["seconds"],
                                                  v["incremental"]["seconds"])
              for k, v in results.items()}
    ratios |= {f"full_over_incremental_models_{k}": ratio(
        v["full"]["models_seconds"], v["incremental"]["models_seconds"])
        for k, v in results.items()}
    for path in ("incremental", "full"):
        for part in ("seconds", "models_seconds"):
            ratios[f"{path}_{part}_{sizes[-1]}_over_{sizes[0]}"] = ratio(
                hi[path][part], lo[path][part])
    shape_doc = {**shape.__dict__, "singular_values_per_pair": shape.n_values(),
                 "token_rows_per_pair": 3 * shape.posts * shape.tokens}
    report("incremental", results, ratios, out=a.json,
           extra={"shape": shape_doc, "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
