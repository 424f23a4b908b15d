{#-
    One row per (seed floor, tensor): the seed-to-seed floor of the weight change.
    A floor is three pairs of one base (var seed_floors): `pair` = (base, SFT A),
    `other` = (base, SFT B), a second fine-tune with the same recipe and another
    seed, and `between` = (SFT A, SFT B). Per matrix the relative change
    ||dW||_F / ||W_base||_F of A and of B, and ||W_B - W_A||_F / ||W_A||_F: how far
    two fine-tunes that differ only in their seed land from each other, the figure
    any SFT-vs-base change is read against (floor_ratio = between / A: near 0, SFT
    moved the weights far more than its randomness does; near 1 or above, the
    change is of the size of the seed's).
-#}

with

metrics as (

    select * from {{ ref('fct_matrix_metrics') }} where role = 'delta'

),

floors as (

    {%- for f in var('seed_floors') %}
    select '{{ f.pair }}' as pair, '{{ f.other }}' as other_pair,
        '{{ f.between }}' as between_pair
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}

),

final as (

    select
        -- keys
        a.run_id || '|' || b.run_id || '|' || ab.run_id || '|' || a.tensor
            as floor_tensor_key,
        a.run_id,
        b.run_id as other_run_id,
        ab.run_id as between_run_id,
        floors.pair,
        floors.other_pair,
        floors.between_pair,
        a.tensor,
        a.layer,
        a.module,

        -- relative change of each fine-tune against the base, and between them
        a.relative_frobenius_change as relative_change_a,
        b.relative_frobenius_change as relative_change_b,
        ab.relative_frobenius_change as relative_change_between,
        ab.relative_frobenius_change / nullif(a.relative_frobenius_change, 0)
            as floor_ratio,

    from floors
    inner join metrics as a on a.pair = floors.pair
    inner join metrics as b on b.pair = floors.other_pair and b.tensor = a.tensor
    inner join metrics as ab on ab.pair = floors.between_pair and ab.tensor = a.tensor

)

select * from final
