with

source as (

    select * from {{ source('stackexchange', 'se_post_links') }}

),

renamed as (

    select
        site,
        id as post_link_id,
        creation_date,
        post_id,
        related_post_id,
        link_type_id,
        extra,

    from source

)

select * from renamed
