{#- The standard error of a ratio estimator R = sum_i x_i / sum_i y_i over n units
    (posts), from ss = sum_i (x_i - R y_i)^2 and the mean of y: the linearised
    variance of a ratio of sums, se = sqrt(ss / (n (n - 1))) / |mean y| (Cochran
    1977, 6.9). NULL where mean y is 0. marts.fct_lora_recovery and
    fct_patch_effects give their shares a 95% t interval R +- t(n - 1) se. -#}
{% macro ratio_se(ss, n, mean_y) -%}
(sqrt(({{ ss }}) / (({{ n }}) * (({{ n }}) - 1))) / nullif(abs({{ mean_y }}), 0))
{%- endmacro %}
