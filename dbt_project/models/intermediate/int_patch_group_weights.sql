{#-
    One row per (pair, grouping, patch group): the size of dW_G from the weights
    marts, grouped as python -m compute.patch groups tensors (compute.attribution.
    groups): the embeddings and the LM head are the group 'embeddings'; otherwise
    by tensor (its checkpoint name), module, layer ('layer i') or layer_module
    ('i.module'). relative_frobenius_change = sqrt(sum ||dW||_F^2 / sum
    ||W_base||_F^2) over the group's matrices; signal_rank the sum of their
    noise-aware ranks; n_intruders the sum of their intruder dimensions among W_sft's
    top min(10, K) left singular vectors at epsilon 0.5, beside what the null
    expects (NULL where the pair's run computed no directions). The spectra run is
    the pair's (marts.dim_pairs). The 1-D group has no matrices: no row. A fused
    projection (qkv_proj, gate_up_proj) counts once, whole, as compute.patch patches
    it: its q/k/v or gate/up parts (rows of the same matrix) are left out.
-#}

with

pairs as (

    select pair, spectra_run_id as run_id from {{ ref('dim_pairs') }}

),

delta as (

    select m.*
    from {{ ref('fct_matrix_metrics') }} as m
    inner join pairs as p using (pair, run_id)
    where m.role = 'delta' and m.part is null

),

base as (

    select m.run_id, m.tensor, m.frobenius_norm as base_norm
    from {{ ref('fct_matrix_metrics') }} as m
    inner join pairs as p using (pair, run_id)
    where m.role = 'base'

),

intruder_k as (

    select run_id, tensor, min(k) as k
    from {{ ref('fct_intruder_counts') }}
    group by all

),

intruders as (

    select i.run_id, i.tensor, i.n_intruders, i.null_expected
    from {{ ref('fct_intruder_counts') }} as i
    inner join intruder_k using (run_id, tensor, k)
    where i.epsilon = 0.5

),

matrices as (

    select
        d.pair,
        coalesce(d.source_tensor, d.tensor) as source_tensor,
        d.layer,
        d.module,
        d.frobenius_norm ^ 2 as delta_sq,
        b.base_norm ^ 2 as base_sq,
        d.signal_rank,
        i.n_intruders,
        i.null_expected,
    from delta as d
    left join base as b using (run_id, tensor)
    left join intruders as i using (run_id, tensor)

),

grouped as (

    select
        m.*,
        g.patch_by,
        case
            when m.module in ('embed_tokens', 'wte', 'word_embeddings', 'lm_head')
                then 'embeddings'
            when g.patch_by = 'tensor' then m.source_tensor
            when g.patch_by = 'module' or m.layer is null then m.module
            when g.patch_by = 'layer' then 'layer ' || m.layer
            else m.layer || '.' || m.module
        end as patch_group,
    from matrices as m
    cross join (values ('layer'), ('module'), ('layer_module'), ('tensor'))
        as g(patch_by)

),

final as (

    select
        pair,
        patch_by,
        patch_group,
        count(*) as n_matrices,
        sum(delta_sq) as delta_sq,
        sum(base_sq) as base_sq,
        sqrt(sum(delta_sq) / nullif(sum(base_sq), 0)) as relative_frobenius_change,
        sum(signal_rank) as signal_rank,
        sum(n_intruders) as n_intruders,
        sum(null_expected) as null_expected_intruders,
    from grouped
    group by all

)

select * from final
