"""CHiQPM's forced class pairs: which pairs, their validation and how many features two classes share.

docs/METHOD.md, "CHiQPM: forced pairs": the ``int(C * rho)`` class pairs whose columns of ``A`` (``A / max|A|``,
all dense features) are closest in Euclidean distance must share exactly ``n_wc - 1`` features.
"""
from typing import Optional, Sequence

import numpy as np

__all__ = ["closest_class_pairs", "check_pairs", "pair_shares", "sharing_pairs"]


def closest_class_pairs(A: np.ndarray, rho: float) -> np.ndarray:
    """The ``int(C * rho)`` closest class pairs by Euclidean distance of the columns of ``A`` (F, C), as an
    (n, 2) int array ``(a, b)``, ``a < b``, closest first (ties: lower ``a``, then lower ``b``).

    Every unordered pair at most once, no self-pair; a class may be in several pairs. Scaling ``A`` does not
    change the pairs (the authors normalise the distances by their maximum, which keeps their order).
    """
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"A must be (F, C), got shape {A.shape}")
    if not (isinstance(rho, (int, float)) and np.isfinite(rho) and rho >= 0):
        raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
    C = A.shape[1]
    n = int(C * rho)
    a, b = np.triu_indices(C, k=1)
    if n > a.size:
        raise ValueError(f"rho={rho} asks for int({C} * {rho}) = {n} pairs but {C} classes have only {a.size}; "
                         f"lower rho")
    sq = (A * A).sum(axis=0)
    d2 = np.maximum(sq[a] + sq[b] - 2.0 * (A[:, a] * A[:, b]).sum(axis=0), 0.0)
    order = np.lexsort((b, a, np.round(d2, 12)))[:n]
    return np.stack([a[order], b[order]], axis=1).astype(np.int64)


def check_pairs(pairs: Optional[Sequence], num_classes: int) -> Optional[np.ndarray]:
    """Explicit pairs as a sorted-within-pair (n, 2) int array; ValueError for a self-pair, a repeated pair or a
    class index out of range. None stays None."""
    if pairs is None:
        return None
    arr = np.asarray(pairs)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pairs must be a list of (class, class) integer pairs, got shape {arr.shape}, "
                         f"dtype {arr.dtype}")
    arr = np.sort(arr.astype(np.int64), axis=1)
    if arr.min() < 0 or arr.max() >= num_classes:
        raise ValueError(f"pair class indices must lie in [0, {num_classes}), got {arr.min()}..{arr.max()}")
    same = np.flatnonzero(arr[:, 0] == arr[:, 1])
    if same.size:
        raise ValueError(f"pair {tuple(arr[same[0]])} pairs a class with itself; a forced pair needs two classes")
    _, first, counts = np.unique(arr, axis=0, return_index=True, return_counts=True)
    if counts.max() > 1:
        raise ValueError(f"pair {tuple(arr[first[np.argmax(counts)]])} is given {counts.max()} times; "
                         f"give every pair once")
    return arr


def pair_shares(W: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Number of features the two classes of every pair share, for a binary assignment ``W`` (C, n)."""
    W = np.asarray(W, dtype=np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return (W[pairs[:, 0]] * W[pairs[:, 1]]).sum(axis=1)


def sharing_pairs(W: np.ndarray, shared: int) -> np.ndarray:
    """All class pairs ``(a, b)``, ``a < b``, whose rows of ``W`` (C, n) share exactly ``shared`` features."""
    W = np.asarray(W, dtype=np.int64)
    common = W @ W.T
    a, b = np.nonzero(np.triu(common == shared, k=1))
    return np.stack([a, b], axis=1).astype(np.int64)
