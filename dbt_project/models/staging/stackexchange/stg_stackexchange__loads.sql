with

source as (

    select * from {{ source('stackexchange', 'se_loads') }}

),

renamed as (

    select
        site,
        table_name,
        source as source_file,
        rows_read,
        rows_loaded,
        rows_dropped_fabricated,
        rows_skipped,
        unknown_attributes,
        bytes,
        seconds,
        loaded_at,

    from source

)

select * from renamed
