with

source as (

    select * from {{ source('stackexchange', 'se_votes') }}

),

renamed as (

    select
        site,
        id as vote_id,
        post_id,
        vote_type_id,
        user_id,
        cast(creation_date as date) as vote_date,
        bounty_amount,
        extra,

    from source

)

select * from renamed
