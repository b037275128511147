"""The GPU backend.

Three groups:
* dispatch and validation (always run): the device= argument, parsing of
  ``__cuda_array_interface__`` on a fake device array, the error when a GPU is
  asked for and none is usable -- all before any device call;
* the host emulation (runs everywhere, in _core: no CUDA compiler or GPU
  needed): the device backend of the Krylov engine on a host emulation of its
  kernels, against NumPy and the CPU solvers;
* device checks (marked ``gpu``, skipped without a usable device).
"""
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import specdyn
from specdyn import _device, backend, rmt
from specdyn.lanczos import _krylov_options

HAVE_GPU = specdyn.gpu_available()
requires_gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAVE_GPU, reason="no usable CUDA device")]


def _cuda_ext():
    try:
        return importlib.import_module("specdyn._cuda")
    except ImportError:
        return None


CUDA_EXT = _cuda_ext()
EMU = specdyn._core.device_emulation


def _layout(A):
    """(row_major, ld) of a host matrix, parsed as the device path parses a device array."""
    dm = backend.device_matrix("A", HostDeviceArray(A))
    return dm.row_major, dm.ld


def emu_top_singular(A, k, tol=1e-10, block=0, v0=None, multiprocessors=4):
    return EMU.top_singular(A, *_layout(A), k, _krylov_options(tol=tol, block=block or None), v0,
                            multiprocessors)


def emu_slq(A, probes, degree, seed, symmetric, multiprocessors=4):
    return EMU.slq(A, *_layout(A), probes, degree, seed, symmetric, multiprocessors)


def emu_products(A, X, slabs):
    return EMU.products(A, *_layout(A), X, slabs)


def gpu(fn):
    for mark in requires_gpu:
        fn = mark(fn)
    return fn


class FakeDeviceArray:
    """Exposes only a CUDA array interface (the pointer is never dereferenced by these tests)."""

    def __init__(self, shape, typestr="<f8", strides=None, ptr=0xDEAD0000, mask=None, **extra):
        self.__cuda_array_interface__ = dict(shape=shape, typestr=typestr, data=(ptr, False), strides=strides,
                                             version=3, **extra)
        if mask is not None:
            self.__cuda_array_interface__["mask"] = mask


# ---------------------------------------------------------------- dispatch and validation


@pytest.mark.parametrize("shape, strides, row_major, ld", [
    ((5, 3), None, True, 3),
    ((5, 3), (24, 8), True, 3),
    ((5, 3), (8, 40), False, 5),
    ((5, 3), (64, 8), True, 8),        # padded rows
    ((5, 3), (8, 56), False, 7),       # padded columns
    ((1, 4), (999, 8), True, 4),       # a length-1 axis: its stride does not matter
    ((4, 1), (8, 999), True, 1),
    ((1, 4), (8, 16), False, 2),       # a strided row vector is a Fortran view with ld 2
])
def test_device_matrix_reads_layouts_without_copy(shape, strides, row_major, ld):
    a = FakeDeviceArray(shape, strides=strides)
    dm = backend.device_matrix("A", a)
    assert (dm.n, dm.m) == shape and dm.row_major == row_major and dm.ld == ld
    assert dm.ptr == 0xDEAD0000 and dm.owner is a and not dm.single
    assert backend.device_matrix("A", FakeDeviceArray(shape, "<f4", tuple(s // 2 for s in strides)
                                                      if strides else None)).single


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(3, 3), typestr="<i4"), "dtype float32 or float64"),
    (dict(shape=(3, 3), typestr=">f8"), "native byte order"),
    (dict(shape=(3, 3), typestr="<f2"), "dtype float32 or float64"),
    (dict(shape=(3, 3, 3)), "ndim 2"),
    (dict(shape=(3,)), "ndim 2"),
    (dict(shape=(0, 3)), "at least one row"),
    (dict(shape=(3, 3), ptr=0), "null"),
    (dict(shape=(3, 3), mask=(1, False)), "masked"),
    (dict(shape=(3, 3), strides=(16, 16)), "unit stride"),
    (dict(shape=(3, 3), strides=(-24, 8)), "unit stride"),
    (dict(shape=(3, 3), strides=(12, 8)), "unit stride"),   # rows overlap
])
def test_device_matrix_rejects_unreadable_arrays(kwargs, match):
    with pytest.raises(ValueError, match=match):
        backend.device_matrix("A", FakeDeviceArray(**kwargs))


def test_numpy_arrays_are_not_device_arrays():
    assert not backend.is_device_array(np.zeros((2, 2)))
    assert backend.is_device_array(FakeDeviceArray((2, 2)))


def test_device_argument_is_validated():
    with pytest.raises(ValueError, match="device must be one of"):
        specdyn.top_singular(np.eye(4), 1, device="gpu")
    with pytest.raises(ValueError, match="device must be one of"):
        specdyn.spectral_density(np.eye(4), [0.0, 1.0, 2.0], device="GPU")


def test_device_array_with_device_cpu_is_an_error():
    with pytest.raises(ValueError, match="device='cpu'"):
        specdyn.top_singular(FakeDeviceArray((8, 8)), 1, device="cpu")
    with pytest.raises(ValueError, match="device='cpu'"):
        specdyn.spectral_density(FakeDeviceArray((8, 8)), [0.0, 1.0], device="cpu")


def test_callable_operator_cannot_run_on_the_device():
    with pytest.raises(ValueError, match="callable"):
        specdyn.spectral_density(lambda x: x, [0.0, 2.0], n=4, device="cuda")


def test_bad_device_arrays_and_arguments_fail_before_any_device_call():
    # ValueError (not RuntimeError, not a crash) on every machine: nothing touches the fake pointer.
    with pytest.raises(ValueError, match="dtype"):
        specdyn.top_singular(FakeDeviceArray((8, 8), "<i8"), 1)
    with pytest.raises(ValueError, match="k must be"):
        specdyn.top_singular(FakeDeviceArray((8, 5)), 6)
    with pytest.raises(ValueError, match="tol"):
        specdyn.top_singular(FakeDeviceArray((8, 5)), 1, tol=2.0)
    with pytest.raises(ValueError, match="v0"):
        specdyn.top_singular(FakeDeviceArray((8, 5)), 1, v0=np.ones(4))
    with pytest.raises(ValueError, match="unit stride"):
        specdyn.spectral_density(FakeDeviceArray((8, 8), strides=(16, 16)), [0.0, 1.0])
    with pytest.raises(ValueError, match="square"):
        specdyn.spectral_density(FakeDeviceArray((8, 5)), [0.0, 1.0], spectrum="eigenvalues")
    with pytest.raises(ValueError, match="grid"):
        specdyn.spectral_density(FakeDeviceArray((8, 8)), [1.0, 0.0])


@pytest.mark.skipif(HAVE_GPU, reason="checks the message given where no GPU is usable")
def test_asking_for_a_gpu_without_one_says_why():
    why = backend.gpu_status()
    assert why.startswith("off: ")
    for call in (lambda: specdyn.top_singular(np.eye(40), 2, device="cuda"),
                 lambda: specdyn.top_singular(FakeDeviceArray((40, 40)), 2),
                 lambda: specdyn.spectral_density(np.eye(40), [0.0, 2.0], device="cuda"),
                 lambda: specdyn.spectral_density(FakeDeviceArray((40, 30)), [0.0, 2.0])):
        with pytest.raises(RuntimeError, match="a GPU was requested") as err:
            call()
        assert why[len("off: "):] in str(err.value)


def test_cpu_path_is_unchanged_by_device_none_and_cpu():
    A = rmt.gaussian(60, 40, seed=3)
    s0 = np.linalg.svd(A, compute_uv=False)[:3]
    for device in (None, "cpu"):
        s, _, _, info = specdyn.top_singular(A, 3, device=device)
        np.testing.assert_allclose(s, s0, rtol=1e-10)
        assert "device" not in info


# ---------------------------------------------------------------- host mirror of the device solvers


def _spiked(n, m, top, seed=0, dtype=np.float64):
    """A with singular values `top` followed by a bulk in (0, 1], and its exact SVD."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, min(n, m))))
    V, _ = np.linalg.qr(rng.standard_normal((m, min(n, m))))
    s = np.concatenate([top, np.linspace(1.0, 0.05, min(n, m) - len(top))])
    return ((U * s) @ V.T).astype(dtype), s


def _subspace_gap(X, Y):
    """sin of the largest principal angle between the column spans of X and Y."""
    qx, _ = np.linalg.qr(X.astype(np.float64))
    qy, _ = np.linalg.qr(Y.astype(np.float64))
    return np.linalg.norm(qy - qx @ (qx.T @ qy), 2)


@settings(max_examples=40, deadline=None)
@given(r=st.integers(1, 90), c=st.integers(1, 90), nb=st.integers(1, 16), slabs=st.integers(1, 9),
       pad=st.integers(0, 3), single=st.booleans())
def test_mirror_kernels_equal_numpy_products(r, c, nb, slabs, pad, single):
    # The index arithmetic of the M X / M^T Y kernels (ragged rows, columns, padded
    # block widths, row slabs, padded leading dimension) through their host emulation.
    dt = np.float32 if single else np.float64
    rng = np.random.default_rng(r * 1000 + c)
    A = rng.standard_normal((r, c + pad)).astype(dt)[:, :c]
    X = rng.standard_normal((c, nb)).astype(dt)
    Y, Z = emu_products(A, X, slabs)
    Yr = A.astype(np.float64) @ X.astype(np.float64)
    Zr = A.T.astype(np.float64) @ Y.astype(np.float64)
    tol = 1e-5 if single else 1e-12
    np.testing.assert_allclose(Y, Yr, rtol=tol, atol=tol * np.sqrt(c) * 4)
    np.testing.assert_allclose(Z, Zr, rtol=tol, atol=tol * np.abs(Zr).max() * 4 + tol)


@pytest.mark.parametrize("n, m, order, k", [(260, 180, "C", 4), (180, 260, "C", 1), (260, 180, "F", 6),
                                            (180, 260, "F", 3), (150, 150, "C", 10)])
def test_mirror_top_singular_matches_numpy_svd(n, m, order, k):
    A, s_true = _spiked(n, m, [12.0, 9.0, 7.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5], seed=n + m)
    A = np.asarray(A, order=order)
    s, U, V, info = emu_top_singular(A, k, 1e-10, 0, None)
    assert info["converged"] and not info["dense"] and info["device"] == "host-emulation"
    np.testing.assert_allclose(s, s_true[:k], rtol=1e-10)
    assert np.all(info["residuals"] <= 1e-10 * s_true[0])
    np.testing.assert_allclose(A @ V, U * s, atol=1e-9 * s_true[0])
    np.testing.assert_allclose(A.T @ U, V * s, atol=1e-9 * s_true[0])
    u, _, vt = np.linalg.svd(A)
    assert _subspace_gap(V, vt[:k].T) < 1e-8 and _subspace_gap(U, u[:, :k]) < 1e-8
    # The same as the CPU solver.
    s_cpu = specdyn.top_singular(A, k)[0]
    np.testing.assert_allclose(s, s_cpu, rtol=1e-12)


def test_mirror_top_singular_float32_padded_rows():
    A, s_true = _spiked(230, 170, [10.0, 6.0, 4.0], seed=7, dtype=np.float32)
    wide = np.zeros((230, 177), np.float32)
    wide[:, :170] = A
    view = wide[:, :170]  # row stride 177: read in place
    s, U, V, info = emu_top_singular(view, 3, 1e-4, 0, None)
    assert info["converged"] and U.dtype == np.float32
    np.testing.assert_allclose(s, s_true[:3], rtol=1e-4)


def test_mirror_warm_start_and_repeated_values():
    A, s_true = _spiked(240, 200, [6.0, 5.0, 5.0, 5.0, 3.0], seed=11)
    s, U, V, info = emu_top_singular(A, 4, 1e-10, 0, None)
    np.testing.assert_allclose(s, s_true[:4], rtol=1e-10)
    # Warm start from the previous right vectors on a slightly moved matrix.
    B = A + 1e-4 * np.outer(U[:, 0], V[:, 1])
    sb = np.linalg.svd(B, compute_uv=False)[:4]
    s2, _, _, info2 = emu_top_singular(B, 4, 1e-10, 0, V)
    assert info2["converged"]
    np.testing.assert_allclose(s2, sb, rtol=1e-10)
    # Warm start with the basis on the left side (wide matrix): v0 goes through A first.
    C = np.ascontiguousarray(B.T)
    s3, _, _, info3 = emu_top_singular(C, 4, 1e-10, 0, U)
    assert info3["converged"]
    np.testing.assert_allclose(s3, sb, rtol=1e-10)


@pytest.mark.parametrize("block", [1, 3, 16])
def test_mirror_given_block_sizes(block):
    # block 1 runs the column-wise orthogonalization, wider blocks mostly CholQR2.
    A, s_true = _spiked(220, 190, [7.0, 6.0, 4.0, 3.0, 2.5], seed=block)
    s, U, V, info = emu_top_singular(A, 5, 1e-10, block, None)
    assert info["converged"] and info["block"] == block
    np.testing.assert_allclose(s, s_true[:5], rtol=1e-10)
    np.testing.assert_allclose(A @ V, U * s, atol=1e-9 * s_true[0])


def test_mirror_small_matrices_are_solved_densely():
    A = rmt.gaussian(20, 30, seed=5)
    s, U, V, info = emu_top_singular(A, 3, 1e-10, 0, None)
    assert info["dense"]
    np.testing.assert_allclose(s, np.linalg.svd(A, compute_uv=False)[:3], rtol=1e-12)


@pytest.mark.parametrize("n, m", [(300, 120), (120, 300)])
def test_mirror_slq_equals_cpu_slq(n, m):
    # Same probes (stream kProbes of the seed) and the same recurrence as the CPU solver.
    from specdyn import _core

    A = rmt.gaussian(n, m, seed=2) / np.sqrt(max(n, m))
    nodes, weights = emu_slq(A, 5, 24, 9, False)
    nodes_cpu, weights_cpu = _core.slq_gram_f64(A, 5, 24, 9)
    np.testing.assert_allclose(nodes, nodes_cpu, atol=1e-10)
    np.testing.assert_allclose(weights, weights_cpu, atol=1e-10)
    S = A.T @ A if m <= n else A @ A.T
    nodes_s, weights_s = emu_slq(S, 5, 24, 9, True)
    nodes_sc, weights_sc = _core.slq_dense(np.asfortranarray(S), 5, 24, 9)
    np.testing.assert_allclose(nodes_s, nodes_sc, atol=1e-10)
    np.testing.assert_allclose(weights_s, weights_sc, atol=1e-10)


def test_mirror_slq_slab_counts_follow_the_device_size():
    assert EMU.mty_slabs(32768, 32768, 132) == 9
    assert EMU.mty_slabs(100, 100, 132) == 3   # capped at r / 32
    assert EMU.mty_slabs(10, 10**6, 132) == 1


class HostDeviceArray:
    """A NumPy array presented through the CUDA array interface (its host address as the 'device pointer')."""

    def __init__(self, a):
        self.a = a
        ai = a.__array_interface__
        self.__cuda_array_interface__ = dict(shape=ai["shape"], typestr=ai["typestr"], data=ai["data"],
                                             strides=ai["strides"], version=3)


@pytest.mark.parametrize("n, both, k", [(150, False, 3), (150, True, 2), (40, True, 3)])
def test_emulated_device_top_eigs_both_ends_match_numpy(n, both, k):
    # The device backend gets the engine's both-ends eigenvalues (n = 40: the dense plan on a host copy).
    rng = np.random.default_rng(n + k)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([[9.0, 7.0, 6.0], np.linspace(-1, 1, n - 6), [-5.0, -6.5, -8.0]])
    S = (Q * lam) @ Q.T
    S = (S + S.T) / 2
    vals, vecs, info = EMU.top_eigs(S, True, n, k, both, _krylov_options(tol=1e-10))
    exact = np.linalg.eigvalsh(S)
    want = np.concatenate([exact[::-1][:k], exact[:k]]) if both else exact[::-1][:k]
    np.testing.assert_allclose(vals, want, atol=1e-9 * 9)
    np.testing.assert_allclose(S @ vecs, vecs * vals, atol=1e-8 * 9)
    assert info["status"] == "converged" and info["dense"] == (n == 40)


def test_emulated_device_warm_extra_block():
    # The wider warm block (V, then Ritz vectors of the next values) on the device path too.
    A, s_true = _spiked(260, 180, [9.0, 7.0, 5.0, 4.0], seed=3)
    s, U, V, info = EMU.top_singular(A, *_layout(A), 3, _krylov_options(warm_extra=3), None)
    W = info["warm"]
    assert W.shape == (180, 6)
    np.testing.assert_allclose(W[:, :3], V)
    np.testing.assert_allclose(W.T @ W, np.eye(6), atol=1e-8)


def test_public_device_host_emulation_runs_the_device_path():
    A, s_true = _spiked(230, 170, [8.0, 6.0, 5.0], seed=9)
    s, U, V, info = specdyn.top_singular(A, 3, device="host-emulation")
    assert info["device"] == "host-emulation" and info["status"] == "converged"
    np.testing.assert_allclose(s, np.linalg.svd(A, compute_uv=False)[:3], rtol=1e-10)
    grid = np.linspace(0.0, 80.0, 12)
    d_emu = specdyn.spectral_density(A, grid, probes=4, degree=20, device="host-emulation")[0]
    np.testing.assert_allclose(d_emu, specdyn.spectral_density(A, grid, probes=4, degree=20)[0], atol=1e-9)
    with pytest.raises(ValueError, match="device"):
        specdyn.top_singular(A, 3, device="gpu")
    S = A.T @ A - 30.0 * np.eye(170)
    vals, _, info_e = specdyn.top_eigs(S, k=2, which="both", device="host-emulation")
    assert info_e["device"] == "host-emulation"
    np.testing.assert_allclose(vals, specdyn.top_eigs(S, k=2, which="both")[0], rtol=1e-9, atol=1e-9)


@pytest.fixture
def mirror_gpu(monkeypatch):
    mod = _device.EmulatedKrylov()
    calls = []
    for name in ("top_singular_device", "slq_device"):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _name=name: calls.append(_name[:-7]) or _real(*a))
    mod.calls = calls
    mod.arrays = mod._arrays
    monkeypatch.setattr(backend, "require_gpu", lambda what: mod)
    return mod


@pytest.mark.parametrize("layout", ["C", "F", "padded"])
def test_python_gpu_path_on_the_mirror(mirror_gpu, layout):
    A, s_true = _spiked(210, 160, [9.0, 7.0, 5.0], seed=1)
    if layout == "padded":
        base = mirror_gpu.register(np.zeros((210, 171)))
        base[:, :160] = A
        dev = HostDeviceArray(base[:, :160])
    else:
        dev = HostDeviceArray(mirror_gpu.register(np.asarray(A, order=layout)))
    s, U, V, info = specdyn.top_singular(dev, 3)
    assert mirror_gpu.calls == ["top_singular"] and info["converged"]
    np.testing.assert_allclose(s, s_true[:3], rtol=1e-10)
    np.testing.assert_allclose(A @ V, U * s, atol=1e-9 * s_true[0])
    s2, _, _, info2 = specdyn.top_singular(dev, 3, v0=V)   # warm start
    assert info2["converged"]
    np.testing.assert_allclose(s2, s_true[:3], rtol=1e-10)


def test_python_gpu_path_copies_numpy_input_and_checks_finite(mirror_gpu):
    A, s_true = _spiked(200, 150, [9.0, 7.0], seed=2)
    s = specdyn.top_singular(A, 2, device="cuda")[0]
    np.testing.assert_allclose(s, s_true[:2], rtol=1e-10)
    assert not mirror_gpu.arrays   # the device copy was released
    bad = A.copy()
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        specdyn.top_singular(HostDeviceArray(mirror_gpu.register(bad)), 2)


def test_python_gpu_spectral_density_on_the_mirror(mirror_gpu):
    A = rmt.gaussian(300, 150, seed=4) / np.sqrt(300)
    grid = np.linspace(0.0, 3.0, 16)
    dev = HostDeviceArray(mirror_gpu.register(A))
    d_gpu, e_gpu = specdyn.spectral_density(dev, grid, probes=6, degree=30)
    d_cpu, e_cpu = specdyn.spectral_density(A, grid, probes=6, degree=30)
    np.testing.assert_allclose(d_gpu, d_cpu, atol=1e-9)
    S = mirror_gpu.register(A.T @ A)
    d_sym = specdyn.spectral_density(HostDeviceArray(S), grid, probes=6, degree=30)[0]   # auto: symmetric
    np.testing.assert_allclose(d_sym, specdyn.spectral_density(S, grid, probes=6, degree=30)[0], atol=1e-9)
    exact = specdyn.spectral_density(dev, grid, method="exact")[0]
    np.testing.assert_allclose(exact, specdyn.spectral_density(A, grid, method="exact")[0])
    asym = mirror_gpu.register(S + 0.1 * np.triu(np.ones_like(S), 1))
    with pytest.raises(ValueError, match="symmetric"):
        specdyn.spectral_density(HostDeviceArray(asym), grid, spectrum="eigenvalues")
    assert mirror_gpu.calls == ["slq", "slq"]


# ---------------------------------------------------------------- on a device


def _cupy():
    # Only "not installed" skips: a CuPy that is installed but cannot load fails the test.
    try:
        import cupy
    except ImportError:
        return None
    return cupy


@gpu
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (1024, 1025)])
def test_device_gaussians_equal_the_cpu_stream_bit_for_bit(shape):
    from specdyn.backend import cuda_module

    n, m = shape
    dev = cuda_module().gaussian_f64(n, m, 42, 3, 1.5)
    np.testing.assert_array_equal(dev, rmt.gaussian(n, m, seed=42, stream=3, sigma=1.5))


@gpu
@pytest.mark.parametrize("offset", [0, 1, 6, 1001])
def test_device_start_vectors_equal_the_cpu_stream_bit_for_bit(offset):
    dev = backend.cuda_module().normal_offset_to_host(77, 5, 4, offset)
    np.testing.assert_array_equal(dev, rmt.gaussian(1, offset + 77, seed=5, stream=4)[0, offset:])


@gpu
@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("r, c, nb, slabs", [(1, 1, 1, 1), (37, 45, 3, 2), (300, 70, 16, 5), (65, 1029, 9, 3),
                                             (2049, 33, 5, 7), (513, 257, 8, 1)])
def test_device_kernels_equal_numpy_products(r, c, nb, slabs, single):
    dt = np.float32 if single else np.float64
    rng = np.random.default_rng(r + c)
    A = rng.standard_normal((r, c)).astype(dt)
    X = rng.standard_normal((c, nb)).astype(dt)
    Y, Z = backend.cuda_module().products_device(A, X, slabs)
    Ym, Zm = emu_products(A, X, slabs)
    tol = 1e-5 if single else 1e-12
    Yr = A.astype(np.float64) @ X.astype(np.float64)
    np.testing.assert_allclose(Y, Yr, rtol=tol, atol=tol * np.sqrt(c) * 4)
    np.testing.assert_allclose(Z, A.T.astype(np.float64) @ Y.astype(np.float64), rtol=tol,
                               atol=tol * np.abs(Z).max() * 4 + tol)
    np.testing.assert_allclose(Y, Ym, rtol=tol, atol=tol * np.sqrt(c))


@gpu
@pytest.mark.parametrize("n, m, order, k", [(700, 500, "C", 5), (500, 700, "F", 3), (600, 600, "C", 10)])
def test_device_top_singular_matches_numpy_and_cpu(n, m, order, k):
    A, s_true = _spiked(n, m, [12.0, 9.0, 7.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5], seed=n + m)
    A = np.asarray(A, order=order)
    s, U, V, info = specdyn.top_singular(A, k, device="cuda")
    assert info["device"] == "cuda" and info["converged"] and not info["dense"]
    np.testing.assert_allclose(s, s_true[:k], rtol=1e-10)
    s_cpu, U_cpu, V_cpu, _ = specdyn.top_singular(A, k)
    np.testing.assert_allclose(s, s_cpu, rtol=1e-10)
    assert _subspace_gap(V, V_cpu) < 1e-8 and _subspace_gap(U, U_cpu) < 1e-8
    np.testing.assert_allclose(A @ V, U * s, atol=1e-9 * s_true[0])
    # The device run and its host mirror are the same algorithm.
    s_mirror = emu_top_singular(A, k, 1e-10, 0, None)[0]
    np.testing.assert_allclose(s, s_mirror, rtol=1e-11)


@gpu
def test_device_top_singular_float32_and_warm_start():
    A, s_true = _spiked(900, 640, [10.0, 6.0, 4.0, 3.0], seed=3, dtype=np.float32)
    s, U, V, info = specdyn.top_singular(A, 4, tol=1e-4, device="cuda")
    assert info["converged"] and U.dtype == np.float32
    np.testing.assert_allclose(s, s_true[:4], rtol=1e-4)
    B = A + np.float32(1e-3) * np.outer(U[:, 0], V[:, 2]).astype(np.float32)
    sb = np.linalg.svd(B.astype(np.float64), compute_uv=False)[:4]
    s2, _, _, info2 = specdyn.top_singular(B, 4, tol=1e-4, v0=V, device="cuda")
    assert info2["converged"]
    np.testing.assert_allclose(s2, sb, rtol=1e-4)


@gpu
def test_device_spectral_density_matches_exact_eigenvalues():
    n, m = 1200, 600
    A = rmt.gaussian(n, m, seed=4) / np.sqrt(n)   # Marchenko-Pastur, ratio 1/2
    grid = np.linspace(0.0, 3.2, 33)
    exact, _ = specdyn.spectral_density(A, grid, method="exact")
    dev, err = specdyn.spectral_density(A, grid, probes=24, degree=60, device="cuda")
    cpu, _ = specdyn.spectral_density(A, grid, probes=24, degree=60)
    np.testing.assert_allclose(dev, cpu, atol=1e-8)   # same probes, same recurrence
    widths = np.diff(grid)
    assert np.max(np.abs(np.cumsum((dev - exact) * widths))) < 0.05   # CDFs within 5%
    S = A.T @ A
    dev_s, _ = specdyn.spectral_density(S, grid, probes=8, degree=40, device="cuda")
    cpu_s, _ = specdyn.spectral_density(S, grid, probes=8, degree=40)
    np.testing.assert_allclose(dev_s, cpu_s, atol=1e-8)


@gpu
def test_cupy_arrays_run_in_place():
    cp = _cupy()
    if cp is None:
        pytest.skip("cupy is not installed")
    A, s_true = _spiked(800, 520, [8.0, 6.0, 5.0], seed=9)
    dA = cp.asarray(A)
    s, U, V, info = specdyn.top_singular(dA, 3)
    assert info["device"] == "cuda" and isinstance(U, np.ndarray)
    np.testing.assert_allclose(s, s_true[:3], rtol=1e-10)
    sF = specdyn.top_singular(cp.asfortranarray(dA), 3)[0]
    np.testing.assert_allclose(sF, s_true[:3], rtol=1e-10)
    padded = cp.zeros((800, 530))
    padded[:, :520] = dA
    sP = specdyn.top_singular(padded[:, :520], 3)[0]
    np.testing.assert_allclose(sP, s_true[:3], rtol=1e-10)
    with pytest.raises(ValueError, match="device='cpu'"):
        specdyn.top_singular(dA, 3, device="cpu")
    bad = dA.copy()
    bad[3, 4] = cp.nan
    with pytest.raises(ValueError, match="finite"):
        specdyn.top_singular(bad, 3)
    s_warm, _, _, info_w = specdyn.top_singular(dA, 3, v0=cp.asarray(V))
    assert info_w["converged"]
    np.testing.assert_allclose(s_warm, s_true[:3], rtol=1e-10)
