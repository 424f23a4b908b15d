with

source as (

    select * from {{ source('stackexchange', 'se_users') }}

),

renamed as (

    select
        site,
        id as user_id,
        reputation,
        creation_date,
        display_name,
        last_access_date,
        website_url,
        location,
        about_me,
        views,
        up_votes,
        down_votes,
        profile_image_url,
        email_hash,
        account_id,
        age,
        extra,

    from source

)

select * from renamed
