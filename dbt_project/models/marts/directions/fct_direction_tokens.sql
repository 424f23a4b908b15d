-- One row per (run, matrix, kind, direction, pole, rank): the tokens at the two
-- poles of dW's top residual-stream directions ('+u', '-u': a singular vector's
-- sign is arbitrary), and the embedding rows that changed most ("what does SFT's
-- main direction in layer 20's MLP say?"). effect: which pole dW promotes on the
-- behaviour run's texts, from the sign of the mean projection of the matrix's
-- inputs onto v (raw.direction_signs); NULL where no activations were measured,
-- and then only the neutral pole names hold.
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('directions', 'stg_compute__direction_tokens') }}") }}
{%- set runs = incremental_runs('directions', 'stg_compute__direction_tokens', is_incremental()) -%}
select
    t.run_id || '|' || t.tensor || '|' || t.kind || '|' || coalesce(t.direction, 0)
        || '|' || t.pole || '|' || t.rank as token_key,
    t.run_id,
    t.pair,
    t.tensor,
    loads.run_finished_at,
    t.layer,
    t.module,
    t.kind,
    t.direction,
    t.singular_value,
    t.pole,
    case
        when signs.effect_sign is null or signs.effect_sign = 0 then null
        when (t.pole = '+u') = (signs.effect_sign > 0) then 'promoted'
        else 'demoted'
    end as effect,
    signs.mean_projection,
    t.rank,
    t.token_id,
    t.token,
    t.score,
from {{ ref('stg_compute__direction_tokens') }} as t
left join {{ ref('stg_compute__direction_signs') }} as signs
    on signs.run_id = t.run_id
    and signs.tensor = t.tensor
    and signs.direction = t.direction
left join ({{ run_loads('directions') }}) as loads on loads.run_id = t.run_id
where {{ run_filter(runs, 't.run_id') }}
