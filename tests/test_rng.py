"""Counter-based Gaussian streams: known answers, moments, reproducibility."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import specdyn
from specdyn import _core, rmt


def test_philox_known_answers():
    # Known-answer vectors of Philox4x32-10 published with Random123.
    assert _core.philox4x32_10(0, 0, 0, 0, 0, 0) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    f = 0xFFFFFFFF
    assert _core.philox4x32_10(f, f, f, f, f, f) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert _core.philox4x32_10(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


def test_moments_and_normality():
    z = rmt.gaussian(1000, 1000, seed=7).ravel()
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    # Kolmogorov-Smirnov on a subsample (the full 1e6 would flag ulp-level effects).
    assert stats.kstest(z[:200_000], "norm").pvalue > 1e-3


def test_sigma_scales_and_float32_is_cast_of_float64():
    a = rmt.gaussian(50, 70, seed=3, sigma=2.5)
    b = rmt.gaussian(50, 70, seed=3, sigma=2.5, dtype="float32")
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, a.astype(np.float32))
    np.testing.assert_allclose(a, 2.5 * rmt.gaussian(50, 70, seed=3), rtol=1e-15)


def test_streams_and_seeds_differ_prefix_is_stable():
    a = rmt.gaussian(64, 33, seed=1)
    assert not np.array_equal(a, rmt.gaussian(64, 33, seed=2))
    assert not np.array_equal(a, rmt.gaussian(64, 33, seed=1, stream=1))
    # element (i, j) is element i*m + j of the stream: rows are a prefix
    np.testing.assert_array_equal(a[:5], rmt.gaussian(5, 33, seed=1))
    # odd lengths: the half-used last pair is consistent with a longer fill
    np.testing.assert_array_equal(rmt.gaussian(1, 7, seed=1)[0], rmt.gaussian(1, 8, seed=1)[0, :7])
    # two streams are uncorrelated
    c = np.corrcoef(rmt.gaussian(1, 100_000, seed=5, stream=0)[0], rmt.gaussian(1, 100_000, seed=5, stream=1)[0])
    assert abs(c[0, 1]) < 0.02


_DIGEST = ("import hashlib, specdyn; from specdyn import rmt; "
           "print(hashlib.sha256(rmt.gaussian(777, 1001, seed=11).tobytes()).hexdigest())")


def test_same_matrix_at_any_thread_count():
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    here = hashlib.sha256(rmt.gaussian(777, 1001, seed=11).tobytes()).hexdigest()
    assert digests == {here}


@pytest.mark.parametrize("kwargs, field", [
    (dict(n=0, m=3), "n"), (dict(n=3, m=-1), "m"), (dict(n=2, m=2, sigma=float("nan")), "sigma"),
    (dict(n=2, m=2, sigma=-1.0), "sigma"), (dict(n=2, m=2, dtype="int32"), "dtype"),
    (dict(n=2, m=2, seed=-3), "seed"), (dict(n=2.5, m=2), "n"),
])
def test_bad_input_names_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        rmt.gaussian(**kwargs)


def test_gpu_is_reported_off_without_device():
    info = specdyn.info()
    assert set(info) >= {"specdyn", "blas", "blas_threads", "omp_threads", "gpu"}
    assert "OpenBLAS" in info["blas"]
    if not specdyn.gpu_available():
        assert info["gpu"].startswith("off:")
