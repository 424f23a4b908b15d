-- One row per (run, matrix, side, r): principal angles between the top-r singular
-- subspaces of dW and of W_base (cosines descending: the first is the closest pair).
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('directions', 'stg_compute__direction_angles') }}") }}
{%- set runs = incremental_runs('directions', 'stg_compute__direction_angles', is_incremental()) -%}
select
    run_id || '|' || tensor || '|' || side || '|' || r as angles_key,
    run_id,
    pair,
    tensor,
    run_finished_at,
    layer,
    module,
    side,
    r,
    cosines,
    list_avg(cosines) as mean_cos,
    list_min(cosines) as min_cos,
    degrees(acos(least(list_min(cosines), 1.0))) as largest_angle_deg,
from {{ ref('stg_compute__direction_angles') }}
left join ({{ run_loads('directions') }}) as loads using (run_id)
where {{ run_filter(runs) }}
