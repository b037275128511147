"""Closed-form laws against numerical integration, LAPACK spectra and simulation."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import integrate, stats

from specdyn import rmt


def _svals(A):
    return np.linalg.svd(A, compute_uv=False)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7])
def test_quarter_circle_integrates_to_one(sigma):
    total, _ = integrate.quad(lambda s: rmt.quarter_circle_density(s, sigma), 0, 2 * sigma)
    assert abs(total - 1) < 1e-8
    assert rmt.quarter_circle_edge(sigma) == 2 * sigma


@pytest.mark.parametrize("ratio", [0.1, 0.5, 1.0, 2.0, 7.0])
def test_marchenko_pastur_integrates_to_one(ratio):
    lo, hi = rmt.marchenko_pastur_edges(ratio, 1.3)
    total, _ = integrate.quad(lambda x: rmt.marchenko_pastur_density(x, ratio, 1.3), lo, hi, limit=200)
    assert abs(total - 1) < 1e-6


def _ks_against(samples, density, lo, hi):
    """Kolmogorov-Smirnov distance between samples and a density on [lo, hi]."""
    grid = np.linspace(lo, hi, 20001)
    pdf = density(grid)
    cdf = np.concatenate([[0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(grid))])
    cdf /= cdf[-1]
    return stats.kstest(samples, lambda x: np.interp(x, grid, cdf)).statistic


def test_square_spectrum_follows_quarter_circle():
    n, sigma = 2000, 1.3
    s = _svals(rmt.gaussian(n, n, seed=4, sigma=sigma / np.sqrt(n)))
    # Eigenvalues are rigid: the empirical CDF is within O(log n / n) of the law.
    assert _ks_against(s, lambda x: rmt.quarter_circle_density(x, sigma), 0, 2 * sigma) < 0.01
    assert abs(s[0] - 2 * sigma) < 0.05


@pytest.mark.parametrize("n, m", [(1000, 2000), (2000, 800)])
def test_rectangular_spectrum_follows_marchenko_pastur(n, m):
    ratio = n / m
    x = _svals(rmt.gaussian(n, m, seed=9, sigma=1 / np.sqrt(m))) ** 2
    x = x[: min(n, m)]
    lo, hi = rmt.marchenko_pastur_edges(ratio)
    assert _ks_against(x, lambda t: rmt.marchenko_pastur_density(t, ratio), lo, hi) < 0.01
    assert abs(np.sqrt(x[0]) - rmt.singular_value_edge(ratio)) < 0.05


def test_bgn_matches_spiked_matrices_at_n_2000():
    thetas = [3.0, 2.0, 1.4, 0.6]   # three above threshold 1, one below
    pred = rmt.bgn_outliers(thetas)
    assert pred["threshold"] == 1.0
    np.testing.assert_array_equal(pred["is_outlier"], [True, True, True, False])
    # Outliers fluctuate by O(N^-1/2) (about 0.015 here): average six seeds.
    s, ol, orr = [], [], []
    for seed in range(6):
        A, U, Vm = rmt.spiked(2000, 2000, thetas, seed=seed)
        Ua, sa, Vta = np.linalg.svd(A)
        s.append(sa[:4])
        ol.append(np.abs(np.sum(Ua[:, :3] * U[:, :3], axis=0)) ** 2)
        orr.append(np.abs(np.sum(Vta[:3].T * Vm[:, :3], axis=0)) ** 2)
    s = np.mean(s, axis=0)
    np.testing.assert_allclose(s[:3], pred["singular_values"][:3], atol=0.02)
    assert abs(s[3] - 2.0) < 0.05   # the sub-threshold spike does not separate
    np.testing.assert_allclose(np.mean(ol, axis=0), pred["overlap_left"][:3], atol=0.05)
    np.testing.assert_allclose(np.mean(orr, axis=0), pred["overlap_right"][:3], atol=0.05)


def test_bgn_rectangular_matches_simulation():
    n, m = 1000, 2500
    ratio = n / m
    thetas = [2.0, 1.2]
    A, U, Vm = rmt.spiked(n, m, thetas, seed=2)
    Ua, s, Vta = np.linalg.svd(A, full_matrices=False)
    pred = rmt.bgn_outliers(thetas, ratio)
    np.testing.assert_allclose(s[:2], pred["singular_values"], atol=0.02)
    ol = np.abs(np.sum(Ua[:, :2] * U, axis=0)) ** 2
    orr = np.abs(np.sum(Vta[:2].T * Vm, axis=0)) ** 2
    np.testing.assert_allclose(ol, pred["overlap_left"], atol=0.05)
    np.testing.assert_allclose(orr, pred["overlap_right"], atol=0.05)


@given(n=st.integers(1, 60), m=st.integers(1, 60), seed=st.integers(0, 2**32),
       thetas=st.lists(st.floats(0, 10), min_size=1, max_size=4))
def test_spiked_is_bulk_plus_planted_spikes(n, m, seed, thetas):
    thetas = thetas[: min(n, m)]
    A, U, Vm = rmt.spiked(n, m, thetas, seed=seed)
    X = rmt.gaussian(n, m, seed=seed, sigma=1 / np.sqrt(m))
    np.testing.assert_allclose(A, X + (U * thetas) @ Vm.T, atol=1e-12)
    np.testing.assert_allclose(U.T @ U, np.eye(len(thetas)), atol=1e-12)
    np.testing.assert_allclose(Vm.T @ Vm, np.eye(len(thetas)), atol=1e-12)


@given(ratio=st.floats(0.05, 20), sigma=st.floats(0.1, 5),
       thetas=st.lists(st.floats(0, 20), min_size=1, max_size=6))
def test_bgn_properties(ratio, sigma, thetas):
    pred = rmt.bgn_outliers(thetas, ratio, sigma)
    t = np.asarray(thetas)
    edge = rmt.singular_value_edge(ratio, sigma)
    s = pred["singular_values"]
    assert np.all(s >= edge * (1 - 1e-12))
    np.testing.assert_array_equal(pred["is_outlier"], t > pred["threshold"] * (1 + 0 * t))
    for key in ("overlap_left", "overlap_right"):
        assert np.all((pred[key] >= -1e-12) & (pred[key] <= 1))
    # monotone in theta and continuous at the threshold
    order = np.argsort(t)
    assert np.all(np.diff(s[order]) >= -1e-9)
    at = rmt.bgn_outliers([pred["threshold"] * (1 + 1e-7)], ratio, sigma)
    assert abs(at["singular_values"][0] - edge) < 1e-3 * edge
    # strong spikes: s -> theta
    big = rmt.bgn_outliers([1e4 * sigma], ratio, sigma)["singular_values"][0]
    assert abs(big / (1e4 * sigma) - 1) < 1e-3


@given(n=st.integers(30, 300), ratio=st.floats(0.3, 3.0), seed=st.integers(0, 1000))
def test_top_singular_value_is_near_the_edge_without_spikes(n, ratio, seed):
    m = max(1, int(round(n / ratio)))
    s1 = _svals(rmt.gaussian(n, m, seed=seed, sigma=1 / np.sqrt(m)))[0]
    # Tracy-Widom fluctuations are O(n^{-2/3}); finite-size bias is also small.
    assert abs(s1 - rmt.singular_value_edge(n / m)) < 4 * min(n, m) ** (-2 / 3) + 0.02


@pytest.mark.parametrize("call, field", [
    (lambda: rmt.marchenko_pastur_density([1.0], 0.0), "ratio"),
    (lambda: rmt.marchenko_pastur_density([1.0], -2.0), "ratio"),
    (lambda: rmt.quarter_circle_density([1.0], float("inf")), "sigma"),
    (lambda: rmt.bgn_outliers([1.0], ratio=0), "ratio"),
    (lambda: rmt.bgn_outliers([1.0], sigma=float("nan")), "sigma"),
    (lambda: rmt.spiked(0, 5, [1.0]), "n"),
    (lambda: rmt.spiked(5, 5, [1.0], dtype="complex128"), "dtype"),
    (lambda: rmt.spiked(5, 5, [1.0], directions="weird"), "directions"),
    (lambda: rmt.spiked(2, 5, [1.0, 1.0, 1.0]), "thetas"),
])
def test_bad_input(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_densities_are_nan_at_nan_and_match_the_closed_forms_elsewhere():
    s = np.array([0.5, np.nan, 1.9, 2.5])
    qc = rmt.quarter_circle_density(s, sigma=1.0)
    assert np.isnan(qc[1]) and qc[3] == 0.0
    np.testing.assert_allclose(qc[[0, 2]], np.sqrt(4 - s[[0, 2]] ** 2) / np.pi, rtol=1e-14)
    mp = rmt.marchenko_pastur_density(np.array([1.0, np.nan]), ratio=0.5)
    assert np.isnan(mp[1]) and mp[0] > 0


@pytest.mark.parametrize("thetas", ["3", [[1.0, 2.0]], [np.nan], {"a": 1}])
def test_spiked_refuses_thetas_that_are_not_a_flat_real_sequence(thetas):
    with pytest.raises(ValueError, match="thetas"):
        rmt.spiked(20, 20, thetas)


def test_bgn_outliers_refuse_strings_and_keep_array_shapes():
    with pytest.raises(ValueError, match="thetas"):
        rmt.bgn_outliers("3")
    out = rmt.bgn_outliers(np.array([[3.0, 0.5], [2.0, 1.0]]))
    np.testing.assert_allclose(out["singular_values"], [[3 + 1 / 3, 2.0], [2.5, 2.0]], rtol=1e-14)


@given(st.floats(1e-3, 1e300), st.floats(1e-3, 1e3))
def test_bgn_outliers_do_not_overflow_at_extreme_spikes(theta, sigma):
    # square case closed form: s = theta + sigma^2 / theta above the threshold sigma
    out = rmt.bgn_outliers([theta], ratio=1.0, sigma=sigma)
    ref = theta + sigma**2 / theta if theta > sigma else 2 * sigma
    np.testing.assert_allclose(out["singular_values"], [ref], rtol=1e-12)
    assert np.all(np.isfinite(out["overlap_left"])) and np.all(np.isfinite(out["overlap_right"]))


@pytest.mark.parametrize("n, m", [(2**64, 1), (2**20, 2**20), (1, 2**62)])
def test_a_draw_larger_than_the_machine_is_refused_naming_the_sizes(n, m):
    with pytest.raises(ValueError, match=f"n = {n}, m = {m}.*GiB; this machine has"):
        rmt.gaussian(n, m)


def test_a_teacher_larger_than_the_machine_is_refused_naming_the_sizes():
    from specdyn import data

    with pytest.raises(ValueError, match="samples = 18446744073709551616.*GiB"):
        data.teacher(2**64, 1)
