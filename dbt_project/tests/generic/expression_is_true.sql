{% test expression_is_true(model, expression, where_clause="true", column_name=none) %}
{#- Rows for which `expression` is not true fail the test. -#}
select *
from {{ model }}
where ({{ where_clause }}) and not coalesce(({{ expression }}), false)
{% endtest %}
