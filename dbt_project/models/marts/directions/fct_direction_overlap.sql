-- One row per (run, matrix, side, r): how much of dW lies in W_base's top-r
-- singular subspace, against a random subspace of the same size.
select
    run_id || '|' || tensor || '|' || side || '|' || r as overlap_key,
    run_id,
    pair,
    tensor,
    layer,
    module,
    side,
    r,
    share,
    random_share,
    share / nullif(random_share, 0) as enrichment,
from {{ ref('stg_compute__direction_overlap') }}
