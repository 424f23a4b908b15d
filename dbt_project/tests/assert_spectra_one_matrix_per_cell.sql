-- raw.spectra's key is (run, tensor, role), and no two matrices of a run share a
-- heatmap cell (layer, module) unless their expert tells them apart.
with per_key as (
    select run_id, tensor, role, count(*) as n
    from {{ ref('stg_compute__spectra') }}
    group by all
    having count(*) > 1
),

per_cell as (
    select run_id, layer, module, expert, role, count(*) as n
    from {{ ref('stg_compute__spectra') }}
    where layer is not null
    group by all
    having count(*) > 1
)

select 'key' as what, run_id, tensor as detail, n from per_key
union all
select 'cell', run_id, layer || '|' || module || '|' || coalesce(expert::varchar, '-'), n
from per_cell
