{#-
    One row per (run, tensor, role) of a run with --traps: WeightWatcher's
    correlation traps of W_base and W_sft (raw.random_spectra: W's entries shuffled,
    the MP bulk of that randomised ESD and the eigenvalues above it), beside the
    matrix's own ESD (int_esd_fits) and W_sft's change of the count against
    W_base. Built per run (macros/incremental_by_run.sql), as fct_matrix_esd is.
-#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('spectra', 'stg_compute__random_spectra') }}") }}
{%- set runs = incremental_runs('spectra', 'stg_compute__random_spectra',
                                is_incremental()) -%}

with

shuffled as (

    select * from {{ ref('stg_compute__random_spectra') }} where {{ run_filter(runs) }}

),

fits as (

    select run_id, tensor, role, lambda_max, mp_bulk_max, mp_n_spikes, alpha,
           run_finished_at
    from {{ ref('int_esd_fits') }}

),

loads as (

    {{ run_loads('spectra') }}

),

base as (

    select run_id, tensor, n_traps from shuffled where role = 'base'

),

final as (

    select
        -- keys
        s.run_id || '|' || s.tensor || '|' || s.role as matrix_key,
        s.run_id,
        s.pair,
        s.tensor,
        s.role,
        l.run_finished_at,

        -- what the matrix is
        s.layer,
        s.module,
        s.expert,
        s.part,
        s.n_rows,
        s.n_cols,

        -- the shuffles
        s.seed,
        s.n_replicas,

        -- the randomised ESD and its traps
        s.rand_lambda_max,
        s.rand_mp_sigma,
        s.rand_bulk_max,
        s.n_traps,
        s.n_traps > 0 as has_traps,
        s.rand_mp_softrank,

        -- against W's own ESD
        f.lambda_max,
        f.mp_bulk_max,
        f.mp_n_spikes,
        f.alpha,
        s.rand_distance,
        s.ww_softrank,
        s.ww_maxdist,

        -- W_sft against W_base
        case when s.role = 'sft' then s.n_traps - b.n_traps end as n_traps_change,

    from shuffled as s
    left join fits as f using (run_id, tensor, role)
    left join loads as l on l.run_id = s.run_id
    left join base as b on b.run_id = s.run_id and b.tensor = s.tensor

)

select * from final
