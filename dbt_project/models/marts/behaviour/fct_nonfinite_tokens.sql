with

posts as (

    select * from {{ ref('stg_compute__post_texts') }}

),

bad as (

    select * from {{ ref('int_nonfinite_posts') }}

),

final as (

    select
        -- keys
        posts.pair,
        posts.run_id,

        -- what was scored, and what the behaviour marts leave out
        count(*) as n_posts,
        count(bad.post_id) as n_posts_left_out,
        coalesce(sum(bad.n_nonfinite_base), 0)::bigint as n_tokens_nonfinite_base,
        coalesce(sum(bad.n_nonfinite_sft), 0)::bigint as n_tokens_nonfinite_sft,

    from posts
    left join bad
        on posts.run_id = bad.run_id
        and posts.post_id = bad.post_id
    group by all

)

select * from final
