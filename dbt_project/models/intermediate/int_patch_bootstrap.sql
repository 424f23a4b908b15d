{#-
    Paired bootstrap over posts of the weight-patching shares, one row per (patch
    run, grouping, model, prompt group, post type; 'all' = every group / type):
    resample b = 1 .. B draws the cell's n posts with replacement, draw i being post
    number hash('seed|run|grouping|grp|type|b|i') mod n + 1 (posts numbered by
    post_id), so every model of a run is resampled with the same draws (differences
    between groups are paired too) and a model's and the base's sums of a post
    travel together. On each resample kl_share = 1 - sum k / sum big_k and
    delta_share = sum d / sum big_d (intermediate.int_patch_paired); the interval is
    their 2.5% and 97.5% quantiles (linear interpolation: quantile_cont, NumPy's
    default). The draws, as weights (how many times each post is drawn), are
    intermediate.int_patch_resamples. B: var('patch_bootstrap_resamples', 1000);
    seed: var('bootstrap_seed'), as the behaviour marts'.
-#}
{%- set seed = var('bootstrap_seed', 6197) | int -%}
{%- set resamples = var('patch_bootstrap_resamples', 1000) | int -%}

with

paired as (

    select * from {{ ref('int_patch_paired') }}

),

weights as (

    select * from {{ ref('int_patch_resamples') }}

),

sums as (

    select
        p.run_id,
        p.patch_by,
        p.patch_group,
        p.mode,
        p.patch_rank,
        p.grp,
        p.post_type,
        w.b,
        sum(w.weight * p.k) as k,
        sum(w.weight * p.big_k) as big_k,
        sum(w.weight * p.d) as d,
        sum(w.weight * p.big_d) as big_d,
    from paired as p
    inner join weights as w
        on w.run_id = p.run_id and w.patch_by = p.patch_by and w.grp = p.grp
        and w.post_type = p.post_type and w.post_id = p.post_id
    group by all

),

final as (

    select
        run_id,
        patch_by,
        patch_group,
        mode,
        patch_rank,
        grp,
        post_type,
        count(*) as n_resamples,
        quantile_cont(1 - k / nullif(big_k, 0), 0.025) as boot_low_kl_share,
        quantile_cont(1 - k / nullif(big_k, 0), 0.975) as boot_high_kl_share,
        quantile_cont(d / nullif(big_d, 0), 0.025) as boot_low_delta_share,
        quantile_cont(d / nullif(big_d, 0), 0.975) as boot_high_delta_share,
        {{ seed }} as seed,
    from sums
    group by all

)

select * from final
