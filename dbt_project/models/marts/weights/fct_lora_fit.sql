{#-
    One row per (run, dW, LoRA rank r): the share of ||dW||_F^2 that the best
    rank-r approximation (the top r singular values) captures. Built per run
    (macros/incremental_by_run.sql).
-#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('spectra', 'stg_compute__spectra') }}") }}
{%- set runs = incremental_runs('spectra', 'stg_compute__spectra', is_incremental()) -%}

with

stats as (

    select * from {{ ref('int_spectrum_stats') }}
    where role = 'delta' and {{ run_filter(runs) }}

),

long as (

    unpivot stats
    on columns('^energy_share_top_')
    into name rank_name value energy_share

),

final as (

    select
        run_id || '|' || tensor || '|' || lora_rank as fit_key,
        run_id,
        pair,
        tensor,
        run_finished_at,
        layer,
        module,
        lora_rank,
        energy_share,
        lora_rank >= n_short as is_full_rank,

    from (
        select *, replace(rank_name, 'energy_share_top_', '')::integer as lora_rank
        from long
    )

)

select * from final
