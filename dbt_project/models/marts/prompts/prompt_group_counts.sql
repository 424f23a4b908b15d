-- How many candidates each group had, and how many were taken: one row per group
-- ('low', 'high', and 'between' for the scores in neither) of the prompt site.

with

candidates as (

    select * from {{ ref('prompt_candidates') }}

),

groups as (

    select
        site,
        coalesce(grp, 'between') as grp,
        count(*) as n_posts,
        count(*) filter (where is_long) as n_candidates,
        count(*) filter (where is_selected) as n_selected,
        count(*) filter (where is_selected and post_type = 'question')
            as n_selected_questions,
        count(*) filter (where is_selected and post_type = 'answer')
            as n_selected_answers,
        min(score) as min_score,
        max(score) as max_score,
        cast(median(n_chars) filter (where is_selected) as integer)
            as median_selected_chars,

    from candidates
    group by all

)

select
    *,
    {{ var('prompt_min_chars') }} as min_chars,
    {{ var('prompt_per_group') }} as per_group,
from groups
