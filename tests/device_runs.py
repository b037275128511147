"""The comparison of a device training run with the CPU run of the same config."""
import numpy as np


def assert_same_run(a, b, tol, vector_tol):
    """Every variable of the device run b equals the CPU run a's: NaN where it is NaN, else to
    ``tol``; the overlaps to ``vector_tol``: they are of singular vectors, which two solvers give
    to about residual / gap where they give the values to its square (a wrong signal, layer or
    side is off by more than 1e-3)."""
    assert set(a.data_vars) == set(b.data_vars)
    for name in a.data_vars:
        x, y = a[name].values, b[name].values
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        atol = vector_tol if name.startswith("overlap") else tol
        np.testing.assert_allclose(y[np.isfinite(y)], x[np.isfinite(x)], rtol=tol, atol=atol, err_msg=name)
