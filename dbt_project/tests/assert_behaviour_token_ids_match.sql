-- Base and SFT scored the same token ids at every position of every post.
select base.run_id, base.pair, base.post_id, base.position
from {{ ref('stg_compute__token_logprobs') }} as base
left join {{ ref('stg_compute__token_logprobs') }} as sft
    on base.run_id = sft.run_id
    and base.pair = sft.pair
    and base.post_id = sft.post_id
    and base.position = sft.position
    and sft.role = 'sft'
where base.role = 'base'
    and (sft.token_id is null or sft.token_id <> base.token_id)
