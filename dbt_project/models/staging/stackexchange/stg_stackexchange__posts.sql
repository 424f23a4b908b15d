with

source as (

    select * from {{ source('stackexchange', 'se_posts') }}

),

renamed as (

    select
        site,
        id as post_id,
        post_type_id,
        case post_type_id
            when 1 then 'question'
            when 2 then 'answer'
            when 3 then 'orphaned_tag_wiki'
            when 4 then 'tag_wiki_excerpt'
            when 5 then 'tag_wiki'
            when 6 then 'moderator_nomination'
            when 7 then 'wiki_placeholder'
            when 8 then 'privilege_wiki'
            else 'other'
        end as post_type,
        accepted_answer_id,
        parent_id,
        creation_date,
        deletion_date,
        score,
        view_count,
        body,
        owner_user_id,
        owner_display_name,
        last_editor_user_id,
        last_editor_display_name,
        last_edit_date,
        last_activity_date,
        title,
        tags_raw,
        answer_count,
        comment_count,
        favorite_count,
        closed_date,
        community_owned_date,
        content_license,
        tags,
        body_text,
        extra,

    from source

)

select * from renamed
