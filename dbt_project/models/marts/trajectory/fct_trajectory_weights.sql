-- One row per (series, step, matrix): how far the checkpoint has moved from the
-- base (dW_t = W_t - W_base), how far it moved since the step before (the consecutive
-- difference W_t - W_{t-1} = dW_t - dW_{t-1}, measured as the dW of its own pair run:
-- the step before as the base; at the first step it is dW_1 itself), whether dW's
-- top singular subspaces settled (overlap with the step before's at
-- k = min(signal ranks), capped at the vectors computed) and W_sft's intruder
-- dimensions (k = min(10, K), epsilon 0.5; their null beside them).
with

steps as (

    select * from {{ ref('stg_compute__trajectory_steps') }}

),

metrics as (

    select * from {{ ref('fct_matrix_metrics') }}

),

overlap as (

    select * from {{ ref('stg_compute__trajectory_overlap') }}

),

intruders as (

    select pair, tensor, n_intruders, null_expected,
    from {{ ref('fct_intruder_counts') }}
    where epsilon = 0.5
    qualify k = min(k) over (partition by run_id, tensor)

),

step_matrices as (

    select
        steps.trajectory,
        steps.step,
        steps.position,
        steps.tokens_seen,
        steps.pair,
        coalesce(steps.diff_pair, steps.pair) as diff_pair,
        delta.tensor,
        delta.layer,
        delta.module,
        delta.expert,
        delta.part,
        delta.n_rows,
        delta.n_cols,
        base.frobenius_norm as base_frobenius_norm,
        delta.frobenius_norm as delta_frobenius_norm,
        delta.relative_frobenius_change,
        delta.relative_spectral_change,
        delta.signal_rank,
        delta.relative_signal_rank,
        delta.unchanged,
    from steps
    inner join metrics as delta
        on delta.pair = steps.pair and delta.role = 'delta'
    inner join metrics as base
        on base.pair = steps.pair and base.role = 'base'
        and base.tensor = delta.tensor

),

with_diff as (

    select
        m.*,
        d.frobenius_norm as step_diff_frobenius_norm,
        d.frobenius_norm / nullif(m.base_frobenius_norm, 0)
            as step_diff_relative_change,
        d.signal_rank as step_diff_signal_rank,
        lag(m.signal_rank) over (
            partition by m.trajectory, m.tensor order by m.step
        ) as prev_signal_rank,
    from step_matrices as m
    left join metrics as d
        on d.pair = m.diff_pair and d.role = 'delta' and d.tensor = m.tensor

),

overlap_k as (

    select trajectory, step, tensor, side, max(k) as k_max,
    from overlap
    group by all

),

picked as (

    select
        w.trajectory,
        w.step,
        w.tensor,
        o.side,
        o.share,
        o.random_share,
        o.k,
    from with_diff as w
    inner join overlap_k as ok using (trajectory, step, tensor)
    inner join overlap as o
        on o.trajectory = w.trajectory and o.step = w.step and o.tensor = w.tensor
        and o.side = ok.side
        and o.k = least(w.prev_signal_rank, w.signal_rank, ok.k_max)

),

final as (

    select
        w.trajectory || '|' || w.step || '|' || w.tensor as trajectory_matrix_key,
        w.trajectory,
        w.step,
        w.position,
        w.tokens_seen,
        w.pair,
        w.tensor,
        w.layer,
        w.module,
        w.expert,
        w.part,
        w.n_rows,
        w.n_cols,
        w.base_frobenius_norm,
        w.delta_frobenius_norm,
        w.relative_frobenius_change,
        w.relative_spectral_change,
        w.signal_rank,
        w.relative_signal_rank,
        w.unchanged,
        w.step_diff_frobenius_norm,
        w.step_diff_relative_change,
        w.step_diff_signal_rank,
        w.prev_signal_rank,
        l.k as overlap_k,
        l.share as overlap_left,
        r.share as overlap_right,
        l.random_share as overlap_left_random,
        r.random_share as overlap_right_random,
        i.n_intruders,
        i.null_expected as intruders_null_expected,
    from with_diff as w
    left join picked as l
        on l.trajectory = w.trajectory and l.step = w.step and l.tensor = w.tensor
        and l.side = 'left'
    left join picked as r
        on r.trajectory = w.trajectory and r.step = w.step and r.tensor = w.tensor
        and r.side = 'right'
    left join intruders as i
        on i.pair = w.pair and i.tensor = w.tensor

)

select * from final
