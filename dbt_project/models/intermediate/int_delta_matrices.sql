{#-
    One row per (run, dW): dW's measures beside W_base's, per matrix (an expert's,
    a part of a fused projection, or a plain one): what the heatmap grid and the
    per-expert mart aggregate or list.
-#}

with

metrics as (

    select * from {{ ref('fct_matrix_metrics') }}

),

delta as (

    select * from metrics where role = 'delta'

),

base as (

    select run_id, tensor, stable_rank, effective_rank, numerical_rank, s_max,
           frobenius_norm
    from metrics where role = 'base'

),

final as (

    select
        d.run_id,
        d.pair,
        d.tensor,
        d.source_tensor,
        d.layer,
        d.module,
        d.expert,
        d.part,
        d.n_rows,
        d.n_cols,

        -- how much dW changes W
        d.relative_frobenius_change,
        d.relative_spectral_change,

        -- rank of dW
        d.stable_rank as delta_stable_rank,
        d.effective_rank as delta_effective_rank,
        d.numerical_rank as delta_numerical_rank,
        d.energy_rank_90 as delta_energy_rank_90,
        d.signal_rank as delta_signal_rank,
        d.gd_unknown_rank as delta_gd_unknown_rank,

        -- rank of dW relative to W_base
        d.relative_stable_rank,
        d.relative_effective_rank,
        d.relative_numerical_rank,
        d.relative_energy_rank_90,
        d.relative_signal_rank,

        -- W_base itself
        b.stable_rank as base_stable_rank,
        b.effective_rank as base_effective_rank,
        b.s_max as base_s_max,
        d.s_max as delta_s_max,
        d.zero_fraction,
        d.unchanged,

    from delta as d
    inner join base as b using (run_id, tensor)

)

select * from final
