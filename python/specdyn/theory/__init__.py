"""Infinite-width theory: DMFT predictions to set against simulations.

``one_bulk(config, data)`` solves the exactly solvable one-bulk model of
THEORY.md section 2 (loss, beta_f, normalized sharpness, outlier singular
values of the hidden matrix and the naive BGN baseline); ``one_bulk_finite``
runs the same recursion on the modes of one finite network.
"""
from .one_bulk import one_bulk, one_bulk_finite, quarter_circle_nodes

__all__ = ["one_bulk", "one_bulk_finite", "quarter_circle_nodes"]
