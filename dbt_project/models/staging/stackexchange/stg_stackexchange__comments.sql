with

source as (

    select * from {{ source('stackexchange', 'se_comments') }}

),

renamed as (

    select
        site,
        id as comment_id,
        post_id,
        score,
        text,
        creation_date,
        user_display_name,
        user_id,
        content_license,
        extra,

    from source

)

select * from renamed
