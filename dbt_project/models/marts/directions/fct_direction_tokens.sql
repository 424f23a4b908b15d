-- One row per (run, matrix, kind, direction, pole, rank): the tokens dW's top
-- residual-stream directions promote / demote, and the embedding rows that changed
-- most ("what does SFT's main direction in layer 20's MLP say?").
select
    run_id || '|' || tensor || '|' || kind || '|' || coalesce(direction, 0) || '|'
        || pole || '|' || rank as token_key,
    run_id,
    pair,
    tensor,
    layer,
    module,
    kind,
    direction,
    singular_value,
    pole,
    rank,
    token_id,
    token,
    score,
from {{ ref('stg_compute__direction_tokens') }}
