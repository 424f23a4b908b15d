-- The score distribution of the prompt site's questions and answers: one row per
-- score, with how many posts are long enough and how many were selected.

with

candidates as (

    select * from {{ ref('prompt_candidates') }}

)

select
    site,
    score,
    coalesce(any_value(grp), 'between') as grp,
    count(*) as n_posts,
    count(*) filter (where is_long) as n_long,
    count(*) filter (where is_selected) as n_selected,
from candidates
group by site, score
