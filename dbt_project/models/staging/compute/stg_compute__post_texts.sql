with

source as (

    select * from {{ source('compute', 'post_texts') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        post_id::bigint as post_id,

        -- where the post comes from
        site,
        grp,
        post_type,

        -- sizes
        n_tokens::integer as n_tokens,
        n_bytes::integer as n_bytes,
        n_words::integer as n_words,

    from source

)

select * from renamed
