{#-
    One row per (patch run, grouping, group, model, prompt group, post type; 'all' =
    every group / type): how much of the SFT's behaviour a weight-patching model
    has (python -m compute.patch; docs/patch.md). Models: 'add' = W_base + dW_G
    (only G fine-tuned; with patch_rank r only the top-r singular part of dW_G) and
    'revert' = W_sft - dW_G (everything but G), each against the base as loaded.

    Per post i (sums over its tokens): k_i = KL(p_sft || p_model), K_i =
    KL(p_sft || p_base), d_i = lp_model - lp_base, D_i = lp_sft - lp_base.
    kl_share = 1 - sum k_i / sum K_i, the share of the base's KL from the SFT that
    the model removes (1: the SFT's predictions, 0: the base's); delta_share =
    sum d_i / sum D_i, the share of the SFT-minus-base log-prob delta. Both are
    ratio estimators over posts with 95% t intervals from the linearised variance
    se = sqrt(sum (x_i - R y_i)^2 / (n (n - 1))) / mean(y_i) (Cochran 1977, 6.9;
    macros/ratio_estimator.sql), as marts.fct_lora_recovery; beside them the
    paired bootstrap's 95% percentile intervals over posts (boot_*:
    intermediate.int_patch_bootstrap, every model of the run on the same
    resamples). carried_share is what G carries by this model: the add's
    kl_share, or 1 - the revert's (the behaviour lost without G).

    How far the model moved from the base as loaded, in units of the SFT's own move:
    moved_share = sum KL(p_base || p_model)_i / sum KL(p_base || p_sft)_i (0: the
    base's predictions; 1: as far from them as the SFT's), same interval. Beside
    kl_share it tells a change that moves the base toward the SFT (moved_share about
    kl_share) from one that moves it elsewhere (moved_share well above kl_share).
    NULL for rows scored before raw step 17 (no KL to the base stored).
-#}

with

both_levels as (

    select * from {{ ref('int_patch_paired') }}

),

models as (

    select * from {{ ref('stg_compute__patch_models') }}

),

bootstrap as (

    select * from {{ ref('int_patch_bootstrap') }}

),

ratios as (

    select
        run_id, pair, patch_by, patch_group, group_index, layer, module, mode,
        patch_rank, is_full, grp, post_type,
        count(*) as n_posts,
        sum(n_tokens) as n_tokens,
        sum(k) as sum_kl_sft_model,
        sum(big_k) as sum_kl_sft_base,
        case when sum(big_k) > 0 then sum(k) / sum(big_k) end as kl_ratio,
        avg(big_k) as mean_kl_sft_base,
        sum(d) as sum_delta_model,
        sum(big_d) as sum_delta_sft,
        case when sum(big_d) <> 0 then sum(d) / sum(big_d) end as delta_share,
        avg(big_d) as mean_delta_sft,
        sum(m) as sum_kl_base_model,
        sum(big_m) as sum_kl_base_sft,
        case when sum(big_m) > 0 then sum(m) / sum(big_m) end as moved_share,
        avg(big_m) as mean_kl_base_sft,
    from both_levels
    group by all

),

intervals as (

    select
        r.run_id, r.patch_by, r.patch_group, r.mode, r.patch_rank, r.grp,
        r.post_type,
        sum((b.k - r.kl_ratio * b.big_k) ^ 2) as ss_kl,
        sum((b.d - r.delta_share * b.big_d) ^ 2) as ss_delta,
        sum((b.m - r.moved_share * b.big_m) ^ 2) as ss_moved,
    from ratios as r
    inner join both_levels as b
        on b.run_id = r.run_id and b.patch_by = r.patch_by
        and b.patch_group = r.patch_group and b.mode = r.mode
        and b.patch_rank is not distinct from r.patch_rank
        and b.grp = r.grp and b.post_type = r.post_type
    where r.n_posts > 1
    group by all

),

errors as (

    select
        i.run_id, i.patch_by, i.patch_group, i.mode, i.patch_rank, i.grp,
        i.post_type,
        {{ ratio_se('i.ss_kl', 'r.n_posts', 'r.mean_kl_sft_base') }} as se_kl,
        {{ ratio_se('i.ss_delta', 'r.n_posts', 'r.mean_delta_sft') }} as se_delta,
        {{ ratio_se('i.ss_moved', 'r.n_posts', 'r.mean_kl_base_sft') }} as se_moved,
        {{ t_critical_95('r.n_posts - 1') }} as t95,
    from intervals as i
    inner join ratios as r
        on r.run_id = i.run_id and r.patch_by = i.patch_by
        and r.patch_group = i.patch_group and r.mode = i.mode
        and r.patch_rank is not distinct from i.patch_rank
        and r.grp = i.grp and r.post_type = i.post_type

),

final as (

    select
        -- keys
        r.run_id || '|' || r.patch_by || '|' || r.patch_group || '|' || r.mode || '|'
            || coalesce(r.patch_rank::varchar, 'full') || '|' || r.grp || '|'
            || r.post_type as patch_effect_key,
        r.run_id,
        r.pair,
        r.patch_by,
        r.patch_group,
        r.group_index,
        r.layer,
        r.module,
        r.mode,
        r.patch_rank,
        r.is_full,
        r.grp,
        r.post_type,
        r.n_posts,
        r.n_tokens,

        -- the weights the model changes
        m.n_tensors,
        m.n_params,
        m.frobenius_sq,
        m.retained_sq,
        m.retained_sq / nullif(m.frobenius_sq, 0) as energy_share,

        -- KL(p_sft || p_base) removed
        r.sum_kl_sft_model,
        r.sum_kl_sft_base,
        1 - r.kl_ratio as kl_share,
        1 - r.kl_ratio - i.t95 * i.se_kl as ci95_low_kl_share,
        1 - r.kl_ratio + i.t95 * i.se_kl as ci95_high_kl_share,

        -- the SFT-minus-base log-prob delta
        r.sum_delta_model,
        r.sum_delta_sft,
        r.delta_share,
        r.delta_share - i.t95 * i.se_delta as ci95_low_delta_share,
        r.delta_share + i.t95 * i.se_delta as ci95_high_delta_share,

        -- KL(p_base || p_model): how far from the base, in units of the SFT's move
        r.sum_kl_base_model,
        r.sum_kl_base_sft,
        r.sum_kl_base_model / nullif(r.n_tokens, 0) as kl_base_model_per_token,
        r.moved_share,
        r.moved_share - i.t95 * i.se_moved as ci95_low_moved_share,
        r.moved_share + i.t95 * i.se_moved as ci95_high_moved_share,

        -- what G carries by this model: add's share, 1 - revert's
        case when r.mode = 'add' then 1 - r.kl_ratio else r.kl_ratio end
            as carried_share,
        case when r.mode = 'add' then 1 - r.kl_ratio - i.t95 * i.se_kl
            else r.kl_ratio - i.t95 * i.se_kl end as ci95_low_carried_share,
        case when r.mode = 'add' then 1 - r.kl_ratio + i.t95 * i.se_kl
            else r.kl_ratio + i.t95 * i.se_kl end as ci95_high_carried_share,

        -- paired bootstrap over posts (intermediate.int_patch_bootstrap): 95%
        -- percentile intervals of the shares, every model on the same resamples
        bs.n_resamples as n_bootstrap_resamples,
        bs.boot_low_kl_share,
        bs.boot_high_kl_share,
        bs.boot_low_delta_share,
        bs.boot_high_delta_share,
        case when r.mode = 'add' then bs.boot_low_kl_share
            else 1 - bs.boot_high_kl_share end as boot_low_carried_share,
        case when r.mode = 'add' then bs.boot_high_kl_share
            else 1 - bs.boot_low_kl_share end as boot_high_carried_share,

        -- how it was scored
        m.device,
        m.dtype,
        m.window_tokens,
        m.seconds,
        m.merge_seconds,

    from ratios as r
    left join errors as i
        on i.run_id = r.run_id and i.patch_by = r.patch_by
        and i.patch_group = r.patch_group and i.mode = r.mode
        and i.patch_rank is not distinct from r.patch_rank
        and i.grp = r.grp and i.post_type = r.post_type
    left join models as m
        on m.run_id = r.run_id and m.patch_by = r.patch_by
        and m.patch_group = r.patch_group and m.mode = r.mode
        and m.patch_rank is not distinct from r.patch_rank
    left join bootstrap as bs
        on bs.run_id = r.run_id and bs.patch_by = r.patch_by
        and bs.patch_group = r.patch_group and bs.mode = r.mode
        and bs.patch_rank is not distinct from r.patch_rank
        and bs.grp = r.grp and bs.post_type = r.post_type

)

select * from final
