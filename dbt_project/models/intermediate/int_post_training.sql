{#- One row per (run, scored post): whether the pair was trained on the post's thread,
    where that is known: for a pair with rows in raw.training_threads (the demo
    pair: python -m ingest.training_log models/demo --pair demo) true or false when
    the post is a loaded Stack Exchange post; NULL otherwise (a pair whose training
    data the warehouse does not hold, or a post scored from a prompts file). -#}

with

scored as (

    select * from {{ ref('stg_compute__post_texts') }}

),

se_posts as (

    select site, post_id, coalesce(parent_id, post_id) as thread_id,
    from {{ ref('stg_stackexchange__posts') }}

),

training as (

    select * from {{ ref('stg_compute__training_threads') }}

),

known as (

    select distinct pair from training

)

select
    scored.run_id,
    scored.pair,
    scored.post_id,
    se_posts.thread_id,
    case
        when known.pair is not null and se_posts.post_id is not null
            then training.thread_id is not null
    end as in_training,
from scored
left join se_posts
    on se_posts.site = scored.site
    and se_posts.post_id = scored.post_id
left join known on known.pair = scored.pair
left join training
    on training.pair = scored.pair
    and training.site = se_posts.site
    and training.thread_id = se_posts.thread_id
