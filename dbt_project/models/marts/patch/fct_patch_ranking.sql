{#-
    One row per (patch run, grouping, group, prompt group, post type; 'all' = every
    group / type): what the group's dW carries of the SFT's behaviour, its rank
    among the groups, the interaction and the weight change beside it.

    add_share = the add's kl_share (W_base + dW_G alone), revert_share = 1 - the
    revert's kl_share (what is lost when only G goes back to the base); both from
    marts.fct_patch_effects, with their 95% intervals. The interaction of G,
    add_share - revert_share = 1 - sum_i (k_add,i + k_revert,i) / sum_i K_i, is 0
    when G's effect adds up with the rest's (add = 1 - revert); its interval is the
    same ratio estimator's over posts. sum_add_share is the sum of every group's
    add_share in the grouping (1 when the groups' effects add up; a sum above 1:
    the groups overlap in what they do, below 1: they need each other).
    rank_add / rank_revert: 1 = the largest share in the grouping (ties share a
    rank). relative_frobenius_change, signal_rank, n_intruders: dW_G's size
    (intermediate.int_patch_group_weights; NULL for the 1-D group).
-#}

with

effects as (

    select * from {{ ref('fct_patch_effects') }} where patch_rank is null

),

posts as (

    select * from {{ ref('stg_compute__patch_posts') }} where patch_rank is null

),

base_rows as (

    select run_id, patch_by, post_id, sum_kl_sft_model as big_k
    from posts where mode = 'base'

),

paired as (

    select
        a.run_id, a.patch_by, a.patch_group,
        coalesce(a.grp, '(none)') as grp,
        coalesce(a.post_type, '(unknown)') as post_type,
        a.sum_kl_sft_model + r.sum_kl_sft_model as k,
        b.big_k,
    from posts as a
    inner join posts as r
        on r.run_id = a.run_id and r.patch_by = a.patch_by
        and r.patch_group = a.patch_group and r.post_id = a.post_id
        and r.mode = 'revert'
    inner join base_rows as b
        on b.run_id = a.run_id and b.patch_by = a.patch_by and b.post_id = a.post_id
    where a.mode = 'add'

),

both_levels as (

    {{ all_levels('paired', ['grp', 'post_type']) }}

),

ratio as (

    select run_id, patch_by, patch_group, grp, post_type, count(*) as n,
        sum(k) / nullif(sum(big_k), 0) as q, avg(big_k) as mean_big_k,
    from both_levels
    group by all

),

interaction as (

    select
        r.run_id, r.patch_by, r.patch_group, r.grp, r.post_type,
        sum((b.k - r.q * b.big_k) ^ 2) as ss,
    from ratio as r
    inner join both_levels as b using (run_id, patch_by, patch_group, grp, post_type)
    where r.n > 1
    group by all

),

interaction_width as (

    select
        i.run_id, i.patch_by, i.patch_group, i.grp, i.post_type,
        1 - r.q as interaction,
        {{ t_critical_95('r.n - 1') }} * sqrt(i.ss / (r.n * (r.n - 1)))
            / nullif(r.mean_big_k, 0) as half_width,
    from interaction as i
    inner join ratio as r using (run_id, patch_by, patch_group, grp, post_type)

),

joined as (

    select
        a.run_id, a.pair, a.patch_by, a.patch_group, a.group_index, a.layer,
        a.module, a.grp, a.post_type, a.n_posts, a.n_tensors, a.n_params,
        a.frobenius_sq,
        a.kl_share as add_share,
        a.ci95_low_kl_share as ci95_low_add_share,
        a.ci95_high_kl_share as ci95_high_add_share,
        a.delta_share as add_delta_share,
        a.ci95_low_delta_share as ci95_low_add_delta_share,
        a.ci95_high_delta_share as ci95_high_add_delta_share,
        r.carried_share as revert_share,
        r.ci95_low_carried_share as ci95_low_revert_share,
        r.ci95_high_carried_share as ci95_high_revert_share,
        1 - r.delta_share as revert_delta_share,
        i.interaction,
        i.interaction - i.half_width as ci95_low_interaction,
        i.interaction + i.half_width as ci95_high_interaction,
    from effects as a
    inner join effects as r
        on r.run_id = a.run_id and r.patch_by = a.patch_by
        and r.patch_group = a.patch_group and r.grp = a.grp
        and r.post_type = a.post_type and r.mode = 'revert'
    left join interaction_width as i
        on i.run_id = a.run_id and i.patch_by = a.patch_by
        and i.patch_group = a.patch_group and i.grp = a.grp
        and i.post_type = a.post_type
    where a.mode = 'add'

),

final as (

    select
        -- keys
        j.run_id || '|' || j.patch_by || '|' || j.patch_group || '|' || j.grp || '|'
            || j.post_type as patch_rank_key,
        j.*,
        rank() over (partition by j.run_id, j.patch_by, j.grp, j.post_type
                     order by j.add_share desc nulls last) as rank_add,
        rank() over (partition by j.run_id, j.patch_by, j.grp, j.post_type
                     order by j.revert_share desc nulls last) as rank_revert,
        sum(j.add_share) over (partition by j.run_id, j.patch_by, j.grp, j.post_type)
            as sum_add_share,
        count(*) over (partition by j.run_id, j.patch_by, j.grp, j.post_type)
            as n_groups,

        -- dW_G's size (the weights marts)
        w.relative_frobenius_change,
        w.signal_rank,
        w.n_intruders,
        w.null_expected_intruders,

    from joined as j
    left join {{ ref('int_patch_group_weights') }} as w
        on w.pair = j.pair and w.patch_by = j.patch_by
        and w.patch_group = j.patch_group

)

select * from final
