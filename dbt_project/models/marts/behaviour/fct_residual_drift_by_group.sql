{#- Built per run (macros/incremental_by_run.sql). -#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('behaviour', 'stg_compute__residual_drift') }}") }}
{%- set runs = incremental_runs('behaviour', 'stg_compute__residual_drift', is_incremental()) -%}
with

drift as (

    select * from {{ ref('stg_compute__residual_drift') }} where {{ run_filter(runs) }}

),

run_posts as (

    select * from {{ ref('stg_compute__post_texts') }} where {{ run_filter(runs) }}

),

posts as (

    -- every post at its post type and under 'all' (the seed's groups: any type)
    {{ all_levels(typed('run_posts'), ['post_type']) }}

),

loads as (

    {{ run_loads('behaviour') }}

),

final as (

    select
        -- keys
        drift.run_id || '|' || coalesce(posts.grp, '') || '|' || posts.post_type || '|'
            || drift.layer as group_layer_key,
        drift.run_id,
        drift.pair,
        posts.grp,
        posts.post_type,
        drift.layer,
        any_value(loads.run_finished_at) as run_finished_at,

        -- sizes
        count(*) as n_posts,
        sum(drift.n_tokens) as n_tokens,

        -- token-weighted means over every token of the group's posts
        sum(drift.sum_rel_l2) / sum(drift.n_tokens) as mean_rel_l2,
        sum(drift.sum_cos) / sum(drift.n_tokens) as mean_cos,
        -- pooled: sqrt(sum |h_sft - h_base|^2 / sum |h_base|^2)
        sqrt(sum(drift.sum_sq_diff) / nullif(sum(drift.sum_sq_base), 0))
            as pooled_rel_l2,
        sqrt(sum(drift.sum_sq_diff) / sum(drift.n_tokens)) as rms_diff_norm,
        sqrt(sum(drift.sum_sq_base) / sum(drift.n_tokens)) as rms_base_norm,
        -- post-weighted: every post counts once
        avg(drift.sum_rel_l2 / nullif(drift.n_tokens, 0)) as mean_post_rel_l2,

    from drift
    inner join posts
        on drift.run_id = posts.run_id
        and drift.pair = posts.pair
        and drift.post_id = posts.post_id
    left join loads on loads.run_id = drift.run_id
    group by drift.run_id, drift.pair, posts.grp, posts.post_type, drift.layer

)

select * from final
