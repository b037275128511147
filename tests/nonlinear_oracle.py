"""Independent NumPy oracle: a finite-width two-layer muP network trained by full-batch GD.

Plain NumPy with the multipliers of ``parameterization.scales("mup", ...)``; gradients
written out by hand from f(x) = m1 w . phi(m0 W0 x) and L = (1/2P) sum (f - y)^2.
"""
from __future__ import annotations

import numpy as np

from specdyn.parameterization import scales

PHI = {"tanh": (np.tanh, lambda h: 1.0 - np.tanh(h) ** 2),
       "relu": (lambda h: np.maximum(h, 0.0), lambda h: (h > 0).astype(float)),
       "linear": (lambda h: h, lambda h: np.ones_like(h))}


def simulate_mup(X, Y, width, gamma0, eta0, steps, tracked, seed, activation="tanh", sigma=1.0):
    P, D = X.shape
    sc = scales("mup", width, 1, D, 1, gamma0, eta0, sigma)
    m0, m1, eta = sc.layers[0].multiplier, sc.layers[1].multiplier, sc.learning_rate
    phi, dphi = PHI[activation]
    rng = np.random.default_rng(seed)
    W0 = rng.normal(0.0, sc.layers[0].init_std, (width, D))
    w = rng.normal(0.0, sc.layers[1].init_std, width)
    out = {"loss": np.empty(steps + 1), "phi": [], "grad": [], "sharpness": []}
    Kx = X @ X.T / D
    for t in range(steps + 1):
        H = m0 * W0 @ X.T                      # (N, P)
        A, dA = phi(H), dphi(H)
        f = m1 * (w @ A)
        r = Y - f
        out["loss"][t] = r @ r / (2 * P)
        if t in tracked:
            B = w[:, None] * dA
            out["phi"].append(A.T @ A / width)
            out["grad"].append(B.T @ B / width)
            # NTK Gram over all parameters, built from its two blocks
            K = m1**2 * (A.T @ A) + m1**2 * m0**2 * (B.T @ B) * (X @ X.T)
            out["sharpness"].append(eta * np.linalg.eigvalsh(K)[-1] / P)
        gw = -(m1 / P) * (A @ r)
        gW0 = -(m1 * m0 / P) * ((w[:, None] * dA * r[None, :]) @ X)
        w, W0 = w - eta * gw, W0 - eta * gW0
    for k in ("phi", "grad", "sharpness"):
        out[k] = np.array(out[k])
    return out
