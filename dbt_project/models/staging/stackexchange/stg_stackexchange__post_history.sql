with

source as (

    select * from {{ source('stackexchange', 'se_post_history') }}

),

renamed as (

    select
        site,
        id as post_history_id,
        post_history_type_id,
        post_id,
        revision_guid,
        creation_date,
        user_id,
        user_display_name,
        comment,
        text,
        content_license,
        extra,

    from source

)

select * from renamed
