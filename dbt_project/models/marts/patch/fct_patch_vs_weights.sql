{#-
    One row per (patch run, grouping, weight measure, behavioural share, prompt
    group, post type): does the size of a group's weight change predict how much of
    the behaviour it carries? Spearman's rank correlation over the groups (those
    with the weight measure: not the 1-D group) between dW_G's relative Frobenius
    change, signal rank or intruder count (intermediate.int_patch_group_weights)
    and the add share or the revert share (marts.fct_patch_ranking). Ties take
    their average rank; rho is Pearson's correlation of the ranks (NULL when one
    side is the same for every group).

    The null is rho = 0 (no monotone relation between weight change and behaviour).
    The 95% interval is Fisher's z with the standard error sqrt(1.06 / (n - 3)) of
    Fieller, Hartley and Pearson (1957) for Spearman's rho: tanh(atanh(rho) +-
    1.96 se); n <= 3 groups: no interval. excludes_null: the interval misses 0.
-#}

with

ranking as (

    select * from {{ ref('fct_patch_ranking') }}

),

long as (

    select
        r.run_id, r.pair, r.patch_by, r.grp, r.post_type, r.patch_group,
        m.weight_measure, b.behaviour_share,
        case m.weight_measure
            when 'relative_frobenius_change' then r.relative_frobenius_change
            when 'signal_rank' then r.signal_rank::double
            else r.n_intruders::double
        end as x,
        case b.behaviour_share when 'add' then r.add_share else r.revert_share end
            as y,
    from ranking as r
    cross join (values ('relative_frobenius_change'), ('signal_rank'),
                       ('n_intruders')) as m(weight_measure)
    cross join (values ('add'), ('revert')) as b(behaviour_share)

),

present as (

    select * from long where x is not null and y is not null

),

ranked as (

    select
        *,
        (rank() over w_x + count(*) over (w_x range between unbounded preceding
                                           and current row)) / 2.0 as rank_x,
        (rank() over w_y + count(*) over (w_y range between unbounded preceding
                                           and current row)) / 2.0 as rank_y,
    from present
    window
        w_x as (partition by run_id, patch_by, grp, post_type, weight_measure,
                behaviour_share order by x),
        w_y as (partition by run_id, patch_by, grp, post_type, weight_measure,
                behaviour_share order by y)

),

rho as (

    select
        run_id, pair, patch_by, grp, post_type, weight_measure, behaviour_share,
        count(*) as n_groups,
        -- one side constant over the groups (every group 0 intruders): no rho
        case when var_pop(rank_x) > 0 and var_pop(rank_y) > 0
            then corr(rank_x, rank_y) end as spearman_rho,
        arg_max(patch_group, x) as largest_change_group,
        arg_max(patch_group, y) as largest_share_group,
    from ranked
    group by all

),

final as (

    select
        -- keys
        run_id || '|' || patch_by || '|' || weight_measure || '|' || behaviour_share
            || '|' || grp || '|' || post_type as patch_vs_weights_key,
        run_id,
        pair,
        patch_by,
        weight_measure,
        behaviour_share,
        grp,
        post_type,
        n_groups,
        spearman_rho,
        0.0 as null_rho,
        case when n_groups > 3 and abs(spearman_rho) < 1 then tanh(
            atanh(spearman_rho) - 1.959963984540054 * sqrt(1.06 / (n_groups - 3)))
        end as ci95_low_rho,
        case when n_groups > 3 and abs(spearman_rho) < 1 then tanh(
            atanh(spearman_rho) + 1.959963984540054 * sqrt(1.06 / (n_groups - 3)))
        end as ci95_high_rho,
        largest_change_group,
        largest_share_group,
    from rho

)

select
    *,
    ci95_low_rho > 0 or ci95_high_rho < 0 as excludes_null,
from final
