with

source as (

    select * from {{ source('compute', 'residual_drift') }}

),

renamed as (

    select
        -- keys
        run_id,
        pair,
        post_id::bigint as post_id,
        layer::integer as layer,

        -- sums over the post's tokens
        n_tokens::integer as n_tokens,
        sum_rel_l2::double as sum_rel_l2,
        sum_cos::double as sum_cos,
        sum_sq_diff::double as sum_sq_diff,
        sum_sq_base::double as sum_sq_base,

    from source

)

select * from renamed
