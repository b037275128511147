"""Infinite-width theory: DMFT predictions to set against simulations.

``one_bulk(config, data)`` solves the exactly solvable one-bulk model of
docs/theory.md, One-bulk model (loss, beta_f, normalized sharpness, outlier singular
values of the hidden matrix and the naive BGN baseline); ``one_bulk_finite``
runs the same recursion on the modes of one finite network.
``deep_linear(config, data)`` is the exact DMFT of deep linear networks
(depth >= 2: kernels, loss, sharpness, and the outliers of every bulk).
``proportional(...)`` is the two-layer model with N / D fixed trained on the
population loss (Marchenko-Pastur bulk); ``two_layer_monte_carlo`` is the
muP limit of a nonlinear two-layer network by Monte Carlo over single sites,
``deep_monte_carlo`` the same for 1..8 hidden layers (with response functions),
and ``extrapolate_width`` fits finite-width measurements to N -> infinity
(``extrapolated_outliers`` runs the simulations and fits every outlier).
``many_outputs_density(...)`` is the C = kappa N, D ~ N limit of the two-layer linear
model in its teacher-driven regime (bulk density of W0 along training).
Configurations outside these models raise a ValueError saying what is covered.
"""
from .deep_linear import deep_linear
from .nonlinear import deep_monte_carlo, extrapolate_width, extrapolated_outliers, two_layer_monte_carlo
from .many_outputs import (many_outputs_crossover, many_outputs_density, many_outputs_gap_scan,
                           many_outputs_isotropic_density, many_outputs_simulation)
from .one_bulk import one_bulk, one_bulk_finite, quarter_circle_nodes
from .proportional import proportional

__all__ = ["one_bulk", "deep_linear", "one_bulk_finite", "quarter_circle_nodes", "proportional",
           "two_layer_monte_carlo", "deep_monte_carlo", "extrapolate_width", "extrapolated_outliers",
           "many_outputs_density", "many_outputs_crossover", "many_outputs_gap_scan", "many_outputs_simulation",
           "many_outputs_isotropic_density"]
