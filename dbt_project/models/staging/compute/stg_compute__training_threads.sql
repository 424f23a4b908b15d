with

source as (

    select * from {{ source('compute', 'training_threads') }}

),

renamed as (

    select
        -- keys
        pair || '|' || site || '|' || thread_id as training_thread_key,
        pair,
        site,
        thread_id::bigint as thread_id,

    from source

)

select * from renamed
