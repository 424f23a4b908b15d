{#-
    The rows of `relation` at every level of `dims`: as they are, and with each
    subset of the dimensions replaced by 'all' (for ['grp', 'post_type']: by group
    and type, by group over every type, by type over every group, and every post).
    Aggregate the result grouping by the dimensions.
-#}
{% macro all_levels(relation, dims) %}
    {%- set n = dims | length -%}
    {%- for mask in range(2 ** n) %}
    select * {%- set ns = namespace(parts=[]) -%}
    {%- for d in dims -%}
        {%- if (mask // (2 ** loop.index0)) % 2 == 1 -%}
            {%- set ns.parts = ns.parts + ["'all' as " ~ d] -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if ns.parts %} replace ({{ ns.parts | join(', ') }}){% endif %}
    from {{ relation }}
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}
{% endmacro %}

{#- `relation`'s rows with a NULL post type read as '(unknown)' (a subquery). -#}
{% macro typed(relation) -%}
(select * replace (coalesce(post_type, '(unknown)') as post_type) from {{ relation }})
{%- endmacro %}
