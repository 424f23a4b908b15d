-- One row per (run, matrix, side, r): how much of dW lies in W_base's top-r
-- singular subspace, against a random r-dimensional subspace of the space W_base
-- spans on that side (span_dim, its rank: on the long side of a tall matrix far
-- fewer dimensions than the side has). Where r >= span_dim the top-r subspace is
-- all of that space and the chance level says nothing: chance_informative false.
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('directions', 'stg_compute__direction_overlap') }}") }}
{%- set runs = incremental_runs('directions', 'stg_compute__direction_overlap', is_incremental()) -%}
select
    run_id || '|' || tensor || '|' || side || '|' || r as overlap_key,
    run_id,
    pair,
    tensor,
    run_finished_at,
    layer,
    module,
    side,
    r,
    share,
    random_share,
    span_dim,
    r < span_dim as chance_informative,
    share / nullif(random_share, 0) as enrichment,
from {{ ref('stg_compute__direction_overlap') }}
left join ({{ run_loads('directions') }}) as loads using (run_id)
where {{ run_filter(runs) }}
