with

logprobs as (

    select * from {{ ref('stg_compute__token_logprobs') }}

),

final as (

    select
        -- keys
        run_id,
        pair,
        post_id,

        -- tokens whose logits were not finite, per model
        count(*) filter (where role = 'base') as n_nonfinite_base,
        count(*) filter (where role = 'sft') as n_nonfinite_sft,

    from logprobs
    where nonfinite
    group by all

)

select * from final
