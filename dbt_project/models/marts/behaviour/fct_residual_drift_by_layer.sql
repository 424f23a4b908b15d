{#- Built per run (macros/incremental_by_run.sql). -#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('behaviour', 'stg_compute__residual_drift') }}") }}
{%- set runs = incremental_runs('behaviour', 'stg_compute__residual_drift', is_incremental()) -%}
with

drift as (

    select * from {{ ref('stg_compute__residual_drift') }} where {{ run_filter(runs) }}

),

loads as (

    {{ run_loads('behaviour') }}

),

final as (

    select
        -- keys
        run_id || '|' || layer as layer_key,
        run_id,
        pair,
        layer,
        any_value(loads.run_finished_at) as run_finished_at,

        -- sizes
        count(*) as n_posts,
        sum(n_tokens) as n_tokens,

        -- token-weighted means over every token of every post
        sum(sum_rel_l2) / sum(n_tokens) as mean_rel_l2,
        sum(sum_cos) / sum(n_tokens) as mean_cos,
        -- pooled: sqrt(sum |h_sft - h_base|^2 / sum |h_base|^2)
        sqrt(sum(sum_sq_diff) / nullif(sum(sum_sq_base), 0)) as pooled_rel_l2,
        sqrt(sum(sum_sq_diff) / sum(n_tokens)) as rms_diff_norm,
        sqrt(sum(sum_sq_base) / sum(n_tokens)) as rms_base_norm,
        -- post-weighted: every post counts once
        avg(sum_rel_l2 / nullif(n_tokens, 0)) as mean_post_rel_l2,

    from drift
    left join loads using (run_id)
    group by run_id, pair, layer

)

select * from final
