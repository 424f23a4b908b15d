with

source as (

    select * from {{ source('compute', 'compute_runs') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        kind,

        -- models
        base_model,
        sft_model,
        base_revision,
        sft_revision,
        n_layers::integer as n_layers,

        -- how
        code_version,
        device,
        dtype,
        method,
        options,
        started_at,
        finished_at,
        date_diff('second', started_at, finished_at) as wall_seconds,

    from source

)

select * from renamed
