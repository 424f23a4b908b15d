{#-
    The bootstrap draws of int_patch_bootstrap as weights: one row per (patch run,
    grouping, prompt group, post type; 'all' = every group / type, resample b, post
    drawn): how many of the cell's n draws of resample b fell on the post (the
    weights of a resample sum to n). Draw i of resample b is post number
    hash('seed|run|grouping|grp|type|b|i') mod n + 1, posts numbered by post_id
    (one string hashed, as intermediate.int_behaviour_bootstrap draws). The posts
    are the base model's rows, which every patched model of the run scores.
-#}
{{ config(materialized='table') }}
{%- set seed = var('bootstrap_seed', 6197) | int -%}
{%- set resamples = var('patch_bootstrap_resamples', 1000) | int -%}

with

posts as (

    select distinct run_id, patch_by, grp, post_type, post_id
    from {{ ref('int_patch_paired') }}

),

numbered as (

    select
        *,
        row_number() over (partition by run_id, patch_by, grp, post_type
                           order by post_id) as post_number,
        count(*) over (partition by run_id, patch_by, grp, post_type) as n_posts,
    from posts

),

cells as (

    select distinct run_id, patch_by, grp, post_type, n_posts from numbered

),

resamples as (

    select *, unnest(range(1, {{ resamples }} + 1)) as b from cells

),

draw_numbers as (

    select *, unnest(range(1, n_posts + 1)) as i from resamples

),

draws as (

    select
        run_id,
        patch_by,
        grp,
        post_type,
        b,
        (hash(concat_ws('|', {{ seed }}, run_id, patch_by, grp, post_type, b, i))
            % n_posts + 1)::bigint as post_number,
    from draw_numbers

),

final as (

    select
        d.run_id,
        d.patch_by,
        d.grp,
        d.post_type,
        d.b,
        n.post_id,
        n.n_posts,
        count(*) as weight,
    from draws as d
    inner join numbered as n using (run_id, patch_by, grp, post_type, post_number)
    group by all

)

select * from final
