"""The DuckDB warehouse: where it lives, how writers connect, the `raw` tables.

    from ingest.warehouse import connect, ensure_raw_schema
    with connect() as con:            # waits a bounded time for another writer
        ensure_raw_schema(con)

DuckDB allows one writing process per file, and `dbt run` cannot open the file while
any other process holds it, so every connection here is short-lived: open, write in
one transaction, close.

The raw layout is versioned: SCHEMA_VERSION, and MIGRATIONS (the steps from the first
release's layout; its docstring says how to add one). `ensure_raw_schema` upgrades an
older warehouse in the writer's transaction; a read-only `connect` refuses one, naming
`python -m ingest.upgrade`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ingest import snapshot

DEFAULT_DB = Path("data/warehouse.duckdb")
LOCK_TIMEOUT_S = float(os.environ.get("SFTSCOPE_LOCK_TIMEOUT", "60"))


class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse file and did not let go in time."""


def db_path(explicit: str | os.PathLike | None = None) -> Path:
    """`explicit`, else $SFTSCOPE_DB, else data/warehouse.duckdb."""
    return Path(explicit or os.environ.get("SFTSCOPE_DB") or DEFAULT_DB)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc)
    return "Could not set lock" in text or "Conflicting lock" in text


def lock_holder(exc: Exception) -> str:
    """'PID n (command line)' of the process a DuckDB lock error names."""
    m = re.search(r"\(PID (\d+)\)", str(exc))
    return snapshot.describe_pid(int(m.group(1))) if m else "another process"


@contextlib.contextmanager
def connect(
    path: str | os.PathLike | None = None,
    *,
    read_only: bool = False,
    timeout_s: float | None = None,
    config: dict | None = None,
    row_group_size: int | None = None,
    check: bool = True,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, retrying while another process holds its lock.

    Gives up after `timeout_s` (default $SFTSCOPE_LOCK_TIMEOUT or 60 s) with a
    `WarehouseBusy` that names the holder. `config` goes to duckdb.connect. With
    `row_group_size` the file is attached with that DuckDB ROW_GROUP_SIZE (what this
    connection writes; bulk loads use smaller groups so that DuckDB compresses and
    writes each one while the next is still being parsed). The connection is closed
    on exit. A `read_only` connection to a warehouse of another release's raw layout
    raises SchemaError naming the command that upgrades it (`check=False`: don't);
    writers call `ensure_raw_schema`, which upgrades it. A `read_only` connection
    reads the warehouse's current snapshot where it has one (ingest.snapshot), and
    says on stderr when the warehouse changed after it (`snapshot.notice`).
    """
    path = primary = db_path(path)
    if read_only and not path.exists():
        raise FileNotFoundError(f"warehouse {path} does not exist yet")
    if read_only:  # readers read the published snapshot (ingest.snapshot)
        path = snapshot.reader_path(path)
        if path != primary and (note := snapshot.notice(primary)) is not None:
            print(f"{'note' if note.writing else 'warning'}: {note.text}", file=sys.stderr)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    timeout_s = LOCK_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            con = _open(path, read_only, config or {}, row_group_size)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise
            published = snapshot.reader_path(primary) if read_only else path
            if published != path:  # published meanwhile: read that, not the file
                path = published
                continue
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"warehouse {path} is held by {lock_holder(exc)}; waited {timeout_s:g} s"
                    " (SFTSCOPE_LOCK_TIMEOUT). Let that process finish or close its"
                    " connection (a notebook, a duckdb shell, a dbt run, another load),"
                    " then try again."
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    try:
        if read_only and check:
            check_schema(con, path)
        yield con
    finally:
        con.close()


def _open(path: Path, read_only: bool, config: dict, row_group_size: int | None):
    if row_group_size is None:
        return duckdb.connect(str(path), read_only=read_only, config=config)
    con = duckdb.connect(config=config)
    try:
        opts = f"ROW_GROUP_SIZE {int(row_group_size)}" + (", READ_ONLY" if read_only else "")
        con.execute(f"attach ? as warehouse ({opts})".replace("?", _sql_str(path)))
        con.execute("use warehouse")
        con.execute(f"set temp_directory = {_sql_str(str(path) + '.tmp')}")
    except BaseException:
        con.close()
        raise
    return con


def _sql_str(value) -> str:
    return "'" + str(value).replace("'", "''") + "'"


# The contract tables written by compute.run (see README, "The warehouse").
COMPUTE_TABLES: dict[str, str] = {
    "compute_runs": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,            -- 'spectra' | 'behaviour' | 'directions'
        base_model VARCHAR NOT NULL,
        sft_model VARCHAR NOT NULL,
        base_revision VARCHAR,
        sft_revision VARCHAR,
        code_version VARCHAR,
        device VARCHAR,
        dtype VARCHAR,
        method VARCHAR,
        n_layers INTEGER,
        started_at TIMESTAMP,
        finished_at TIMESTAMP,
        options JSON
    """,
    "spectra": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        base_model VARCHAR NOT NULL,
        sft_model VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        role VARCHAR NOT NULL,            -- 'base' | 'sft' | 'delta'
        n_rows INTEGER NOT NULL,
        n_cols INTEGER NOT NULL,
        storage_dtype VARCHAR NOT NULL,
        singular_values DOUBLE[] NOT NULL,
        frobenius_sq DOUBLE,              -- sum of squared entries, computed directly
        noise_sigma DOUBLE,               -- delta: rounding-noise std per entry
        n_zero BIGINT,                    -- entries exactly 0
        n_nonfinite BIGINT,               -- NaN/Inf entries (spectrum empty if > 0)
        method VARCHAR NOT NULL,
        device VARCHAR NOT NULL,
        seconds DOUBLE,
        expert INTEGER,                   -- mixture of experts: the expert; NULL dense
        part VARCHAR,                     -- q|k|v|gate|up: cut from a fused projection
        source_tensor VARCHAR,            -- the checkpoint tensor it was read from
        stored_transposed BOOLEAN         -- stored [in, out] (Conv1D); rows = out
    """,
    "vector_changes": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        numel BIGINT NOT NULL,
        storage_dtype VARCHAR NOT NULL,
        base_norm DOUBLE,
        sft_norm DOUBLE,
        delta_norm DOUBLE,
        n_zero BIGINT,
        n_nonfinite BIGINT
    """,
    "added_tokens": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,          -- embed_tokens / lm_head of the SFT
        token_id BIGINT NOT NULL,         -- a row past the base's vocabulary
        token VARCHAR,                    -- its string (SFT tokenizer), NULL without one
        norm DOUBLE NOT NULL              -- L2 norm of the row
    """,
    "token_logprobs": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        role VARCHAR NOT NULL,            -- 'base' | 'sft'
        post_id BIGINT NOT NULL,
        position INTEGER NOT NULL,        -- 0 = first scored token
        token_id INTEGER NOT NULL,
        token_text VARCHAR,
        logprob DOUBLE NOT NULL,          -- NaN where nonfinite
        nonfinite BOOLEAN DEFAULT false   -- the model's logits were not all finite
    """,
    "token_shift": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        post_id BIGINT NOT NULL,
        position INTEGER NOT NULL,        -- as in token_logprobs
        kl_sft_base DOUBLE NOT NULL,      -- KL(p_sft || p_base) of the next token, nats
        kl_base_sft DOUBLE NOT NULL,      -- KL(p_base || p_sft)
        entropy_base DOUBLE NOT NULL,     -- entropy of p_base, nats
        entropy_sft DOUBLE NOT NULL,
        rank_sft_top_in_base INTEGER NOT NULL,  -- rank of SFT's top-1 under the base
        rank_base_top_in_sft INTEGER NOT NULL,  -- rank of the base's top-1 under SFT
        top_id_base INTEGER NOT NULL,     -- each model's most likely next token
        top_id_sft INTEGER NOT NULL,
        top_text_base VARCHAR,            -- those tokens decoded on their own
        top_text_sft VARCHAR,
        nonfinite BOOLEAN DEFAULT false   -- either model's logits not all finite:
                                          -- the floats NaN, the ids and ranks -1
    """,
    "generated_token_shift": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        mode VARCHAR NOT NULL,            -- 'generated' (URIAL's protocol)
        post_id BIGINT NOT NULL,          -- the prompt the SFT answered
        position INTEGER NOT NULL,        -- 0-based, in the SFT's answer
        n_generated INTEGER NOT NULL,     -- the answer's length in tokens
        token_id BIGINT NOT NULL,         -- the SFT's greedy choice
        logprob_base DOUBLE NOT NULL,
        logprob_sft DOUBLE NOT NULL,
        kl_sft_base DOUBLE NOT NULL,
        kl_base_sft DOUBLE NOT NULL,
        entropy_base DOUBLE NOT NULL,
        entropy_sft DOUBLE NOT NULL,
        rank_in_base BIGINT NOT NULL,     -- eta: the base's rank of the SFT's token
        shift_class VARCHAR NOT NULL,     -- unshifted (1), marginal (2-3), shifted
        position_bucket VARCHAR NOT NULL
    """,
    "post_texts": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        post_id BIGINT NOT NULL,
        site VARCHAR,
        grp VARCHAR,
        n_tokens INTEGER NOT NULL,
        n_bytes INTEGER NOT NULL,
        n_words INTEGER NOT NULL,
        post_type VARCHAR                 -- 'question' | 'answer' (NULL: not known)
    """,
    "residual_drift": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        post_id BIGINT NOT NULL,
        layer INTEGER NOT NULL,           -- 0 = embeddings, L = final hidden state
        n_tokens INTEGER NOT NULL,
        sum_rel_l2 DOUBLE NOT NULL,       -- sum over tokens of |h_sft-h_base|/|h_base|
        sum_cos DOUBLE NOT NULL,          -- sum over tokens of cos(h_sft, h_base)
        sum_sq_diff DOUBLE NOT NULL,      -- sum over tokens of |h_sft-h_base|^2
        sum_sq_base DOUBLE NOT NULL       -- sum over tokens of |h_base|^2
    """,
    "direction_overlap": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        side VARCHAR NOT NULL,            -- 'left' (rows, output) | 'right'
        r INTEGER NOT NULL,               -- W_base's top-r singular subspace
        share DOUBLE NOT NULL,            -- of ||dW||_F^2 inside it
        random_share DOUBLE NOT NULL,     -- r / span_dim: a random subspace's share
        span_dim INTEGER                  -- dimension W_base spans on this side
    """,
    "direction_angles": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        side VARCHAR NOT NULL,            -- 'left' | 'right'
        r INTEGER NOT NULL,               -- top-r subspaces of dW and of W_base
        cosines DOUBLE[] NOT NULL         -- of the principal angles, descending
    """,
    "intruders": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        j INTEGER NOT NULL,               -- W_sft's j-th left singular vector
        singular_value DOUBLE NOT NULL,   -- s_j(W_sft)
        max_cos DOUBLE NOT NULL,          -- max |cos| over all of W_base's left ones
        null_max_cos DOUBLE NOT NULL,     -- the same for a direction uniform in
                                          -- the space W_base spans
        null_dim INTEGER                  -- that space's dimension (W_base's rank)
    """,
    "training_threads": """
        pair VARCHAR NOT NULL,
        site VARCHAR NOT NULL,
        thread_id BIGINT NOT NULL         -- a question id whose thread it trained on
    """,
    "direction_signs": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        direction INTEGER NOT NULL,       -- dW's k-th singular triplet
        mean_projection DOUBLE NOT NULL,  -- mean over scored tokens of v . x
        sign INTEGER NOT NULL,            -- its sign: +1 dW pushes towards +u
        n_tokens BIGINT NOT NULL          -- scored tokens averaged over
    """,
    "direction_tokens": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,            -- 'direction' (dW's) | 'row_change'
        direction INTEGER,                -- k of dW's k-th direction; NULL rows
        singular_value DOUBLE,            -- s_k(dW)
        pole VARCHAR NOT NULL,            -- 'promoted' | 'demoted' | 'changed'
        rank INTEGER NOT NULL,            -- 1 = strongest
        token_id BIGINT NOT NULL,
        token VARCHAR,                    -- SFT tokenizer's string, NULL without one
        score DOUBLE NOT NULL             -- logit (direction) or ||dW row|| (row)
    """,
    "training_log": """
        pair VARCHAR NOT NULL,
        role VARCHAR NOT NULL,            -- 'base' (pretraining) | 'sft'
        step INTEGER NOT NULL,            -- 0 = before the first update
        epoch DOUBLE NOT NULL,
        tokens_seen BIGINT NOT NULL,      -- tokens trained on so far (not padding)
        lr DOUBLE NOT NULL,
        train_loss DOUBLE,                -- mean NLL per token of the step's batch
        heldout_post_loss DOUBLE,         -- held-out posts, raw text (where evaluated)
        heldout_answer_loss DOUBLE,       -- held-out answers in the chat format
        seconds DOUBLE                    -- since the phase started
    """,
    "lora_extractions": """
        extraction VARCHAR NOT NULL,      -- the adapter's name (its folder's)
        pair VARCHAR NOT NULL,
        base_model VARCHAR NOT NULL,
        sft_model VARCHAR NOT NULL,
        rule VARCHAR NOT NULL,            -- 'fixed' | 'auto' | 'min_energy' |
                                          -- 'sv_ratio' | 'sv_cumulative' | 'sv_fro' |
                                          -- 'sv_epsilon'
        rank_asked VARCHAR,               -- --rank as given (R, 'auto') or NULL
        min_energy DOUBLE,                -- --min-energy q or NULL
        adapter_dir VARCHAR NOT NULL,
        dtype VARCHAR NOT NULL,           -- the factors' storage
        tensor VARCHAR NOT NULL,
        module_path VARCHAR NOT NULL,     -- the adapted module's name in the model
        layer INTEGER,
        module VARCHAR NOT NULL,
        n_rows INTEGER NOT NULL,
        n_cols INTEGER NOT NULL,
        rank INTEGER NOT NULL,            -- triplets kept (0: not adapted)
        frobenius_sq DOUBLE NOT NULL,     -- ||dW||_F^2
        retained_sq DOUBLE NOT NULL,      -- sum of the kept s_i^2
        retained_share DOUBLE,            -- retained_sq / frobenius_sq (NULL: dW = 0)
        s_last DOUBLE,                    -- s_r, the smallest kept
        s_next DOUBLE,                    -- s_(r+1), the largest dropped
        n_params BIGINT NOT NULL,         -- r (rows + cols); rows cols when whole
        seconds DOUBLE,                   -- the whole extraction's
        options VARCHAR,                  -- JSON: --embed, --include, --exclude,
                                          -- --sv-epsilon, --dynamic(-param), --modules
        full_rank BOOLEAN                 -- stored whole (PEFT modules_to_save)
    """,
    "lora_recovery_ranks": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        base_model VARCHAR NOT NULL,
        sft_model VARCHAR NOT NULL,
        modules VARCHAR NOT NULL,         -- module types truncated: 'all' or a list
        rank INTEGER NOT NULL,            -- r (0: the base; is_full: dW whole)
        is_full BOOLEAN NOT NULL,
        n_matrices INTEGER NOT NULL,
        n_params BIGINT NOT NULL,         -- LoRA parameters: sum of r (rows + cols)
        retained_sq DOUBLE NOT NULL,      -- sum over the matrices of kept s_i^2
        frobenius_sq DOUBLE NOT NULL,     -- sum over the matrices of ||dW||_F^2
        vectors VARCHAR NOT NULL,         -- 1-D tensors from: 'sft' | 'base'
        device VARCHAR,
        dtype VARCHAR,
        seconds DOUBLE,
        n_vectors INTEGER,                -- 1-D tensors taken from the SFT
        behaviour_run_id VARCHAR,         -- the behaviour run whose setting is scored
        window_tokens INTEGER             -- its window (tokens)
    """,
    "lora_recovery_posts": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        modules VARCHAR NOT NULL,
        rank INTEGER NOT NULL,
        post_id BIGINT NOT NULL,
        site VARCHAR,
        grp VARCHAR,
        n_tokens INTEGER NOT NULL,
        sum_logprob DOUBLE NOT NULL,      -- rank-r model, sum over the post's tokens
        sum_logprob_sft DOUBLE NOT NULL,  -- the SFT's, same tokens
        sum_kl_sft_rank DOUBLE NOT NULL,  -- sum of KL(p_sft || p_rank), nats
        sum_kl_rank_sft DOUBLE NOT NULL,  -- sum of KL(p_rank || p_sft)
        vectors VARCHAR,                  -- the model's 1-D tensors: 'base' | 'sft'
        post_type VARCHAR                 -- 'question' | 'answer' (NULL: not known)
    """,
    "patch_models": """
        run_id VARCHAR NOT NULL,          -- the behaviour run whose setting is scored
        pair VARCHAR NOT NULL,
        patch_by VARCHAR NOT NULL,        -- 'layer' | 'module' | 'layer_module' | 'tensor'
        patch_group VARCHAR NOT NULL,     -- '3.q_proj', 'embeddings', '1-D', '(base)'
        group_index INTEGER,              -- NULL: the base as loaded (the reference)
        layer INTEGER,
        module VARCHAR,
        mode VARCHAR NOT NULL,            -- 'base' | 'add' (W_base + dW_G) |
                                          -- 'revert' (W_sft - dW_G)
        rank INTEGER,                     -- add's top-r part of dW_G (NULL: whole)
        is_full BOOLEAN NOT NULL,
        n_tensors INTEGER NOT NULL,
        n_params BIGINT NOT NULL,
        frobenius_sq DOUBLE NOT NULL,     -- ||dW_G||_F^2
        retained_sq DOUBLE NOT NULL,      -- the part added (top-r: sum of s_i^2)
        n_posts INTEGER NOT NULL,
        device VARCHAR,
        dtype VARCHAR,
        window_tokens INTEGER,
        merge_seconds DOUBLE,             -- building the model (load and merge)
        seconds DOUBLE                    -- the whole model: merge and scoring
    """,
    "patch_posts": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        patch_by VARCHAR NOT NULL,
        patch_group VARCHAR NOT NULL,
        group_index INTEGER,
        layer INTEGER,
        module VARCHAR,
        mode VARCHAR NOT NULL,
        rank INTEGER,
        is_full BOOLEAN NOT NULL,
        post_id BIGINT NOT NULL,
        site VARCHAR,
        grp VARCHAR,
        post_type VARCHAR,
        n_tokens INTEGER NOT NULL,
        sum_logprob DOUBLE NOT NULL,      -- the patched model, sum over the tokens
        sum_logprob_sft DOUBLE NOT NULL,  -- the SFT's, same tokens
        sum_kl_sft_model DOUBLE NOT NULL, -- sum of KL(p_sft || p_model), nats
        sum_kl_model_sft DOUBLE NOT NULL, -- sum of KL(p_model || p_sft)
        sum_kl_base_model DOUBLE,         -- sum of KL(p_base || p_model), the base
                                          -- as loaded (NULL: before raw step 17)
        sum_kl_model_base DOUBLE          -- sum of KL(p_model || p_base)
    """,
    "trajectory_steps": """
        trajectory VARCHAR NOT NULL,      -- the series' name (--name)
        step BIGINT NOT NULL,             -- the checkpoint's training step
        position INTEGER NOT NULL,        -- 1, 2, ... in step order
        base_model VARCHAR NOT NULL,
        base_revision VARCHAR,
        sft_model VARCHAR NOT NULL,       -- the checkpoint: folder or hub id
        sft_revision VARCHAR,             -- its hub revision (branch or tag)
        pair VARCHAR NOT NULL,            -- the pair run base vs this step
        diff_pair VARCHAR,                -- the pair run step before vs this one
        tokens_seen BIGINT,               -- from trainer_state.json or the list
        train_loss DOUBLE,                -- the last logged training loss
        finished_at TIMESTAMP
    """,
    "trajectory_overlap": """
        trajectory VARCHAR NOT NULL,
        step BIGINT NOT NULL,
        prev_step BIGINT NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        side VARCHAR NOT NULL,            -- 'left' | 'right'
        k INTEGER NOT NULL,               -- the top-k subspaces of dW_prev and dW
        share DOUBLE NOT NULL,            -- ||P_k Q_k^T||_F^2 / k: 1 = the same
        random_share DOUBLE               -- k / dim: two random k-subspaces
    """,
    "seed_direction_overlap": """
        run_id VARCHAR NOT NULL,          -- the run of (base, SFT A)
        other_run_id VARCHAR NOT NULL,    -- the run of (base, SFT B): another seed
        pair VARCHAR NOT NULL,
        other_pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        side VARCHAR NOT NULL,            -- 'left' | 'right'
        k INTEGER NOT NULL,               -- the top-k subspaces of dW_A and dW_B
        share DOUBLE NOT NULL,            -- ||P_k^T Q_k||_F^2 / k: 1 = the same
        dim INTEGER NOT NULL,             -- the side's dimension
        span_dim INTEGER,                 -- the dimension W_base spans on that side
        cosines DOUBLE[]                  -- the principal angles' cosines, largest first
    """,
    "random_spectra": """
        run_id VARCHAR NOT NULL,
        pair VARCHAR NOT NULL,
        tensor VARCHAR NOT NULL,
        layer INTEGER,
        module VARCHAR NOT NULL,
        expert INTEGER,
        part VARCHAR,
        role VARCHAR NOT NULL,            -- 'base' | 'sft' (W with entries shuffled)
        n_rows INTEGER NOT NULL,
        n_cols INTEGER NOT NULL,
        seed BIGINT NOT NULL,             -- NumPy RandomState seed of the shuffles
        n_replicas INTEGER NOT NULL,      -- shuffles pooled (5 below 100 evals)
        random_singular_values DOUBLE[] NOT NULL,  -- every shuffle's, in turn
        rand_lambda_max DOUBLE,           -- largest randomised eigenvalue s^2
        rand_mp_sigma DOUBLE,             -- MP fit of the randomised ESD
        rand_bulk_max DOUBLE,             -- its bulk edge, units of lambda
        rand_bulk_min DOUBLE,
        n_traps BIGINT,                   -- eigenvalues above edge + TW margin
        rand_mp_softrank DOUBLE,
        rand_distance DOUBLE,             -- Jensen-Shannon: ESD vs first shuffle's
        ww_softrank DOUBLE,               -- first shuffle's lambda_max / W's
        ww_maxdist DOUBLE,                -- W's lambda_max - first shuffle's
        seconds DOUBLE
    """,
}


# --- Schema versions -------------------------------------------------------------
#
# The warehouse records its layout's version in raw.schema_version (one row per step
# applied, the highest is current). Version 1 is the first release's layout, which had
# no such table: a warehouse with raw tables but no raw.schema_version is version 1.

SCHEMA_VERSION = 17
"""The raw layout this release writes: the last step of MIGRATIONS."""

UPGRADE_COMMAND = "python -m ingest.upgrade"


class SchemaError(RuntimeError):
    """The warehouse's raw layout is not the one this release reads."""


@dataclass(frozen=True)
class Migration:
    """One step of the raw layout: from `version - 1` to `version`."""

    version: int
    description: str
    statements: tuple[str, ...]


VERSION_TABLE_DDL = """
    version INTEGER NOT NULL,         -- the layout reached by this step
    description VARCHAR NOT NULL,
    applied_at TIMESTAMP NOT NULL,
    code_version VARCHAR              -- the sftscope release that applied it
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "raw.schema_version records the layout's version",
              (f"create table if not exists raw.schema_version ({VERSION_TABLE_DDL})",)),
    Migration(3, "raw.training_log: loss curves of a trained pair",
              ("create table if not exists raw.training_log ("
               + COMPUTE_TABLES["training_log"] + ")",)),
    Migration(4, "raw.spectra: expert, part, source_tensor, stored_transposed "
              "(layouts beyond Qwen2.5: experts, fused projections, Conv1D)",
              ("alter table raw.spectra add column if not exists expert INTEGER",
               "alter table raw.spectra add column if not exists part VARCHAR",
               "alter table raw.spectra add column if not exists source_tensor VARCHAR",
               "update raw.spectra set source_tensor = tensor "
               "where source_tensor is null",
               "alter table raw.spectra add column if not exists stored_transposed "
               "BOOLEAN default false")),
    Migration(5, "raw.added_tokens: the rows a fine-tune added to its vocabulary",
              ("create table if not exists raw.added_tokens ("
               + COMPUTE_TABLES["added_tokens"] + ")",)),
    Migration(6, "raw.token_shift: per-token KL, entropies and top-1 ranks of the pair",
              ("create table if not exists raw.token_shift ("
               + COMPUTE_TABLES["token_shift"] + ")",)),
    Migration(7, "raw.direction_overlap, direction_angles, intruders, "
              "direction_tokens: singular directions of W_base, W_sft and dW",
              tuple(f"create table if not exists raw.{t} ({COMPUTE_TABLES[t]})"
                    for t in ("direction_overlap", "direction_angles", "intruders",
                              "direction_tokens"))),
    Migration(8, "raw.lora_extractions, lora_recovery_ranks, lora_recovery_posts: "
              "adapters extracted from dW and the behaviour each rank recovers",
              tuple(f"create table if not exists raw.{t} ({COMPUTE_TABLES[t]})"
                    for t in ("lora_extractions", "lora_recovery_ranks",
                              "lora_recovery_posts"))),
    Migration(9, "raw.lora_extractions: the extraction's choices (options) and the "
              "modules stored whole (full_rank)",
              ("alter table raw.lora_extractions add column if not exists options "
               "VARCHAR",
               "alter table raw.lora_extractions add column if not exists full_rank "
               "BOOLEAN")),
    Migration(10, "raw.generated_token_shift: URIAL's shift on the SFT's own answers",
              ("create table if not exists raw.generated_token_shift ("
               + COMPUTE_TABLES["generated_token_shift"] + ")",)),
    Migration(11, "raw.trajectory_steps, trajectory_overlap: a fine-tune's "
              "checkpoints as a series and the overlap of consecutive dW subspaces",
              tuple(f"create table if not exists raw.{t} ({COMPUTE_TABLES[t]})"
                    for t in ("trajectory_steps", "trajectory_overlap"))),
    Migration(12, "raw.token_logprobs, token_shift: nonfinite, the positions whose "
              "logits were not finite (NaN/Inf weights), left out of the marts",
              tuple(f"alter table raw.{t} add column if not exists nonfinite BOOLEAN "
                    "default false" for t in ("token_logprobs", "token_shift"))),
    Migration(13, "post types of scored posts; recovery models with the base's or the "
              "SFT's 1-D tensors, and the behaviour run whose setting they score; the "
              "dimension of the space W_base spans (overlap's chance level, the "
              "intruder null); raw.direction_signs: the effect sign of dW's "
              "directions; raw.training_threads: the threads a pair was trained on",
              ("alter table raw.post_texts add column if not exists post_type VARCHAR",
               "alter table raw.lora_recovery_posts add column if not exists vectors "
               "VARCHAR",
               "update raw.lora_recovery_posts as p set vectors = r.vectors "
               "from raw.lora_recovery_ranks as r where p.vectors is null "
               "and p.run_id = r.run_id and p.rank = r.rank",
               "alter table raw.lora_recovery_posts add column if not exists post_type "
               "VARCHAR",
               "alter table raw.lora_recovery_ranks add column if not exists n_vectors "
               "INTEGER",
               "alter table raw.lora_recovery_ranks add column if not exists "
               "behaviour_run_id VARCHAR",
               "alter table raw.lora_recovery_ranks add column if not exists "
               "window_tokens INTEGER",
               "alter table raw.direction_overlap add column if not exists span_dim "
               "INTEGER",
               "alter table raw.intruders add column if not exists null_dim INTEGER",
               "create table if not exists raw.direction_signs ("
               + COMPUTE_TABLES["direction_signs"] + ")",
               "create table if not exists raw.training_threads ("
               + COMPUTE_TABLES["training_threads"] + ")")),
    Migration(14, "raw.seed_direction_overlap: the seed floor of the directions, the "
              "overlap of two fine-tunes' top dW subspaces",
              ("create table if not exists raw.seed_direction_overlap ("
               + COMPUTE_TABLES["seed_direction_overlap"] + ")",)),
    Migration(15, "raw.random_spectra: WeightWatcher's correlation traps, the "
              "spectra of W_base and W_sft with their entries shuffled "
              "(compute.run --traps)",
              ("create table if not exists raw.random_spectra ("
               + COMPUTE_TABLES["random_spectra"] + ")",)),
    Migration(16, "raw.patch_models, patch_posts: weight patching, the behaviour of "
              "base + dW_G and SFT - dW_G for groups G of tensors",
              tuple(f"create table if not exists raw.{t} ({COMPUTE_TABLES[t]})"
                    for t in ("patch_models", "patch_posts"))),
    Migration(17, "raw.patch_posts: KL to and from the base as loaded per patched "
              "model (sum_kl_base_model, sum_kl_model_base)",
              tuple(f"alter table raw.patch_posts add column if not exists {c} DOUBLE"
                    for c in ("sum_kl_base_model", "sum_kl_model_base"))),
)
"""The ordered steps from version 1 to SCHEMA_VERSION.

To change a raw table (a new column, a new table):
1. change its definition (COMPUTE_TABLES here, or ingest/se_tables.py), which is what
   a new warehouse gets;
2. append `Migration(SCHEMA_VERSION + 1, "what changes", (sql, ...))` here and bump
   SCHEMA_VERSION to that number. The statements bring an existing warehouse to the
   same layout, keeping its rows: `alter table raw.spectra add column if not exists
   expert INTEGER` (existing rows get NULL, or `... default 0`), `create table if
   not exists raw.training_log (...)` (`table_ddl("training_log")` gives that
   statement from COMPUTE_TABLES). Write them with `if not exists`: a step may meet a
   table that a later definition already created. Never edit a released step.
tests/test_schema_upgrade.py upgrades a first-release warehouse
(tests/fixtures/warehouse_v1.sql) through every step and checks that every table and
column of the definitions is there, with the same types as a new warehouse's, and
that no row was lost.
"""


def table_ddl(name: str) -> str:
    """`create table if not exists raw.<name> (...)` from COMPUTE_TABLES."""
    return f"create table if not exists raw.{name} ({COMPUTE_TABLES[name]})"


def _raw_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute(
        "select table_name from duckdb_tables() where schema_name = 'raw'"
        " and database_name = current_database()").fetchall()}


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The warehouse's raw layout version; None when it has no raw tables yet."""
    tables = _raw_tables(con)
    if "schema_version" in tables:
        return con.execute("select max(version) from raw.schema_version").fetchone()[0]
    return 1 if tables else None


def _newer_error(found: int) -> SchemaError:
    return SchemaError(
        f"the warehouse has raw schema version {found}, written by a newer sftscope "
        f"release; this one knows versions up to {SCHEMA_VERSION}. Upgrade sftscope "
        "(or use another SFTSCOPE_DB); nothing was changed.")


def check_schema(con: duckdb.DuckDBPyConnection, path: object = None) -> int | None:
    """For readers: the version, or SchemaError (with the command that upgrades it)
    when the warehouse is older or newer than this release."""
    found = schema_version(con)
    if found is not None and found > SCHEMA_VERSION:
        raise _newer_error(found)
    if found is not None and found < SCHEMA_VERSION:
        db = f" --db {path}" if path is not None else ""
        raise SchemaError(
            f"the warehouse {path or ''} has raw schema version {found}, written by an "
            f"older sftscope release; this one reads version {SCHEMA_VERSION}. Upgrade "
            f"it in place (one transaction, no rows lost): {UPGRADE_COMMAND}{db}")
    return found


def _release() -> str | None:
    try:
        return importlib.metadata.version("sftscope")
    except importlib.metadata.PackageNotFoundError:
        return None


def _record(con, version: int, description: str) -> None:
    con.execute("insert into raw.schema_version values (?, ?,"
                " current_timestamp::timestamp, ?)", [version, description, _release()])


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> list[Migration]:
    """Bring the `raw` schema to SCHEMA_VERSION: create every raw table (empty) where
    missing; on a warehouse of an older release, first apply the MIGRATIONS steps it
    lacks, in order. Returns the steps applied. Raises SchemaError (changing nothing)
    on a warehouse of a newer release.

    Call it inside the caller's transaction (the loaders do), so a failure anywhere
    leaves the warehouse as it was. All tables exist from the first write on, so
    `dbt run` builds every staging view whatever has been loaded so far.
    """
    found = schema_version(con)
    if found is not None and found > SCHEMA_VERSION:
        raise _newer_error(found)
    con.execute("create schema if not exists raw")
    applied = []
    if found is not None:
        for step in MIGRATIONS:
            if step.version > found:
                for sql in step.statements:
                    con.execute(sql)
                _record(con, step.version, step.description)
                applied.append(step)
    for name, columns in COMPUTE_TABLES.items():
        con.execute(f"create table if not exists raw.{name} ({columns})")
    con.execute(f"create table if not exists raw.schema_version ({VERSION_TABLE_DDL})")
    with contextlib.suppress(ImportError):
        from ingest.se_tables import create_tables

        create_tables(con)
    if found is None:
        _record(con, SCHEMA_VERSION, "created")
    return applied


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Begin; commit when the block returns; on any error (Ctrl-C included) roll
    back and re-raise it. A rollback that fails (a dead connection, which DuckDB
    rolls back itself) does not hide the error that caused it."""
    con.execute("begin transaction")
    try:
        yield con
        con.execute("commit")
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.execute("rollback")
        raise


@contextlib.contextmanager
def writer_transaction(
    path: str | os.PathLike | None = None,
    *,
    setup: Callable[[duckdb.DuckDBPyConnection], object] | None = None,
    **connect_kw,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Every load's unit of work: `connect` for writing (waits for another writer),
    `setup(con)` if given (settings that cannot change inside a transaction), then
    one `transaction` whose first step is `ensure_raw_schema`; after the commit, a
    snapshot is published to readers (ingest.snapshot). On an error nothing is
    committed and nothing published.

        with writer_transaction(db) as con:
            replace_pair_rows(con, "training_log", pair, "select ...")
    """
    with connect(path, **connect_kw) as con:
        if setup is not None:
            setup(con)
        with transaction(con):
            ensure_raw_schema(con)
            yield con
        snapshot.publish_or_warn(con, db_path(path))  # what readers see from now on


def migrate(con: duckdb.DuckDBPyConnection) -> tuple[int | None, list[Migration]]:
    """`ensure_raw_schema` in a transaction of its own; returns (version found, steps
    applied). A no-op (no transaction) when the layout is current."""
    found = schema_version(con)
    if found == SCHEMA_VERSION:
        return found, []
    with transaction(con):
        applied = ensure_raw_schema(con)
    return found, applied


def upgrade(path: str | os.PathLike | None = None) -> tuple[int | None, list[Migration]]:
    """Open the warehouse for writing, `migrate` it and publish it to readers."""
    with connect(path) as con:
        found, applied = migrate(con)
        if applied:
            snapshot.publish_or_warn(con, db_path(path))
        return found, applied


def load_reported(load, source, again: str, input_errors: tuple, done: str) -> int:
    """Run `load()` ({raw table: rows}, one transaction) and report the outcome for a
    person: 0 loaded, 2 unusable input (`input_errors` or a DuckDB error, e.g. a
    damaged Parquet file, whose message names it), 3 warehouse busy, 130
    interrupted; never a traceback for these. Each failure says that the warehouse
    was not changed and, when busy, the command (`again`) that loads `source` later."""
    import sys

    try:
        counts = load()
    except input_errors as exc:
        print(f"error: {exc}\nNothing was changed in the warehouse.", file=sys.stderr)
        return 2
    except WarehouseBusy as exc:
        print(f"error: {exc}\nNothing was changed in the warehouse; {source} is kept "
              f"as it is. Load it when the warehouse is free: {again}", file=sys.stderr)
        return 3
    except duckdb.Error as exc:
        print(f"error: loading {source} failed: {type(exc).__name__}: {exc}\n"
              "Nothing was changed in the warehouse.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was changed in the warehouse.", file=sys.stderr)
        return 130
    print(f"{done}: " + ", ".join(f"raw.{t} {n} rows" for t, n in counts.items()))
    return 0


def load_file_reported(module: str, load, input_errors: tuple, path, db) -> int:
    """`load_reported` for a loader of one file or folder, `load(path, db)`: the
    command that loads it again is `python -m <module> PATH [--db DB]`."""
    again = f"python -m {module} {path}" + (f" --db {db}" if db else "")
    return load_reported(lambda: load(path, db), path, again, input_errors,
                         f"loaded into {db_path(db)}")


def loader_main(argv: list[str] | None, module: str, description: str,
                path_help: str, load_or_explain) -> int:
    """The command line of a loader of one path: `python -m <module> PATH [--db DB]`,
    its exit status that of `load_or_explain(path, db)`."""
    import argparse

    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    ap.add_argument("path", type=Path, help=path_help)
    ap.add_argument("--db", type=Path, help="warehouse (default $SFTSCOPE_DB or "
                    "data/warehouse.duckdb)")
    a = ap.parse_args(argv)
    return load_or_explain(a.path, a.db)


def replace_pair_rows(
    con: duckdb.DuckDBPyConnection, table: str, pair: str, select_sql: str,
    params: list | None = None,
) -> int:
    """Within the caller's transaction: delete `pair`'s rows, insert `select_sql`."""
    con.execute(f"delete from raw.{table} where pair = ?", [pair])
    con.execute(f"insert into raw.{table} by name {select_sql}", params or [])
    return con.execute(
        f"select count(*) from raw.{table} where pair = ?", [pair]
    ).fetchone()[0]
