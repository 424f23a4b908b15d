{#- Built per run (macros/incremental_by_run.sql). -#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('behaviour', 'stg_compute__token_shift') }}") }}
{%- set runs = incremental_runs('behaviour', 'stg_compute__token_shift', is_incremental()) -%}
with

tokens as (

    select * from {{ ref('fct_token_shift') }} where {{ run_filter(runs) }}

),

posts as (

    select * from {{ ref('stg_compute__post_texts') }} where {{ run_filter(runs) }}

),

loads as (

    {{ run_loads('behaviour') }}

),

training as (

    select * from {{ ref('int_post_training') }} where {{ run_filter(runs) }}

),

per_post as (

    select
        run_id,
        pair,
        post_id,
        sum(logprob_base) as sum_logprob_base,
        sum(logprob_sft) as sum_logprob_sft,
        max(kl_sft_base) as max_kl_sft_base,
        {{ shift_aggregates() }}

    from tokens
    group by all

),

bits as (

    select
        *,
        -sum_logprob_base / ln(2) as nll_bits_base,
        -sum_logprob_sft / ln(2) as nll_bits_sft,

    from per_post

),

final as (

    select
        -- keys
        posts.run_id || '|' || posts.post_id as post_key,
        posts.run_id,
        posts.pair,
        posts.post_id,
        loads.run_finished_at,

        -- the post
        posts.site,
        posts.grp,
        posts.post_type,
        training.in_training,
        posts.n_tokens,
        bits.n_scored,
        posts.n_bytes,

        -- likelihood in bits (lm-eval-harness: -sum log-likelihood / ln 2, per
        -- UTF-8 byte of the text or per token)
        bits.nll_bits_base,
        bits.nll_bits_sft,
        bits.nll_bits_base / bits.n_scored as bits_per_token_base,
        bits.nll_bits_sft / bits.n_scored as bits_per_token_sft,
        (bits.nll_bits_sft - bits.nll_bits_base) / bits.n_scored
            as delta_bits_per_token,
        bits.nll_bits_base / nullif(posts.n_bytes, 0) as bits_per_byte_base,
        bits.nll_bits_sft / nullif(posts.n_bytes, 0) as bits_per_byte_sft,
        (bits.nll_bits_sft - bits.nll_bits_base) / nullif(posts.n_bytes, 0)
            as delta_bits_per_byte,

        -- how far apart the two next-token distributions are (nats)
        bits.sum_kl_sft_base,
        bits.sum_kl_base_sft,
        bits.sum_kl_sft_base / bits.n_scored as mean_kl_sft_base,
        bits.sum_kl_base_sft / bits.n_scored as mean_kl_base_sft,
        bits.max_kl_sft_base,
        bits.mean_entropy_base,
        bits.mean_entropy_sft,

        -- token shift: rank of SFT's top-1 under the base
        bits.n_unshifted,
        bits.n_marginal,
        bits.n_shifted,
        bits.n_unshifted / bits.n_scored as share_unshifted,
        bits.n_marginal / bits.n_scored as share_marginal,
        bits.n_shifted / bits.n_scored as share_shifted,
        bits.n_reverse_shifted / bits.n_scored as share_reverse_shifted,

    from bits
    inner join posts
        on bits.run_id = posts.run_id
        and bits.pair = posts.pair
        and bits.post_id = posts.post_id
    left join training
        on training.run_id = posts.run_id
        and training.pair = posts.pair
        and training.post_id = posts.post_id
    left join loads on loads.run_id = posts.run_id

)

select * from final
