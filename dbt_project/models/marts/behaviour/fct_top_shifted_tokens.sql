{%- set top_n = var('top_shifted_tokens', 50) -%}

with

shift as (

    select * from {{ ref('fct_token_shift') }}

),

posts as (

    select * from {{ ref('stg_compute__post_texts') }}

),

typed_tokens as (

    select
        shift.*,
        coalesce(posts.post_type, '(unknown)') as post_type,
    from shift
    left join posts
        on posts.run_id = shift.run_id
        and posts.post_id = shift.post_id

),

tokens as (

    -- every token at its post's type and under 'all' (the seed's groups: any type)
    {{ all_levels('typed_tokens', ['post_type']) }}

),

-- promoted: SFT's top-1 where the base ranks it below 3rd;
-- demoted: the base's top-1 where SFT ranks it below 3rd
shifted as (

    select run_id, pair, grp, post_type, 'promoted' as direction, top_id_sft as token_id,
        top_text_sft as token_text, kl_sft_base, post_id
    from tokens
    where rank_sft_top_in_base > 3

    union all

    select run_id, pair, grp, post_type, 'demoted', top_id_base, top_text_base, kl_sft_base,
        post_id
    from tokens
    where rank_base_top_in_sft > 3

),

per_token as (

    select
        run_id,
        pair,
        grp,
        post_type,
        direction,
        token_id,
        any_value(token_text) as token_text,
        count(*) as n_shifted,
        count(distinct post_id) as n_posts,
        sum(kl_sft_base) as kl_mass,

    from shifted
    group by all

),

ranked as (

    select
        *,
        n_shifted / sum(n_shifted) over w as share_of_shifted,
        kl_mass / nullif(sum(kl_mass) over w, 0) as share_of_kl_mass,
        row_number() over (partition by run_id, pair, grp, post_type, direction
                           order by n_shifted desc, kl_mass desc, token_id)
            as rank_by_count,
        row_number() over (partition by run_id, pair, grp, post_type, direction
                           order by kl_mass desc, n_shifted desc, token_id)
            as rank_by_kl_mass,

    from per_token
    window w as (partition by run_id, pair, grp, post_type, direction)

),

final as (

    select
        -- keys
        run_id || '|' || coalesce(grp, '') || '|' || post_type || '|' || direction
            || '|' || token_id as group_token_key,
        run_id,
        pair,
        grp,
        post_type,
        direction,
        token_id,
        token_text,

        -- how often and how strongly
        n_shifted,
        n_posts,
        share_of_shifted,
        kl_mass,
        share_of_kl_mass,
        kl_mass / n_shifted as mean_kl_sft_base,
        rank_by_count,
        rank_by_kl_mass,

    from ranked
    where rank_by_count <= {{ top_n }} or rank_by_kl_mass <= {{ top_n }}

)

select * from final
