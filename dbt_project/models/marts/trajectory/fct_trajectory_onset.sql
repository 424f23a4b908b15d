-- One row per (series, module type, layer): when the cell's change arrived. The
-- cell's relative change at a step is sqrt(sum ||dW||_F^2) / sqrt(sum ||W_base||_F^2)
-- over its matrices (one, or its experts); onset_50 / onset_90 = the first step whose
-- change reaches 50% / 90% of the change at the last step (the "final relative
-- change"; a series need not be monotone, so a later step may fall below it again).
-- NULL where the final change is 0 (the cell never changed).
with

weights as (

    select * from {{ ref('fct_trajectory_weights') }}

),

cells as (

    select
        trajectory,
        module,
        layer,
        coalesce(layer, -1) as layer_key,  -- embeddings and the head: no layer
        step,
        any_value(tokens_seen) as tokens_seen,
        sqrt(sum(delta_frobenius_norm ^ 2))
            / nullif(sqrt(sum(base_frobenius_norm ^ 2)), 0) as relative_change,
    from weights
    group by all

),

final_change as (

    select
        trajectory,
        module,
        any_value(layer) as layer,
        layer_key,
        arg_max(relative_change, step) as final_relative_change,
        max(step) as last_step,
        count(*) as n_steps,
    from cells
    group by trajectory, module, layer_key

),

onsets as (

    select
        c.trajectory,
        c.module,
        c.layer_key,
        min(c.step) filter (where c.relative_change >= 0.5 * f.final_relative_change)
            as onset_50_step,
        min(c.step) filter (where c.relative_change >= 0.9 * f.final_relative_change)
            as onset_90_step,
    from cells as c
    inner join final_change as f using (trajectory, module, layer_key)
    where f.final_relative_change > 0
    group by all

),

final as (

    select
        f.trajectory || '|' || f.module || '|' || f.layer_key as onset_key,
        f.trajectory,
        f.module,
        f.layer,
        f.n_steps,
        f.last_step,
        f.final_relative_change,
        o.onset_50_step,
        o.onset_90_step,
        t50.tokens_seen as onset_50_tokens_seen,
        t90.tokens_seen as onset_90_tokens_seen,
        o.onset_50_step / f.last_step as onset_50_fraction,
        o.onset_90_step / f.last_step as onset_90_fraction,
    from final_change as f
    left join onsets as o using (trajectory, module, layer_key)
    left join cells as t50
        on t50.trajectory = f.trajectory and t50.module = f.module
        and t50.layer_key = f.layer_key and t50.step = o.onset_50_step
    left join cells as t90
        on t90.trajectory = f.trajectory and t90.module = f.module
        and t90.layer_key = f.layer_key and t90.step = o.onset_90_step

)

select * from final
