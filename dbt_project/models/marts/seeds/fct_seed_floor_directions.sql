{#-
    One row per (seed floor, matrix, side, k): do two fine-tunes of one base with
    different seeds (A: `run_id`, B: `other_run_id`) change it along the same top
    singular directions? share = ||P_k^T Q_k||_F^2 / k over dW_A's and dW_B's top-k
    singular vectors on that side (the mean squared cosine of their principal
    angles; 1 = the same subspace), against chance_share = k / span_dim, what two
    random k-dimensional subspaces of the space W_base spans on that side share on
    average (chance_informative false where k reaches span_dim). Only floors whose
    two runs are still loaded (a recomputed pair's earlier run drops out).
-#}

with

overlap as (

    select * from {{ ref('stg_compute__seed_direction_overlap') }}

),

loaded as (

    select distinct run_id from {{ ref('stg_compute__compute_runs') }}
    where kind = 'directions'

),

final as (

    select
        -- keys
        run_id || '|' || other_run_id || '|' || tensor || '|' || side || '|' || k
            as floor_direction_key,
        run_id,
        other_run_id,
        pair,
        other_pair,
        tensor,
        layer,
        module,
        side,
        k,

        -- the overlap of the two fine-tunes' top-k subspaces, and chance
        share,
        coalesce(span_dim, dim) as span_dim,
        k / coalesce(span_dim, dim) as chance_share,
        k < coalesce(span_dim, dim) as chance_informative,
        share / nullif(k / coalesce(span_dim, dim), 0) as enrichment,

        -- principal angles between the two subspaces (cosines largest first)
        cosines,
        list_min(cosines) as min_cos,
        degrees(acos(least(list_min(cosines), 1.0))) as largest_angle_deg,

    from overlap
    where run_id in (select run_id from loaded)
        and other_run_id in (select run_id from loaded)

)

select * from final
