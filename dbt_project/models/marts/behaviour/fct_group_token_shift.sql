{#- Built per run (macros/incremental_by_run.sql). -#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('behaviour', 'stg_compute__token_shift') }}") }}
{%- set runs = incremental_runs('behaviour', 'stg_compute__token_shift', is_incremental()) -%}
with

shift as (

    select * from {{ ref('fct_token_shift') }} where {{ run_filter(runs) }}

),

posts as (

    select * from {{ ref('stg_compute__post_texts') }} where {{ run_filter(runs) }}

),

typed_tokens as (

    select
        shift.*,
        coalesce(posts.post_type, '(unknown)') as post_type,
    from shift
    left join posts
        on posts.run_id = shift.run_id
        and posts.post_id = shift.post_id

),

tokens as (

    -- every token at its post's type and under 'all' (the seed's groups: any type)
    {{ all_levels('typed_tokens', ['post_type']) }}

),

per_bucket as (

    select
        run_id,
        run_finished_at,
        pair,
        grp,
        post_type,
        coalesce(position_bucket, 'all') as position_bucket,
        min(position) as first_position,
        count(distinct post_id) as n_posts,
        {{ shift_aggregates() }}

    from tokens
    group by grouping sets (
        (run_id, run_finished_at, pair, grp, post_type, position_bucket),
        (run_id, run_finished_at, pair, grp, post_type)
    )

),

final as (

    select
        -- keys
        run_id || '|' || coalesce(grp, '') || '|' || post_type || '|'
            || position_bucket as group_bucket_key,
        run_id,
        pair,
        grp,
        post_type,
        run_finished_at,
        position_bucket,
        first_position,

        -- sizes
        n_posts,
        n_scored as n_tokens,

        -- token-weighted means (nats)
        sum_kl_sft_base / n_scored as mean_kl_sft_base,
        sum_kl_base_sft / n_scored as mean_kl_base_sft,
        mean_entropy_base,
        mean_entropy_sft,

        -- shift classes of SFT's top-1 under the base (shares of the tokens)
        n_unshifted,
        n_marginal,
        n_shifted,
        n_unshifted / n_scored as share_unshifted,
        n_marginal / n_scored as share_marginal,
        n_shifted / n_scored as share_shifted,
        n_reverse_shifted / n_scored as share_reverse_shifted,

    from per_bucket

)

select * from final
