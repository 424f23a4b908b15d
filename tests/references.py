"""Independent references for the statistics the marts publish.

Nothing here reads the code under test: the Gavish-Donoho constants are derived from
the spiked-covariance model they come from (SciPy root finding and quadrature), the
t quantiles come from SciPy, and dbt macros are rendered from their files with plain
Jinja so their SQL can be evaluated on its own.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2
import numpy as np
from scipy import integrate, optimize

MACROS = Path(__file__).resolve().parent.parent / "dbt_project" / "macros"

# Gavish & Donoho (2014), "The optimal hard threshold for singular values is
# 4/sqrt(3)", abstract: square matrices, known noise 4/sqrt(3) ~ 2.309, unknown
# noise 2.858 * median(s).
PAPER_LAMBDA_SQUARE = 4 / np.sqrt(3)
PAPER_OMEGA_SQUARE = 2.858


def render_macro(name: str, *args: str) -> str:
    """The SQL that `{{ name(*args) }}` expands to, from dbt_project/macros/name.sql."""
    source = (MACROS / f"{name}.sql").read_text()
    call = ", ".join(repr(a) for a in args)
    return jinja2.Environment().from_string(f"{source}{{{{ {name}({call}) }}}}").render()


@cache
def gd_lambda(beta: float) -> float:
    """The optimal hard threshold for known noise, in units of sqrt(n) sigma, from the
    spiked model (m/n = beta <= 1, noise normalised to sigma = 1/sqrt(n)): a spike of
    strength x > beta^(1/4) shows as the singular value y(x) = sqrt((1+x^2)(beta+x^2))/x,
    its singular vectors with cosines c(x), c~(x) to the true ones. Keeping it costs
    y^2 - 2 x y c c~ more than dropping it, so the best threshold is y(x*) at the x*
    where y(x*) = 2 x* c(x*) c~(x*)."""
    def y(x):
        return np.sqrt((1 + x * x) * (beta + x * x)) / x

    def cc(x):  # c(x) * c~(x)
        x4 = x ** 4
        return np.sqrt((x4 - beta) / (x4 + beta * x * x) * (x4 - beta) / (x4 + x * x))

    x_star = optimize.brentq(lambda x: y(x) - 2 * x * cc(x), beta ** 0.25 * (1 + 1e-12),
                             1e3, xtol=1e-15)
    return float(y(x_star))


@cache
def mp_median(beta: float) -> float:
    """The median of the Marchenko-Pastur law of ratio beta (variance 1): the t with
    half the mass of sqrt((b+ - t)(t - b-)) / (2 pi beta t) on [b-, b+] below it."""
    lo, hi = (1 - np.sqrt(beta)) ** 2, (1 + np.sqrt(beta)) ** 2

    def density(t):
        return np.sqrt(max((hi - t) * (t - lo), 0.0)) / (2 * np.pi * beta * t)

    def below(x):
        return integrate.quad(density, lo, x, epsabs=1e-13, epsrel=1e-13)[0] - 0.5

    return float(optimize.brentq(below, lo, hi, xtol=1e-14))


def gd_omega(beta: float) -> float:
    """The unknown-noise coefficient: lambda(beta) / sqrt(median of Marchenko-Pastur),
    since the median singular value of noise is sqrt(n mp_median) sigma."""
    return gd_lambda(beta) / np.sqrt(mp_median(beta))
