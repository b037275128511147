"""Independent NumPy oracle: finite-size population GD of the proportional two-layer model.

Plain dense NumPy, no specdyn native code: W0 (N x D), readout w (N), teacher beta (D),
f(x) = m1 w . (m0 W0 x) with the forward multipliers m0 = 1/sqrt(D), m1 = 1/(gamma sqrt(N)) of
``parameterization.proportional_scales``; the teacher is y = m0 beta . x. Over x ~ N(0, I_D) the
population loss is L = m0^2 |beta - m1 W0^T w|^2 / 2, and its exact gradients are applied with the
raw rate eta.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from specdyn.parameterization import proportional_scales


def top_singular_values(A: np.ndarray, k: int) -> np.ndarray:
    """Top-k singular values (descending), from the top eigenvalues of the smaller Gram matrix (LAPACK)."""
    if not np.any(A):
        return np.zeros(k)
    G = A.T @ A if A.shape[0] >= A.shape[1] else A @ A.T
    n = G.shape[0]
    lam = sla.eigh(G, eigvals_only=True, subset_by_index=[max(0, n - k), n - 1])[::-1]
    return np.sqrt(np.maximum(lam, 0.0))


def top_singular_vectors(A: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left and right singular vectors (columns, descending), from the smaller Gram matrix (LAPACK)."""
    tall = A.shape[0] >= A.shape[1]
    G = A.T @ A if tall else A @ A.T
    n = G.shape[0]
    lam, Q = sla.eigh(G, subset_by_index=[n - k, n - 1])
    Q, s = Q[:, ::-1], np.sqrt(np.maximum(lam[::-1], 1e-300))
    if tall:
        return (A @ Q) / s, Q
    return Q, (A.T @ Q) / s


def simulate_population(D: int, nu: float, gamma0: float, eta0: float, steps: int, tracked, seed: int,
                        sigma_in: float = 1.0, sigma_out: float = 1.0, top_k: int = 2) -> dict:
    """Seeded run; returns loss (steps+1), and at tracked steps: top singular values of W0/sqrt(D)
    (len(tracked) x top_k), of (W0(t) - W0(0))/sqrt(D), |w|/sqrt(N), eta lambda_max of the
    population Gauss-Newton Hessian, and (ovl, ovr) the squared overlaps of the top-k left / right
    singular vectors of W0(t) with the top left / right singular vector of W0(t) - W0(0) (NaN at t = 0)."""
    N = int(round(nu * D))
    sc = proportional_scales(N, D, gamma0, eta0, [sigma_in, sigma_out])
    m0, m1 = sc.layers[0].multiplier, sc.layers[1].multiplier   # 1/sqrt(D), 1/(gamma sqrt(N))
    n0 = sc.layers[0].normalizer
    eta = sc.learning_rate
    rng = np.random.default_rng(seed)
    W0 = rng.normal(0.0, sigma_in, (N, D))
    w = rng.normal(0.0, sigma_out, N)
    beta = rng.normal(0.0, 1.0, D)
    # W0(t) - W0(0) = sum_j alpha w_j d_j^T: keep the factors, its spectrum comes from small QRs
    alpha = eta * m0**2 * m1
    fac_w, fac_d = [], []
    tracked = set(tracked)
    out = {"loss": np.empty(steps + 1), "sv": [], "dsv": [], "readout": [], "sharpness": [], "ovl": [], "ovr": []}
    for t in range(steps + 1):
        # f(x) - y = m0 (m1 W0^T w - beta) . x: the error direction is d = beta - m1 W0^T w
        d = beta - m1 * (W0.T @ w)
        out["loss"][t] = 0.5 * m0**2 * (d @ d)          # E_x (f - y)^2 / 2 with E[x x^T] = I
        if t in tracked:
            A = n0 * W0
            s = top_singular_values(A, top_k)
            out["sv"].append(s)
            if fac_w:
                Qu, Ru = np.linalg.qr(np.stack(fac_w, 1))
                Qv, Rv = np.linalg.qr(np.stack(fac_d, 1))
                Xc, ds, Zc = np.linalg.svd(Ru @ Rv.T)
                ds = n0 * alpha * ds
                out["dsv"].append(np.pad(ds, (0, max(0, top_k - len(ds))))[:top_k])
                # squared overlaps of the top singular vectors of A(t) with those of A(t) - A(0)
                Ua, Va = top_singular_vectors(A, top_k)
                out["ovl"].append((Ua.T @ (Qu @ Xc[:, 0])) ** 2)
                out["ovr"].append((Va.T @ (Qv @ Zc[0])) ** 2)
            else:
                out["dsv"].append(np.zeros(top_k))
                out["ovl"].append(np.full(top_k, np.nan))
                out["ovr"].append(np.full(top_k, np.nan))
            out["readout"].append(np.linalg.norm(w) * sc.layers[1].normalizer)
            # Gauss-Newton Hessian of L: (m0^2) J^T J with J = d beta_f / d theta; its top
            # eigenvalue = m0^2 m1^2 (s_max(W0)^2 + |w|^2)
            out["sharpness"].append(eta * m0**2 * m1**2 * ((s[0] / n0) ** 2 + w @ w))
        # exact population gradients of L = m0^2 |d|^2 / 2
        gw = -(m0**2) * m1 * (W0 @ d)
        gW0 = -(m0**2) * m1 * np.outer(w, d)
        fac_w.append(w.copy())
        fac_d.append(d.copy())
        w = w - eta * gw
        W0 = W0 - eta * gW0
    for key in ("sv", "dsv", "readout", "sharpness", "ovl", "ovr"):
        out[key] = np.array(out[key])
    return out


def gauss_newton_top(W0: np.ndarray, w: np.ndarray, m0: float, m1: float) -> float:
    """Top eigenvalue of the population Gauss-Newton Hessian built from the explicit Jacobian
    (for small sizes only): L = m0^2 |beta - m1 W0^T w|^2 / 2, J = d(m1 W0^T w)/d(w, W0)."""
    N, D = W0.shape
    J_w = m1 * W0.T                                   # D x N
    J_W = np.zeros((D, N * D))                        # d beta_f_a / d W0_{ib} = m1 w_i delta_ab
    for a in range(D):
        J_W[a, a::D] = m1 * w
    J = np.hstack([J_w, J_W])
    return float(np.linalg.eigvalsh(m0**2 * J.T @ J)[-1])
