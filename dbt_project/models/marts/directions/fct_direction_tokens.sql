-- One row per (run, matrix, kind, direction, pole, rank): the tokens dW's top
-- residual-stream directions promote / demote, and the embedding rows that changed
-- most ("what does SFT's main direction in layer 20's MLP say?").
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('directions', 'stg_compute__direction_tokens') }}") }}
{%- set runs = incremental_runs('directions', 'stg_compute__direction_tokens', is_incremental()) -%}
select
    run_id || '|' || tensor || '|' || kind || '|' || coalesce(direction, 0) || '|'
        || pole || '|' || rank as token_key,
    run_id,
    pair,
    tensor,
    run_finished_at,
    layer,
    module,
    kind,
    direction,
    singular_value,
    pole,
    rank,
    token_id,
    token,
    score,
from {{ ref('stg_compute__direction_tokens') }}
left join ({{ run_loads('directions') }}) as loads using (run_id)
where {{ run_filter(runs) }}
