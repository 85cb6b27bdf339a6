"""The QPM binary quadratic problem: inputs, derived quantities and the float objective.

QPM eq. (objective) ``Z = Z_A + Z_R + Z_B`` (docs/METHOD.md, "The optimisation problem").
"""
import hashlib
import math
import time
from typing import Optional

import numpy as np

from .pairs import check_pairs
from .tau import find_tau_clique

__all__ = ["QPMProblem", "derive_redundancy"]


def _as_finite(name: str, x, ndim: int) -> np.ndarray:
    """Return ``x`` as a float64 array of ``ndim`` dims, rejecting NaN/inf with a clear message."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(
            f"{name} contains {bad} NaN/inf entries; clean the statistics (e.g. features that never "
            f"fire give NaN correlations: replace them with 0) before building the QPMProblem")
    return arr


def derive_redundancy(A: np.ndarray) -> np.ndarray:
    """R from A (docs/METHOD.md, "Pipeline", stage 2): cosine similarity of the rows of A, ``R / max|R|``,
    strict upper triangle only, negatives and diagonal set to 0."""
    norms = np.linalg.norm(A, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    An = A / safe[:, None]
    R = An @ An.T
    R[norms == 0, :] = 0.0
    R[:, norms == 0] = 0.0
    m = np.abs(R).max()
    if m > 0:
        R = R / m
    return _process_redundancy(R)


def _process_redundancy(R: np.ndarray) -> np.ndarray:
    """Strict upper triangle of ``max(R, R^T)`` with negatives clipped to 0 (accepts a symmetric
    matrix or either triangle)."""
    R = np.maximum(R, R.T)
    return np.triu(np.clip(R, 0.0, None), k=1)


class QPMProblem:
    """One instance of the QPM assignment problem.

    Args:
        A: (F, C) feature-class correlations, normalised (``A / max|A|``).
        B: (F,) locality bias or None (zeros).
        R: (F, F) feature redundancy or None (derived from A, :func:`derive_redundancy`). A given
            R is symmetrised with ``max(R, R^T)``; its strict upper triangle with negatives set to 0
            is used.
        n_features: n_f*, the number of selected features.
        n_per_class: n_wc, features per class.
        r_threshold: tau; pairs with ``R >= tau`` (and R > 0) are penalised. None runs the clique
            procedure of docs/METHOD.md (:func:`~qpm_timm.solver.tau.find_tau_clique`).
        pairs: CHiQPM's forced class pairs ((n, 2) class indices, e.g.
            :func:`~qpm_timm.solver.pairs.closest_class_pairs`): each must share exactly ``n_wc - 1``
            features (docs/METHOD.md, "CHiQPM: forced pairs"). None: plain QPM.
        idealize: with ``pairs``, the solution may instead satisfy CHiQPM's idealised condition: at least
            ``len(pairs)`` class pairs share ``n_wc - 1`` features (docs/METHOD.md, "CHiQPM: idealising").

    Derived (read-only): ``R`` (processed), ``R_tilde``, ``penalty`` (symmetric (F, F) matrix of
    the penalised R-tilde entries), ``tau``, ``clique`` (the tau-clique, None if tau was given),
    ``tau_time`` (seconds), ``z_a_factor`` (``1000 / (n_wc * C)``).
    """

    def __init__(self, A, B=None, R=None, n_features: int = 50, n_per_class: int = 5,
                 r_threshold: Optional[float] = None, pairs=None, idealize: bool = False):
        self.A = _as_finite("A", A, 2)
        F, C = self.A.shape
        if F == 0 or C == 0:
            raise ValueError(f"A must have at least one feature and one class, got shape {self.A.shape}")
        if B is None:
            self.B = np.zeros(F)
        else:
            self.B = _as_finite("B", B, 1)
            if self.B.shape != (F,):
                raise ValueError(f"B must have shape (F,) = ({F},) to match A of shape {self.A.shape}, "
                                 f"got {self.B.shape}")
        if R is None:
            self.R = derive_redundancy(self.A)
        else:
            R = _as_finite("R", R, 2)
            if R.shape != (F, F):
                raise ValueError(f"R must have shape (F, F) = ({F}, {F}) to match A of shape "
                                 f"{self.A.shape}, got {R.shape}")
            self.R = _process_redundancy(R)
        self.n_features = int(n_features)
        self.n_per_class = int(n_per_class)
        if self.n_features < 1 or self.n_per_class < 1:
            raise ValueError(f"n_features and n_per_class must be >= 1, got {n_features}, {n_per_class}")
        if self.n_features > F:
            raise ValueError(f"n_features={self.n_features} exceeds the number of features F={F} in A; "
                             f"lower n_features or pass statistics of more features")
        if self.n_per_class > self.n_features:
            raise ValueError(f"n_per_class={self.n_per_class} exceeds n_features={self.n_features}; "
                             f"every class needs n_per_class of the selected features")
        n_sets = math.comb(self.n_features, self.n_per_class)
        if C > n_sets:
            raise ValueError(
                f"{C} classes cannot all get different feature sets: only binomial({self.n_features}, "
                f"{self.n_per_class}) = {n_sets} exist; raise n_features or n_per_class")
        self.num_classes = C
        self.num_all_features = F
        self.pairs = check_pairs(pairs, C)
        self.idealize = bool(idealize)
        if self.idealize and self.pairs is None:
            raise ValueError("idealize=True needs forced pairs (pairs=...): it relaxes their constraints")
        self.z_a_factor = 1000.0 / (self.n_per_class * C)

        nz = self.R[self.R > 0]
        r_min = float(nz.min()) if nz.size else 0.0
        r_max = float(nz.max()) if nz.size else 0.0
        span = r_max - r_min
        # R-tilde = (R - r_min) / (r_max - r_min) (docs/METHOD.md); with a single distinct value the span is 0
        # and every penalised pair gets R-tilde = 0 (the smallest entry always maps to 0).
        self.R_tilde = np.where(self.R > 0, (self.R - r_min) / span if span > 0 else 0.0, 0.0)

        t0 = time.perf_counter()
        if r_threshold is None:
            self.tau, clique = find_tau_clique(self.R, self.n_features)
            self.clique = np.sort(np.asarray(clique, dtype=np.int64))
        else:
            tau = float(r_threshold)
            if not math.isfinite(tau):
                raise ValueError(f"r_threshold must be finite or None, got {r_threshold}")
            self.tau, self.clique = tau, None
        self.tau_time = time.perf_counter() - t0

        pen = np.where((self.R >= self.tau) & (self.R > 0), self.R_tilde, 0.0)
        self.penalty = pen + pen.T  # symmetric, zero diagonal
        self.b_max_gain = float(np.sort(self.B)[::-1][: self.n_features].sum())

    @property
    def shape(self):
        """(F, C)."""
        return self.A.shape

    def input_hash(self) -> str:
        """sha256 over A, B, processed R, tau, n_features, n_per_class and the forced pairs (cache key of a
        solution)."""
        h = hashlib.sha256()
        for arr in (self.A, self.B, self.R):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
            h.update(str(arr.shape).encode())
        h.update(repr((float(self.tau), self.n_features, self.n_per_class)).encode())
        if self.pairs is not None:  # plain problems keep the hash they always had
            h.update(self.pairs.tobytes())
            h.update(repr((self.pairs.shape, self.idealize)).encode())
        return h.hexdigest()

    def restricted(self, features, A=None) -> "QPMProblem":
        """The same problem over a sorted subset of its features, with the same R-tilde, penalties and tau, so that
        a selection inside the subset has the same Z_R and Z_B here as in ``self``; ``A`` ((len(features), C))
        replaces the subset's correlations (an edit's shifted values, docs/METHOD.md, "Editing")."""
        f = np.asarray(features, dtype=np.int64)
        if f.ndim != 1 or np.any(np.diff(f) <= 0) or (f.size and (f[0] < 0 or f[-1] >= self.num_all_features)):
            raise ValueError(f"features must be sorted distinct indices in [0, {self.num_all_features})")
        sub = QPMProblem(self.A[f] if A is None else A, B=self.B[f], R=self.R[np.ix_(f, f)],
                         n_features=self.n_features, n_per_class=self.n_per_class, r_threshold=self.tau)
        sub.R_tilde = self.R_tilde[np.ix_(f, f)]
        sub.penalty = self.penalty[np.ix_(f, f)]
        return sub

    def z_r(self, selected) -> float:
        """Z_R = -sum over penalised pairs f<g in S of R-tilde[f, g]."""
        s = np.asarray(selected, dtype=np.int64)
        return -0.5 * float(self.penalty[np.ix_(s, s)].sum())

    def objective(self, selected, assignment) -> float:
        """Z = Z_A + Z_R + Z_B in the original float units (QPM eq. objective).

        ``assignment[c, j]`` means class c uses feature ``selected[j]``. Constraints are not checked
        here (see :func:`~qpm_timm.solver.check_solution`).
        """
        s = np.asarray(selected, dtype=np.int64)
        W = np.asarray(assignment, dtype=bool)
        if W.shape != (self.num_classes, s.size):
            raise ValueError(f"assignment must have shape (C, len(selected)) = "
                             f"({self.num_classes}, {s.size}), got {W.shape}")
        z_a = self.z_a_factor * float((self.A[s, :].T * W).sum())
        return z_a + self.z_r(s) + float(self.B[s].sum())

    def upper_bound(self) -> float:
        """A cheap valid bound on Z: every class its top-n_wc over all F, Z_R <= 0, top-n_f* of B."""
        k = self.n_per_class
        top = -np.partition(-self.A, k - 1, axis=0)[:k]
        return self.z_a_factor * float(top.sum()) + self.b_max_gain
