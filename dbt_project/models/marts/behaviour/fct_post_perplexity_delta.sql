with

post_perplexity as (

    select * from {{ ref('fct_post_perplexity') }}

),

base as (

    select * from post_perplexity where role = 'base'

),

sft as (

    select * from post_perplexity where role = 'sft'

),

final as (

    select
        -- keys
        base.run_id || '|' || base.post_id as post_key,
        base.run_id,
        base.pair,
        base.post_id,

        -- the post
        base.site,
        base.grp,
        base.post_type,
        base.in_training,
        base.n_tokens,
        base.n_bytes,

        -- each model
        base.perplexity as perplexity_base,
        sft.perplexity as perplexity_sft,
        base.mean_logprob as mean_logprob_base,
        sft.mean_logprob as mean_logprob_sft,
        base.bits_per_byte as bits_per_byte_base,
        sft.bits_per_byte as bits_per_byte_sft,

        -- SFT minus base
        sft.perplexity - base.perplexity as delta_perplexity,
        sft.perplexity / base.perplexity as perplexity_ratio,
        sft.mean_logprob - base.mean_logprob as delta_mean_logprob,
        sft.sum_logprob - base.sum_logprob as delta_sum_logprob,
        sft.bits_per_byte - base.bits_per_byte as delta_bits_per_byte,

    from base
    inner join sft
        on base.run_id = sft.run_id
        and base.pair = sft.pair
        and base.post_id = sft.post_id

)

select * from final
