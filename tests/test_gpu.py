"""GPU checks: skipped where no CUDA device is usable (CI has none)."""
import numpy as np
import pytest

import specdyn
from specdyn import rmt

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not specdyn.gpu_available(), reason="no usable CUDA device")]


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (1024, 1025)])
def test_device_gaussians_equal_the_cpu_stream_bit_for_bit(shape):
    from specdyn.backend import cuda_module

    n, m = shape
    dev = cuda_module().gaussian_f64(n, m, 42, 3, 1.5)
    np.testing.assert_array_equal(dev, rmt.gaussian(n, m, seed=42, stream=3, sigma=1.5))
