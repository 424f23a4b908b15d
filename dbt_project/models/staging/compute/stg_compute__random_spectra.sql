with

source as (

    select * from {{ source('compute', 'random_spectra') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        tensor,
        role,

        -- what the matrix is
        layer,
        module,
        expert,
        part,
        n_rows,
        n_cols,

        -- the shuffles
        seed,
        n_replicas,
        random_singular_values,

        -- the randomised ESD's MP fit and WeightWatcher's comparisons
        rand_lambda_max,
        rand_mp_sigma,
        rand_bulk_max,
        rand_bulk_min,
        n_traps,
        rand_mp_softrank,
        rand_distance,
        ww_softrank,
        ww_maxdist,
        seconds,

    from source

)

select * from renamed
