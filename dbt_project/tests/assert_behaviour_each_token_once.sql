-- Every post's tokens are scored exactly once per model: positions 0 .. n_tokens - 1.
with per_post as (
    select run_id, pair, post_id, role,
        count(*) as n_rows,
        count(distinct position) as n_positions,
        min(position) as first_position,
        max(position) as last_position,
    from {{ ref('stg_compute__token_logprobs') }}
    group by all
)
select posts.*, per_post.role, per_post.n_rows
from {{ ref('stg_compute__post_texts') }} as posts
left join per_post
    on posts.run_id = per_post.run_id
    and posts.pair = per_post.pair
    and posts.post_id = per_post.post_id
where per_post.n_rows is null
    or per_post.n_rows <> posts.n_tokens
    or per_post.n_positions <> posts.n_tokens
    or per_post.first_position <> 0
    or per_post.last_position <> posts.n_tokens - 1
