{#-
    One row per (seed floor, group, post type; 'all' = every group / type): how far
    apart the two fine-tunes' next-token distributions are, next to how far the
    fine-tune is from its base, on the same posts: KL(p_B || p_A) from the pair
    `between` (SFT A scored as its base, SFT B as its fine-tune) and KL(p_A ||
    p_base) from `pair`, token-weighted over the posts both scored. floor_ratio =
    KL(B || A) / KL(A || base): the share of the fine-tune's divergence from the
    base that a second fine-tune with another seed also shows from the first.
-#}

with

posts as (

    select * from {{ ref('fct_post_token_shift') }}

),

floors as (

    {%- for f in var('seed_floors') %}
    select '{{ f.pair }}' as pair, '{{ f.between }}' as between_pair
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}

),

paired as (

    select
        a.run_id,
        ab.run_id as between_run_id,
        floors.pair,
        floors.between_pair,
        a.post_id,
        coalesce(a.grp, '(none)') as grp,
        coalesce(a.post_type, '(unknown)') as post_type,
        a.n_scored,
        a.sum_kl_sft_base as kl_a_base,
        ab.sum_kl_sft_base as kl_b_a,
    from floors
    inner join posts as a on a.pair = floors.pair
    inner join posts as ab
        on ab.pair = floors.between_pair
        and ab.post_id = a.post_id
        and ab.n_scored = a.n_scored

),

levels as (

    {{ all_levels('paired', ['grp', 'post_type']) }}

),

final as (

    select
        -- keys
        run_id || '|' || between_run_id || '|' || grp || '|' || post_type
            as floor_group_key,
        run_id,
        between_run_id,
        pair,
        between_pair,
        grp,
        post_type,
        count(*) as n_posts,
        sum(n_scored) as n_tokens,

        -- token-weighted mean KL (nats)
        sum(kl_a_base) / sum(n_scored) as mean_kl_a_base,
        sum(kl_b_a) / sum(n_scored) as mean_kl_b_a,
        sum(kl_b_a) / nullif(sum(kl_a_base), 0) as floor_ratio,

    from levels
    group by all

)

select * from final
