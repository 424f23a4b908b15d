-- One row per (run, matrix, k, epsilon): intruder dimensions (Shuttleworth et al.
-- 2024) among W_sft's top-k left singular vectors, k = 10 (the paper's) and k = K
-- (all computed), for epsilon 0.1 ... 0.9; the null is the count expected of k
-- directions drawn uniformly within the space W_base spans (null_dim, its rank),
-- estimated from the matrix's K random draws. Where k >= null_dim, W_sft's top k
-- cannot all be new to that space and the null says nothing: null_informative false.
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('directions', 'stg_compute__intruders') }}") }}
{%- set runs = incremental_runs('directions', 'stg_compute__intruders', is_incremental()) -%}
with

intruders as (

    select * from {{ ref('stg_compute__intruders') }} where {{ run_filter(runs) }}

),

per_matrix as (

    select run_id, pair, tensor, layer, module, max(j) as n_vectors,
        max(null_dim) as null_dim,
    from intruders
    group by all

),

ks as (

    select distinct run_id, tensor, k,
    from per_matrix,
        unnest([least(10, n_vectors), n_vectors]) as t(k)

),

loads as (

    {{ run_loads('directions') }}

),

epsilons as (

    select round(e / 10, 1) as epsilon from range(1, 10) as t(e)

),

counted as (

    select
        i.run_id,
        i.tensor,
        ks.k,
        e.epsilon,
        count(*) filter (where i.j <= ks.k and i.max_cos < e.epsilon)
            as n_intruders,
        ks.k * avg((i.null_max_cos < e.epsilon)::integer) as null_expected,
        min(i.max_cos) filter (where i.j <= ks.k) as min_max_cos,
    from intruders as i
    inner join ks using (run_id, tensor)
    cross join epsilons as e
    group by i.run_id, i.tensor, ks.k, e.epsilon

)

select
    c.run_id || '|' || c.tensor || '|' || c.k || '|' || c.epsilon as intruder_key,
    c.run_id,
    m.pair,
    c.tensor,
    loads.run_finished_at,
    m.layer,
    m.module,
    c.k,
    c.epsilon,
    c.n_intruders,
    c.null_expected,
    m.null_dim,
    c.k < m.null_dim as null_informative,
    c.min_max_cos,
from counted as c
inner join per_matrix as m using (run_id, tensor)
left join loads on loads.run_id = c.run_id
