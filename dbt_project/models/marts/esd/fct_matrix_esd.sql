{#-
    One row per (run, tensor, role): WeightWatcher's ESD measures of W_base, W_sft
    and dW (int_esd_fits), with the SFT's change of alpha and of the spectral norm
    against W_base beside them (docs/esd.md). Built per run
    (macros/incremental_by_run.sql), as int_esd_fits is.
-#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('spectra', 'stg_compute__spectra') }}") }}
{%- set runs = incremental_runs('spectra', 'stg_compute__spectra', is_incremental()) -%}

with

fits as (

    select * from {{ ref('int_esd_fits') }} where {{ run_filter(runs) }}

),

base as (

    select run_id, tensor, alpha, alpha_weighted, log_spectral_norm, mp_n_spikes
    from fits where role = 'base'

),

final as (

    select
        -- keys
        f.run_id || '|' || f.tensor || '|' || f.role as matrix_key,
        f.run_id,
        f.pair,
        f.tensor,
        f.role,
        f.run_finished_at,

        -- what the matrix is
        f.layer,
        f.module,
        f.expert,
        f.part,
        f.n_rows,
        f.n_cols,

        -- the power-law fit of the ESD
        f.n_evals,
        f.n_fit,
        f.alpha,
        f.alpha_sigma,
        f.xmin,
        f.n_tail,
        f.ks_distance,
        -- WeightWatcher's reading of alpha: < 2 over-fitted, 2-6 well trained, > 6
        -- under-trained (its documentation)
        case
            when f.alpha is null then null
            when f.alpha < 2 then 'below 2'
            when f.alpha <= 6 then '2 to 6'
            else 'above 6'
        end as alpha_range,

        -- norms
        f.lambda_max,
        f.log_norm,
        f.log_spectral_norm,
        f.alpha_weighted,
        f.log_alpha_norm,

        -- the Marchenko-Pastur bulk
        f.mp_sigma,
        f.mp_bulk_min,
        f.mp_bulk_max,
        f.mp_n_spikes,
        f.mp_softrank,

        -- W_sft against W_base
        case when f.role = 'sft' then f.alpha - b.alpha end as alpha_change,
        case when f.role = 'sft' then f.alpha_weighted - b.alpha_weighted end
            as alpha_weighted_change,
        case when f.role = 'sft' then f.log_spectral_norm - b.log_spectral_norm end
            as log_spectral_norm_change,
        case when f.role = 'sft' then f.mp_n_spikes - b.mp_n_spikes end
            as mp_n_spikes_change,

    from fits as f
    left join base as b using (run_id, tensor)

)

select * from final
