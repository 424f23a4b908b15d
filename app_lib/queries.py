"""Every query the app runs: cached functions that return DataFrames.

    from app_lib import queries as q
    src = q.source()                       # (warehouse path, change stamp)
    pairs = q.pairs(src)

Each function takes `src` first: it is the cache key, so results are cached per
warehouse file and dropped when the file changes (a new `dbt build`). Each call opens
a short-lived read-only connection (app_lib.db) and closes it; errors (missing file,
busy warehouse) are not cached, so a retry really retries.

Everything derived comes from the dbt marts, never re-derived here: weights from the
weight marts, behaviour (perplexity, per-token deltas, residual drift) from
fct_post_perplexity, fct_token_logprob_delta and fct_residual_drift_by_group, titles
and scores from marts.prompts. Before `dbt build` has made a behaviour mart, its
query returns no rows (with its columns); the list of scored pairs comes from the
raw table, so a page can say which pairs are waiting for dbt.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_lib.db import query, source

__all__ = ["source"]

TTL_S = 600
Src = tuple[str, int]

# What to run to fill each part of the warehouse (shown on the pages).
FILL_WEIGHTS = ("python -m compute.run --pair demo   # or --pair 7B, or --base/--sft\n"
                "cd dbt_project && dbt build")
FILL_PROMPTS = ("python -m ingest.stackexchange PATH/TO/physics.stackexchange.com.7z\n"
                "cd dbt_project && dbt build")
FILL_BEHAVIOUR = ("python -m compute.run --pair demo   # scores marts.prompts\n"
                  "cd dbt_project && dbt build")
FILL_ALL = "make demo   # site, prompts, spectra, behaviour, dbt build"

MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                "down_proj", "embed_tokens", "lm_head"]


TOKEN_MART = "marts.fct_token_logprob_delta"
# the columns each behaviour query returns, with rows or without (no mart yet)
PERPLEXITY_COLUMNS = ["role", "post_id", "grp", "site", "n_tokens", "n_bytes",
                      "perplexity", "bits_per_token", "bits_per_byte", "title",
                      "score"]
TOKEN_COLUMNS = ["position", "token_text", "base_logprob", "sft_logprob", "delta",
                 "cum_delta"]
CUMULATIVE_COLUMNS = ["post_id", "grp", "position", "token_text", "cum_delta"]
NONFINITE_COLUMNS = ["n_posts", "n_posts_left_out", "n_tokens_nonfinite_base",
                     "n_tokens_nonfinite_sft"]
DRIFT_COLUMNS = ["layer", "grp", "n_posts", "n_tokens", "mean_rel_l2", "mean_cos",
                 "pooled_rel_l2"]


def _empty(columns: list[str]) -> pd.DataFrame:
    """No rows, these columns: a behaviour mart dbt has not built yet."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


def _cache(fn):
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)


# --- what is there ---------------------------------------------------------------

@_cache
def relations(src: Src) -> pd.DataFrame:
    """schema, name, kind ('table'|'view'), comment, n_rows (tables: estimated)."""
    return query("""
        select schema_name as schema, table_name as name, 'table' as kind, comment,
               estimated_size as n_rows
        from duckdb_tables() where database_name = current_database()
        union all
        select schema_name, view_name, 'view', comment, null
        from duckdb_views()
        where database_name = current_database() and not internal
        order by schema, name
    """, path=src[0])


def has_table(src: Src, name: str) -> bool:
    """`schema.name` exists (table or view)."""
    rel = relations(src)
    schema, table = name.split(".")
    return bool(((rel["schema"] == schema) & (rel["name"] == table)).any())


@_cache
def row_count(src: Src, name: str) -> int | None:
    """Rows of `schema.name`, None if it does not exist."""
    if not has_table(src, name):
        return None
    schema, table = name.split(".")
    return int(query(f'select count(*) as n from "{schema}"."{table}"',
                     path=src[0])["n"].iloc[0])


def filled(src: Src, *names: str) -> bool:
    """All of `names` exist and hold rows."""
    return all((row_count(src, n) or 0) > 0 for n in names)


@_cache
def columns(src: Src) -> pd.DataFrame:
    """The schema for the SQL console: schema, table, column, type, comment."""
    return query("""
        select schema_name as schema, table_name as "table", column_name as "column",
               data_type as type, comment
        from duckdb_columns()
        where database_name = current_database() and not internal
        order by schema, "table", column_index
    """, path=src[0])


# --- pairs -----------------------------------------------------------------------

@_cache
def pairs(src: Src) -> pd.DataFrame:
    """marts.dim_pairs, smallest pair first: the pairs of their own (a series' step
    and difference runs are on the Over training page, not in the pair pickers)."""
    return query("select * from marts.dim_pairs where trajectory is null "
                 "order by size_billions, pair", path=src[0])


# the pairs that are runs of a series (compute.run --trajectory), from raw tables, for
# lists read before dbt has built marts.dim_pairs: the run record's mark, and the
# series' own record once loaded
SERIES_RUNS = """
    select pair from raw.compute_runs
    where options ->> '$.trajectory.series' is not null
    union select pair from raw.trajectory_steps
    union select diff_pair from raw.trajectory_steps where diff_pair is not null
"""


@_cache
def training_curve(src: Src) -> pd.DataFrame:
    """marts.fct_training_curve: the loss curves of pairs trained here (the demo)."""
    return query("select * from marts.fct_training_curve "
                 "order by pair, global_step, role", path=src[0])


@_cache
def pair_summary(src: Src) -> pd.DataFrame:
    """marts.fct_pair_summary: medians over layers per pair and module type (the
    pairs of their own)."""
    return query(f"""
        select pair, module, size_billions, n_layers, n_matrices, suggested_lora_rank,
               median_relative_frobenius_change, median_relative_spectral_change,
               median_delta_stable_rank, median_delta_signal_rank,
               median_relative_signal_rank
        from marts.fct_pair_summary where pair not in ({SERIES_RUNS})
        order by size_billions, pair, module
    """, path=src[0])


# --- weights ---------------------------------------------------------------------

@_cache
def layer_module(src: Src, pair: str | None = None) -> pd.DataFrame:
    """marts.fct_layer_module_metrics (one pair, or every pair)."""
    where, params = ("where pair = ?", [pair]) if pair else ("", [])
    return query(f"""
        select * from marts.fct_layer_module_metrics {where}
        {"and" if where else "where"} pair not in ({SERIES_RUNS})
        order by size_billions, pair, layer, module
    """, params, path=src[0])


@_cache
def expert_metrics(src: Src, pair: str) -> pd.DataFrame:
    """marts.fct_expert_metrics of one pair: each expert's dW (mixture of experts;
    empty for a dense pair)."""
    return query("""
        select * from marts.fct_expert_metrics where pair = ?
        order by layer, module, expert
    """, [pair], path=src[0])


LAYER_MEASURES = ["relative_frobenius_change", "relative_spectral_change",
                  "delta_stable_rank", "delta_effective_rank", "delta_signal_rank",
                  "delta_energy_rank_90", "relative_signal_rank",
                  "relative_stable_rank", "relative_effective_rank",
                  "relative_energy_rank_90", "delta_s_max", "base_s_max",
                  "base_stable_rank", "zero_fraction"]


@_cache
def layer_medians(src: Src) -> pd.DataFrame:
    """Per pair and layer: the median over module types of each measure."""
    measures = ",\n".join(f"median({m}) as {m}" for m in LAYER_MEASURES)
    return query(f"""
        select pair, any_value(size_billions) as size_billions, layer,
               any_value(depth) as depth, 'median over module types' as module,
               {measures}
        from marts.fct_layer_module_metrics
        where pair not in ({SERIES_RUNS})
        group by pair, layer order by size_billions, pair, layer
    """, path=src[0])


@_cache
def esd_layers(src: Src, pair: str, module: str | None = None) -> pd.DataFrame:
    """marts.fct_layer_module_esd of one pair: one module type's cells, or (module
    None) the median over module types per layer."""
    cols = ", ".join(f"median({r}_alpha) as {r}_alpha"
                     for r in ("base", "sft", "delta"))
    return query(f"""
        select layer, any_value(depth) as depth, {cols}
        from marts.fct_layer_module_esd
        where pair = ? and (? is null or module = ?)
        group by layer order by layer
    """, [pair, module, module], path=src[0])


@_cache
def traps_layers(src: Src, pair: str, module: str | None = None) -> pd.DataFrame:
    """marts.fct_layer_module_traps of one pair: WeightWatcher's correlation traps
    of W_base and W_sft per layer, one module type's or summed over types."""
    return query("""
        select layer, any_value(depth) as depth, sum(base_n_traps) as base_n_traps,
               sum(sft_n_traps) as sft_n_traps, sum(n_matrices) as n_matrices
        from marts.fct_layer_module_traps
        where pair = ? and (? is null or module = ?)
        group by layer order by layer
    """, [pair, module, module], path=src[0])


@_cache
def matrix_esd(src: Src, pair: str, tensor: str) -> pd.DataFrame:
    """marts.fct_matrix_esd rows (base, sft, delta) of one tensor."""
    return query("""
        select * from marts.fct_matrix_esd where pair = ? and tensor = ?
        order by case role when 'base' then 0 when 'sft' then 1 else 2 end
    """, [pair, tensor], path=src[0])


@_cache
def tensors(src: Src, pair: str) -> pd.DataFrame:
    """marts.dim_tensors of one pair, blocks in order, then embeddings and head."""
    return query("""
        select tensor, layer, module, kind, n_rows, n_cols, n_params, storage_dtype
        from marts.dim_tensors where pair = ?
        order by layer nulls last, tensor
    """, [pair], path=src[0])


@_cache
def matrix_metrics(src: Src, pair: str, tensor: str) -> pd.DataFrame:
    """marts.fct_matrix_metrics rows (base, sft, delta) of one tensor."""
    return query("""
        select * from marts.fct_matrix_metrics where pair = ? and tensor = ?
        order by case role when 'base' then 0 when 'sft' then 1 else 2 end
    """, [pair, tensor], path=src[0])


@_cache
def spectrum(src: Src, pair: str, tensor: str, dense: int = 300,
             points: int = 600) -> pd.DataFrame:
    """role, idx (1-based), value: the singular values of W_base, W_sft and dW.

    All of the first `dense` values, then about `points` more evenly spaced, and the
    last one: enough for a log-log plot of a 29568-wide matrix.
    """
    return query("""
        with s as (
            select role,
                   unnest(singular_values) as value,
                   generate_subscripts(singular_values, 1) as idx,
                   len(singular_values) as n
            from staging.stg_compute__spectra
            where pair = ? and tensor = ?
        )
        select role, idx, value from s
        where idx <= ? or idx = n or idx % greatest(1, n // ?) = 0
        order by role, idx
    """, [pair, tensor, dense, points], path=src[0])


@_cache
def energy_curve(src: Src, pair: str, tensor: str, dense: int = 300,
                 points: int = 600) -> pd.DataFrame:
    """rank, share: the share of ||dW||_F^2 the top `rank` singular values hold."""
    return query("""
        with s as (
            select unnest(singular_values) as value,
                   generate_subscripts(singular_values, 1) as idx,
                   len(singular_values) as n
            from staging.stg_compute__spectra
            where pair = ? and tensor = ? and role = 'delta'
        ),
        c as (
            select idx, n,
                   sum(value * value) over (order by idx)
                   / nullif(sum(value * value) over (), 0) as share
            from s
        )
        select idx as rank, share from c
        where idx <= ? or idx = n or idx % greatest(1, n // ?) = 0
        order by idx
    """, [pair, tensor, dense, points], path=src[0])


@_cache
def lora_fit(src: Src, pair: str, tensor: str) -> pd.DataFrame:
    """lora_rank, energy_share, is_full_rank of one dW (marts.fct_lora_fit)."""
    return query("""
        select lora_rank, energy_share, is_full_rank from marts.fct_lora_fit
        where pair = ? and tensor = ? order by lora_rank
    """, [pair, tensor], path=src[0])


# --- behaviour -------------------------------------------------------------------

# Answers have no title: their first words stand in.
TITLE_SQL = ("coalesce(pr.title, 'answer: ' || "
             "left(regexp_replace(pr.text, '\\s+', ' ', 'g'), 80) || '...')")


def _prompts_join(src: Src) -> tuple[str, str]:
    """Columns and join for titles and scores, if marts.prompts exists."""
    if has_table(src, "marts.prompts"):
        return (f", {TITLE_SQL} as title, pr.score",
                "left join marts.prompts as pr on pr.post_id = pt.post_id")
    return ", null::varchar as title, null::bigint as score", ""


@_cache
def post_perplexity(src: Src, pair: str) -> pd.DataFrame:
    """One row per (post, model role): perplexity, bits per token and per byte.
    From marts.fct_post_perplexity (no rows before dbt has built it)."""
    cols, join = _prompts_join(src)
    if has_table(src, "marts.fct_post_perplexity"):  # else: dbt has not built it
        return query(f"""
            select pt.role, pt.post_id, coalesce(pt.grp, 'all') as grp, pt.site,
                   pt.n_scored as n_tokens, pt.n_bytes, pt.perplexity,
                   pt.bits_per_token, pt.bits_per_byte {cols}
            from marts.fct_post_perplexity as pt {join}
            where pt.pair = ?
            order by pt.post_id, pt.role
        """, [pair], path=src[0])
    return _empty(PERPLEXITY_COLUMNS)


@_cache
def nonfinite_tokens(src: Src, pair: str) -> pd.DataFrame:
    """One row: the pair's scored posts, and the posts and tokens (per model) left
    out because a model's logits were not finite there. From
    marts.fct_nonfinite_tokens (no rows before dbt has built it)."""
    if has_table(src, "marts.fct_nonfinite_tokens"):
        return query("""
            select n_posts, n_posts_left_out, n_tokens_nonfinite_base,
                   n_tokens_nonfinite_sft
            from marts.fct_nonfinite_tokens where pair = ?
        """, [pair], path=src[0])
    return _empty(NONFINITE_COLUMNS)


@_cache
def post_deltas(src: Src, pair: str) -> pd.DataFrame:
    """One row per post: perplexity of both models and SFT minus base."""
    ppl = post_perplexity(src, pair)
    if ppl.empty:
        return pd.DataFrame(columns=["post_id", "grp", "title", "score", "n_tokens",
                                     "perplexity_base", "perplexity_sft",
                                     "delta_perplexity", "delta_bits_per_byte"])
    wide = ppl.pivot_table(index=["post_id"], columns="role",
                           values=["perplexity", "bits_per_byte"], aggfunc="first")
    wide.columns = [f"{a}_{b}" for a, b in wide.columns]
    meta = ppl.drop_duplicates("post_id").set_index("post_id")[
        ["grp", "title", "score", "n_tokens"]]
    out = meta.join(wide).reset_index()
    for col in ("perplexity", "bits_per_byte"):
        if f"{col}_sft" in out and f"{col}_base" in out:
            out[f"delta_{col}"] = out[f"{col}_sft"] - out[f"{col}_base"]
    return out


@_cache
def token_deltas(src: Src, pair: str, post_id: int) -> pd.DataFrame:
    """position, token_text, both log-probs, delta = SFT - base (nats), cum_delta
    (marts.fct_token_logprob_delta; no rows before dbt has built it)."""
    if not has_table(src, TOKEN_MART):
        return _empty(TOKEN_COLUMNS)
    return query(f"""
        select position, token_text, logprob_base as base_logprob,
               logprob_sft as sft_logprob, delta_logprob as delta,
               cumulative_delta_logprob as cum_delta
        from {TOKEN_MART} where pair = ? and post_id = ?
        order by position
    """, [pair, int(post_id)], path=src[0])


@_cache
def cumulative_deltas(src: Src, pair: str, points: int = 120) -> pd.DataFrame:
    """post_id, grp, position, token_text, cum_delta for every post, about `points`
    per post (marts.fct_token_logprob_delta; no rows before dbt has built it)."""
    if not has_table(src, TOKEN_MART):
        return _empty(CUMULATIVE_COLUMNS)
    return query(f"""
        with d as (
            select *, count(*) over (partition by post_id) as n
            from {TOKEN_MART} where pair = ?
        )
        select post_id, coalesce(grp, 'all') as grp, position, token_text,
               cumulative_delta_logprob as cum_delta
        from d
        where position % greatest(1, n // ?) = 0 or position = n - 1
        order by post_id, position
    """, [pair, points], path=src[0])


@_cache
def residual_drift(src: Src, pair: str) -> pd.DataFrame:
    """layer, grp: token-weighted means of relative L2 distance and cosine, the
    pooled ratio sqrt(sum |dh|^2 / sum |h_base|^2), posts and tokens counted.
    From marts.fct_residual_drift_by_group (no rows before dbt has built it)."""
    if has_table(src, "marts.fct_residual_drift_by_group"):
        return query("""
            select layer, coalesce(grp, 'all') as grp, n_posts, n_tokens,
                   mean_rel_l2, mean_cos, pooled_rel_l2
            from marts.fct_residual_drift_by_group
            where pair = ? and post_type = 'all'
            order by grp, layer
        """, [pair], path=src[0])
    return _empty(DRIFT_COLUMNS)


@_cache
def group_perplexity_delta(src: Src, pair: str) -> pd.DataFrame:
    """marts.fct_group_perplexity_delta of one pair: per group (any post type, the
    seed's groups), SFT minus base perplexity per post with its Student-t interval
    (empty before dbt has run)."""
    if not has_table(src, "marts.fct_group_perplexity_delta"):
        return pd.DataFrame()
    return query("""
        select grp, n_posts, mean_delta_perplexity, ci95_low_delta_perplexity,
               ci95_high_delta_perplexity, mean_delta_bits_per_byte,
               share_sft_lower_perplexity
        from marts.fct_group_perplexity_delta where pair = ? and post_type = 'all'
        order by grp
    """, [pair], path=src[0])


@_cache
def drift_difference(src: Src, pair: str) -> pd.DataFrame:
    """marts.fct_residual_drift_group_difference of one pair: per hidden-state index,
    high - low of the posts' mean relative L2 distance with its Welch interval
    (empty before dbt has built it)."""
    if not has_table(src, "marts.fct_residual_drift_group_difference"):
        return pd.DataFrame()
    return query("""
        select layer, group_a, group_b, n_posts_a, n_posts_b, estimate_a, estimate_b,
               difference, ci95_low, ci95_high
        from marts.fct_residual_drift_group_difference where pair = ? order by layer
    """, [pair], path=src[0])


@_cache
def behaviour_pairs(src: Src) -> list[str]:
    """Pairs with scored posts (raw.token_logprobs: loaded, whether or not dbt has
    built their marts yet)."""
    return query("select distinct pair from raw.token_logprobs where pair not in "
                 f"({SERIES_RUNS}) order by pair", path=src[0])["pair"].tolist()


# --- posts -----------------------------------------------------------------------

@_cache
def prompts(src: Src, search: str = "", groups: tuple[str, ...] = (),
            limit: int = 500) -> pd.DataFrame:
    """marts.prompts matching `search` (title or text, case-insensitive) and
    `groups`, best score first, without the text."""
    where, params = ["true"], []
    if search:
        where.append("(pr.title ilike ? or pr.text ilike ?)")
        params += [f"%{search}%", f"%{search}%"]
    if groups:
        where.append(f"pr.grp in ({', '.join('?' * len(groups))})")
        params += list(groups)
    return query(f"""
        select pr.post_id, pr.grp, pr.score, {TITLE_SQL} as title, pr.n_chars,
               pr.site, pr.post_type
        from marts.prompts as pr where {' and '.join(where)}
        order by pr.score desc, pr.post_id limit {int(limit)}
    """, params, path=src[0])


@_cache
def prompt_text(src: Src, post_id: int) -> pd.DataFrame:
    """The full row of one prompt."""
    return query("select * from marts.prompts where post_id = ?", [int(post_id)],
                 path=src[0])
