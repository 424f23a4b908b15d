with

source as (

    select * from {{ source('stackexchange', 'se_tags') }}

),

renamed as (

    select
        site,
        id as tag_id,
        tag_name,
        count,
        excerpt_post_id,
        wiki_post_id,
        is_moderator_only,
        is_required,
        extra,

    from source

)

select * from renamed
