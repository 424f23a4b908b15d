-- Every question and answer of the prompt site, with its score group, its length,
-- whether a loaded pair was trained on its thread (raw.training_threads)
-- and the exact text a language model scores. `prompts` samples from here: long
-- posts, leaving out trained-on threads (var prompt_exclude_training, default true:
-- the demo scores held-out posts; a site no pair trained on loses nothing).
--
-- The site: var prompt_site when that site is loaded; otherwise the demo site
-- (var prompt_demo_site, default physics.demo) when that is loaded, so `make demo`
-- works without flags; otherwise no rows (prompt_group_counts then shows no site).

with

posts as (

    select * from {{ ref('stg_stackexchange__posts') }}

),

training_threads as (

    select distinct site, thread_id from {{ ref('stg_compute__training_threads') }}

),

loaded_sites as (

    select distinct site from posts

),

chosen_site as (

    select
        coalesce(
            max(site) filter (where site = '{{ var("prompt_site") }}'),
            max(site) filter (where site = '{{ var("prompt_demo_site", "physics.demo") }}')
        ) as site,

    from loaded_sites

),

questions_and_answers as (

    select
        posts.site,
        posts.post_id,
        posts.post_type,
        posts.parent_id,
        posts.score,
        posts.title,
        posts.body_text,
        posts.tags,
        posts.creation_date,
        -- the thread: a question's own id, an answer's question
        coalesce(posts.parent_id, posts.post_id) as thread_id,
        training_threads.thread_id is not null as in_demo_training,

        -- a question is scored as its title, a blank line, its body; an answer as
        -- its body alone (its question's title is not prepended)
        case
            when posts.post_type = 'question' and posts.title is not null
                then posts.title || chr(10) || chr(10) || posts.body_text
            else posts.body_text
        end as text,

    from posts
    inner join chosen_site on posts.site = chosen_site.site
    left join training_threads
        on training_threads.site = posts.site
        and training_threads.thread_id = coalesce(posts.parent_id, posts.post_id)
    where posts.post_type in ('question', 'answer')
        and posts.body_text is not null

),

grouped as (

    select
        *,
        cast(length(body_text) as integer) as body_chars,
        cast(length(text) as integer) as n_chars,
        length(body_text) >= {{ var('prompt_min_chars') }} as is_long,
        length(body_text) >= {{ var('prompt_min_chars') }}
            {%- if var('prompt_exclude_training') %} and not in_demo_training{% endif %}
            as is_eligible,
        case
            when score <= {{ var('prompt_low_max_score') }} then 'low'
            when score >= {{ var('prompt_high_min_score') }} then 'high'
        end as grp,
        -- deterministic pseudo-random order: depends only on the seed and the post
        md5('{{ var("prompt_seed") }}:' || site || ':' || post_id) as sample_key,

    from questions_and_answers

),

ranked as (

    select
        *,
        case
            when grp is not null and is_eligible then
                row_number() over (
                    partition by grp, is_eligible
                    order by sample_key, post_id
                )
        end as sample_rank,

    from grouped

)

select
    site,
    post_id,
    post_type,
    parent_id,
    grp,
    score,
    title,
    text,
    n_chars,
    body_chars,
    is_long,
    thread_id,
    in_demo_training,
    is_eligible,
    sample_rank,
    sample_rank is not null
        and sample_rank <= {{ var('prompt_per_group') }} as is_selected,
    tags,
    creation_date,
from ranked
