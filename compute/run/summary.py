"""Print a short summary of each pair in the warehouse (after `dbt build`).

    python -m compute.summary [--db data/warehouse.duckdb] [--pair demo]
"""

from __future__ import annotations

import argparse
import sys

from ingest.warehouse import connect, db_path

QUERY = """
select
    pair,
    module,
    n_matrices as layers,
    n_unchanged as unchanged,
    round(median_base_stable_rank, 1) as "stable rank W_base",
    round(median_delta_stable_rank, 1) as "stable rank dW",
    median_delta_signal_rank as "signal rank dW",
    round(100 * median_relative_frobenius_change, 2) as "|dW|_F/|W|_F %",
    suggested_lora_rank as "LoRA rank"
from marts.fct_pair_summary
where ? is null or pair = ?
order by size_billions, pair,
    list_position(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj',
                   'down_proj'], module)
"""


def main(argv: list[str] | None = None) -> int:
    """python -m compute.summary: print the pairs' summaries; exit status."""
    ap = argparse.ArgumentParser(prog="python -m compute.summary",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="warehouse (default $SFTSCOPE_DB or data/warehouse.duckdb)")
    ap.add_argument("--pair", help="only this pair")
    a = ap.parse_args(argv)
    try:
        with connect(a.db, read_only=True) as con:
            df = con.execute(QUERY, [a.pair, a.pair]).df()
    except FileNotFoundError:
        print(f"no warehouse at {db_path(a.db)}: run `make demo` or compute.run first",
              file=sys.stderr)
        return 2
    except Exception as exc:  # duckdb.CatalogException: dbt has not run yet
        print(f"cannot read marts.fct_pair_summary ({exc}); run `cd dbt_project && "
              "dbt build` first", file=sys.stderr)
        return 2
    if df.empty:
        print("no pairs in the warehouse yet: run python -m compute.run --pair demo")
        return 0
    print("Per module type, medians over the layers where dW is not zero "
          "(dW = W_sft - W_base; 'unchanged': layers where it is):")
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
