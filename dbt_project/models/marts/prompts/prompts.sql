-- The prompt groups (the seed's selection): questions and answers of the prompt site
-- with >= prompt_min_chars characters of body text, outside the threads the demo
-- pair was trained on (var prompt_exclude_training), score <= prompt_low_max_score
-- ('low') or >= prompt_high_min_score ('high'), up to prompt_per_group per group,
-- sampled deterministically (md5 of prompt_seed and the post). This table is the
-- contract with compute/: `text` is exactly what a model scores.

with

candidates as (

    select * from {{ ref('prompt_candidates') }}

)

select
    site,
    cast(post_id as bigint) as post_id,
    post_type,
    grp,
    cast(score as integer) as score,
    title,
    text,
    n_chars,
    body_chars,
    parent_id,
    thread_id,
    in_demo_training,
    sample_rank,
    tags,
    creation_date,
from candidates
where is_selected
