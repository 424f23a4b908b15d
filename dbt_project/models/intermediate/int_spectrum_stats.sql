{#-
    One row per (run, tensor, role): every rank and size measure of one spectrum.
    Definitions: README "Metrics". The spectrum is unnested once (one row per
    singular value, with running energy) and aggregated back.

    An all-zero matrix (an unchanged dW: frozen modules, an adapter's untouched
    matrices) has no distribution of singular values: its effective rank, energy
    ranks and energy shares are NULL, its counted ranks (numerical, signal, MP
    edge, unknown-noise) 0, and a dW of them is flagged `unchanged`. The noise-aware
    thresholds never go below the numerical tolerance: with sigma = 0 (an adapter's
    dW, never rounded) the signal rank is the numerical rank.

    A table built per run (macros/incremental_by_run.sql): the spectra are unnested
    once, for the runs loaded since the last build, and the marts read it.
-#}
{{ config(materialized='incremental', incremental_strategy='delete+insert',
          unique_key='run_id', on_schema_change='fail',
          pre_hook="{{ delete_replaced_runs('spectra', 'stg_compute__spectra') }}") }}
{%- set lora_ranks = [1, 4, 8, 16, 32, 64, 128, 256] -%}
{%- set runs = incremental_runs('spectra', 'stg_compute__spectra', is_incremental()) -%}

with

spectra as (

    select * from {{ ref('stg_compute__spectra') }} where {{ run_filter(runs) }}

),

loads as (

    {{ run_loads('spectra') }}

),

thresholds as (

    select
        *,
        least(n_rows, n_cols)::double / greatest(n_rows, n_cols) as beta,
        singular_values[1] * n_long * 2 ^ -23 as numerical_tolerance,
        -- noise level sigma: the Marchenko-Pastur edge of pure noise ...
        case when noise_sigma is not null then greatest(
            noise_sigma * (sqrt(n_rows) + sqrt(n_cols)), numerical_tolerance) end
            as mp_edge,
        -- ... and the Gavish-Donoho optimal hard threshold for known noise (both
        -- at least the numerical tolerance: what the computation resolves)
        case when noise_sigma is not null then greatest(sqrt(
            2 * (beta + 1)
            + 8 * beta / ((beta + 1) + sqrt(beta * beta + 14 * beta + 1))
        ) * sqrt(n_long) * noise_sigma, numerical_tolerance) end as gd_threshold,
        -- Gavish-Donoho for unknown noise: omega(beta) * median(s)
        0.56 * beta ^ 3 - 0.95 * beta ^ 2 + 1.82 * beta + 1.43 as gd_omega,
        -- dW exactly zero: the fine-tune left this matrix alone
        coalesce(role = 'delta' and n_zero = n_rows::bigint * n_cols, false)
            as unchanged,

    from spectra

),

values_long as (

    select
        run_id,
        tensor,
        role,
        unnest(singular_values) as s,
        generate_subscripts(singular_values, 1) as i,

    from spectra

),

running as (

    select
        *,
        sum(s * s) over (
            partition by run_id, tensor, role order by i
            rows between unbounded preceding and current row
        ) as energy_upto,
        sum(s * s) over (partition by run_id, tensor, role) as energy_total,
        sum(s) over (partition by run_id, tensor, role) as s_total,
        median(s) over (partition by run_id, tensor, role) as s_median,

    from values_long

),

aggregated as (

    select
        r.run_id,
        r.tensor,
        r.role,
        max(r.s) as s_max,
        min(r.s) as s_min,
        max(r.s_total) as sum_s,
        max(r.energy_total) as sum_sq,
        max(r.s_median) as s_median,
        -- entropy of p_i = s_i / sum(s) (terms with p_i = 0 contribute 0)
        -sum(
            case when r.s > 0 then (r.s / r.s_total) * ln(r.s / r.s_total) else 0 end
        ) as spectral_entropy,
        count(*) filter (where r.s > t.numerical_tolerance) as numerical_rank,
        min(r.i) filter (where r.energy_upto >= 0.5 * r.energy_total) as energy_rank_50,
        min(r.i) filter (where r.energy_upto >= 0.9 * r.energy_total) as energy_rank_90,
        min(r.i) filter (where r.energy_upto >= 0.99 * r.energy_total) as energy_rank_99,
        count(*) filter (where r.s > t.mp_edge) as mp_edge_rank,
        count(*) filter (where r.s > t.gd_threshold) as signal_rank,
        count(*) filter (where r.s > t.gd_omega * r.s_median) as gd_unknown_rank,
        {%- for k in lora_ranks %}
        coalesce(max(r.energy_upto) filter (where r.i <= {{ k }}), 0)
            / nullif(max(r.energy_total), 0) as energy_share_top_{{ k }},
        {%- endfor %}

    from running as r
    inner join thresholds as t using (run_id, tensor, role)
    group by all

),

final as (

    select
        -- keys
        t.run_id,
        t.pair,
        t.tensor,
        t.role,
        loads.run_finished_at,

        -- what the matrix is
        t.layer,
        t.module,
        t.n_rows,
        t.n_cols,
        t.n_short,
        t.n_long,
        t.beta,
        t.storage_dtype,

        -- as stored
        t.n_values,
        t.frobenius_sq,
        t.n_zero,
        t.n_nonfinite,
        t.noise_sigma,
        t.mp_edge,
        t.gd_threshold,
        t.unchanged,

        -- from the spectrum
        a.s_max,
        a.s_min,
        a.s_median,
        a.sum_s,
        a.sum_sq,
        sqrt(a.sum_sq) as frobenius_norm,
        a.sum_sq / nullif(a.s_max * a.s_max, 0) as stable_rank,
        -- a zero matrix has no p_i = s_i / sum(s) and no energy to hold: NULL
        case when a.sum_s > 0 then exp(a.spectral_entropy) end as effective_rank,
        a.numerical_rank,
        case when a.sum_sq > 0 then a.energy_rank_50 end as energy_rank_50,
        case when a.sum_sq > 0 then a.energy_rank_90 end as energy_rank_90,
        case when a.sum_sq > 0 then a.energy_rank_99 end as energy_rank_99,
        -- noise-aware ranks: defined where the noise level is known (dW)
        case when t.noise_sigma is not null then a.mp_edge_rank end as mp_edge_rank,
        case when t.noise_sigma is not null then a.signal_rank end as signal_rank,
        t.gd_omega * a.s_median as gd_unknown_threshold,
        a.gd_unknown_rank,
        {%- for k in lora_ranks %}
        a.energy_share_top_{{ k }},
        {%- endfor %}

    from thresholds as t
    left join aggregated as a using (run_id, tensor, role)
    left join loads on loads.run_id = t.run_id

)

select * from final
