"""A provable upper bound on Z: the Lagrangian (LP) relaxation of the coupling ``W <= s``.

The problem of docs/METHOD.md, "The optimisation problem", with ``a = z_a_factor * A`` (F, C) and
``b = B``. For multipliers ``nu`` (C,) define ``g_f(nu) = b_f + sum_c max(a[f, c] - nu_c, 0)`` and

    D(nu) = n_wc * sum_c nu_c + (sum of the n_f* largest g_f(nu)).

**Validity: D(nu) >= Z(S, W) for every feasible (S, W) and every real nu.** Let ``T_c`` (``|T_c| =
n_wc``, ``T_c`` in S) be the features of class c. Then

    Z = sum_c sum_{f in T_c} a[f, c] + sum_{f in S} b_f + Z_R
      <= sum_c (n_wc nu_c + sum_{f in T_c} (a[f, c] - nu_c)) + sum_{f in S} b_f        (Z_R <= 0)
      <= sum_c (n_wc nu_c + sum_{f in S} max(a[f, c] - nu_c, 0)) + sum_{f in S} b_f   (x <= max(x, 0), T_c in S)
      =  n_wc sum_c nu_c + sum_{f in S} g_f(nu)  <=  D(nu)                            (|S| = n_f*).

Uniqueness is not used, so the bound holds with or without it. ``min_nu D(nu)`` is the optimum of
the linear relaxation of the problem without Z_R and uniqueness (D is that LP's dual with the
multipliers of ``W <= s``, ``s <= 1`` and ``sum s = n_f*`` eliminated in closed form); the
multipliers ``nu_c = (n_wc-th largest a[:, c])`` give (at most) the cheap bound of
:meth:`~qpm_timm.solver.QPMProblem.upper_bound`.

:func:`lp_bound` picks nu by minimising a smoothed D (``max(x, 0)`` replaced by ``T log(1 + e^(x/T))``,
a fixed sequence of temperatures, L-BFGS with a fixed iteration cap: bounded by work, deterministic)
and returns the exact D of the best nu found, evaluated in float64 plus a rounding margin, so the
result is valid whatever the optimiser did.
"""
from typing import Tuple

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from .problem import QPMProblem

__all__ = ["lagrangian_bound", "lp_bound"]

_TEMPERATURES = (1e-2, 3e-3, 1e-3, 3e-4)  # relative to max|a|
_ITERATIONS = 150                          # L-BFGS iterations per temperature
_ROUNDING = 1e-9                           # relative margin for float64 rounding in D


def _top_sum(x: np.ndarray, n: int) -> float:
    """Sum of the n largest entries (deterministic order)."""
    return float(np.sort(x)[x.size - n:].sum())


def lagrangian_bound(problem: QPMProblem, nu: np.ndarray) -> float:
    """``D(nu)`` of the module docstring plus a rounding margin: an upper bound on Z for any nu (C,)."""
    nu = np.asarray(nu, dtype=np.float64)
    if nu.shape != (problem.num_classes,):
        raise ValueError(f"nu must have shape (C,) = ({problem.num_classes},), got {nu.shape}")
    a = problem.z_a_factor * problem.A
    g = problem.B + np.maximum(a - nu, 0.0).sum(axis=1)
    d = problem.n_per_class * float(nu.sum()) + _top_sum(g, problem.n_features)
    return d + _ROUNDING * (1.0 + abs(d))


def _smoothed(x: np.ndarray, a32: np.ndarray, b: np.ndarray, n: int, k: int, t: float
              ) -> Tuple[float, np.ndarray]:
    """Smoothed ``n_wc sum nu + n mu + sum_f sp(b_f + sum_c sp(a - nu) - mu)`` (>= D) and its gradient;
    ``x = (nu, mu)``, ``sp(z) = t log(1 + e^(z/t))``. The (F, C) part runs in float32 (it only guides
    the choice of nu; the bound itself is D in float64); reductions are numpy sums, not BLAS."""
    nu, mu = x[:-1], x[-1]
    z = (a32 - nu.astype(np.float32)) * np.float32(1.0 / t)
    e = np.exp(-np.abs(z))
    inner = t * (np.maximum(z, 0.0).sum(axis=1, dtype=np.float64) + np.log1p(e).sum(axis=1, dtype=np.float64))
    h = (b + inner - mu) / t
    value = k * nu.sum() + n * mu + t * (np.maximum(h, 0.0) + np.log1p(np.exp(-np.abs(h)))).sum()
    q = expit(h).astype(np.float32)
    r = np.where(z >= 0, np.float32(1.0), e) / (1.0 + e)  # sigmoid(z) from e = exp(-|z|)
    grad = np.empty_like(x)
    grad[:-1] = k - (q[:, None] * r).sum(axis=0, dtype=np.float64)
    grad[-1] = n - q.sum(dtype=np.float64)
    return float(value), grad


def lp_bound(problem: QPMProblem) -> Tuple[float, np.ndarray]:
    """(bound, nu): the best ``D(nu)`` found from the start ``nu_c = n_wc-th largest a[:, c]``
    (see the module docstring; valid for any nu, near the LP optimum after the smoothing stages)."""
    a = problem.z_a_factor * problem.A
    b = problem.B
    n, k = problem.n_features, problem.n_per_class
    nu = -np.partition(-a, k - 1, axis=0)[k - 1]
    best = (lagrangian_bound(problem, nu), nu)
    g = b + np.maximum(a - nu, 0.0).sum(axis=1)
    x = np.append(nu, np.sort(g)[g.size - n])
    scale = max(float(np.abs(a).max()), 1e-12)
    a32 = a.astype(np.float32)
    for rel in _TEMPERATURES:
        res = minimize(_smoothed, x, args=(a32, b, n, k, rel * scale), jac=True, method="L-BFGS-B",
                       options=dict(maxiter=_ITERATIONS))
        x = res.x
        d = lagrangian_bound(problem, x[:-1])
        if d < best[0]:
            best = (d, x[:-1].copy())
    return best
