{#-
    One row per (run, tensor, role): the spectrum's measures, and for dW
    (role = 'delta') its size and rank relative to W_base. Built per run
    (macros/incremental_by_run.sql).
-#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('spectra', 'stg_compute__spectra') }}") }}
{%- set runs = incremental_runs('spectra', 'stg_compute__spectra', is_incremental()) -%}
{%- set rank_notions = ['stable_rank', 'effective_rank', 'numerical_rank',
                        'energy_rank_50', 'energy_rank_90', 'energy_rank_99'] -%}

with

stats as (

    select * from {{ ref('int_spectrum_stats') }} where {{ run_filter(runs) }}

),

base as (

    select * from stats where role = 'base'

),

-- where the matrix sits in a layout beyond one-tensor-one-matrix (compute.naming)
layout as (

    select run_id, tensor, role, expert, part, source_tensor
    from {{ ref('stg_compute__spectra') }}
    where {{ run_filter(runs) }}

),

final as (

    select
        -- keys
        s.run_id || '|' || s.tensor || '|' || s.role as matrix_key,
        s.run_id,
        s.pair,
        s.tensor,
        s.role,
        s.run_finished_at,

        -- what the matrix is
        s.layer,
        s.module,
        l.expert,
        l.part,
        l.source_tensor,
        s.n_rows,
        s.n_cols,
        s.n_short,
        s.storage_dtype,

        -- the spectrum
        s.n_values,
        s.s_max,
        s.s_min,
        s.frobenius_norm,
        s.stable_rank,
        s.effective_rank,
        s.numerical_rank,
        s.energy_rank_50,
        s.energy_rank_90,
        s.energy_rank_99,
        s.n_nonfinite,
        s.unchanged,

        -- dW only: noise-aware ranks
        s.noise_sigma,
        s.mp_edge,
        s.gd_threshold,
        s.mp_edge_rank,
        s.signal_rank,
        case when s.role = 'delta' then s.gd_unknown_rank end as gd_unknown_rank,
        case when s.role = 'delta' then s.gd_unknown_threshold end
            as gd_unknown_threshold,
        case when s.role = 'delta' then s.n_zero::double / (s.n_rows * s.n_cols) end
            as zero_fraction,

        -- dW only: change relative to W_base
        case when s.role = 'delta' then s.frobenius_norm / nullif(b.frobenius_norm, 0) end
            as relative_frobenius_change,
        case when s.role = 'delta' then s.s_max / nullif(b.s_max, 0) end
            as relative_spectral_change,
        {%- for r in rank_notions %}
        case when s.role = 'delta' then s.{{ r }}::double / nullif(b.{{ r }}, 0) end
            as relative_{{ r }},
        {%- endfor %}
        case when s.role = 'delta' then s.signal_rank::double / nullif(b.numerical_rank, 0) end
            as relative_signal_rank,

    from stats as s
    left join base as b using (run_id, tensor)
    left join layout as l
        on l.run_id = s.run_id and l.tensor = s.tensor and l.role = s.role

)

select * from final
