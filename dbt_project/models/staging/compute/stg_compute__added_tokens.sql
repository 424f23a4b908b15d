with

source as (

    select * from {{ source('compute', 'added_tokens') }}

),

renamed as (

    select
        -- keys
        run_id || '|' || tensor || '|' || token_id as added_token_key,
        run_id,
        pair,
        tensor,
        token_id::bigint as token_id,

        -- the row
        token,
        norm,

    from source

)

select * from renamed
