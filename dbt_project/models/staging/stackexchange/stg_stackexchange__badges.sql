with

source as (

    select * from {{ source('stackexchange', 'se_badges') }}

),

renamed as (

    select
        site,
        id as badge_id,
        user_id,
        name,
        date,
        class,
        tag_based,
        extra,

    from source

)

select * from renamed
