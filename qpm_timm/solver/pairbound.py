"""CHiQPM's forced pairs inside the set bound: an edge-wise decomposition of the classes' part.

docs/METHOD.md, "The set bound", forced pairs. In :mod:`.setbound` the classes' part of the bound is
``sum_c h_c`` with ``h_c = max_J vals[c, J]``, ``vals`` from :func:`.setbound.class_values` (J a candidate set of
class c, ``|J| <= n_wc``). A forced pair ``(a, b)`` requires ``|T_a ∩ T_b| = n_wc - 1``. Let ``d_c`` be the number
of forced pairs class c is in. Then

    P = sum_{c in no pair} h_c + sum_{pairs (a, b)} max over compatible (J_a, J_b) of
        (vals[a, J_a] / d_a + vals[b, J_b] / d_b),

where ``(J_a, J_b)`` is *compatible* if ``|J_a ∩ J_b| <= n_wc - 1`` and ``|J_a ∩ J_b| + (n_wc - |J_a|) +
(n_wc - |J_b|) >= n_wc - 1`` (intersections counted in feature indices; the candidate lists may differ).

**Validity: P bounds the classes' part of every solution that satisfies the pairs**, i.e. with ``v_c(T_c) =
sum_{f in T_c} (a[f, c] - mu[c, f]) - sum_{f<g in J_c} lam[c, fg] <= vals[c, J_c]`` (``J_c = T_c ∩ L_c``, step 3
of :mod:`.setbound`), ``sum_c v_c(T_c) <= P``. Proof: ``sum_c v_c = sum_{c in no pair} v_c + sum_{pairs (a, b)}
(v_a / d_a + v_b / d_b)`` (each paired class's value split evenly over its pairs). For a pair, ``J_a ∩ J_b`` is
inside ``T_a ∩ T_b``, so ``|J_a ∩ J_b| <= n_wc - 1``; and ``T_a ∩ T_b`` is ``J_a ∩ J_b`` plus features of
``T_a \\ J_a`` or of ``T_b \\ J_b``, at most ``(n_wc - |J_a|) + (n_wc - |J_b|)`` more, so the second condition holds:
the solution's ``(J_a, J_b)`` is compatible and its term is at most the maximum. Every term is maximised on its
own (a relaxation). So ``D`` with ``sum_c h_c`` replaced by P bounds the problem with the pairs; ``P <= sum_c h_c``
(each pair term is at most ``h_a / d_a + h_b / d_b``), so it is never weaker than the pair-free bound.
"""
import numpy as np

__all__ = ["paired_class_part"]


def _pair_term(member: np.ndarray, sizes: np.ndarray, cand_a: np.ndarray, cand_b: np.ndarray, va: np.ndarray,
               vb: np.ndarray, k: int) -> float:
    """``max over compatible (J_a, J_b) of va[J_a] + vb[J_b]`` (the module docstring; va, vb already weighted)."""
    common, ia, ib = np.intersect1d(cand_a, cand_b, return_indices=True)
    if common.size:
        inter = member[:, ia] @ member[:, ib].T                     # (nsub, nsub) |J_a ∩ J_b|
    else:
        inter = np.zeros((member.shape[0], member.shape[0]))
    room = (k - sizes)[:, None] + (k - sizes)[None, :]
    ok = (inter <= k - 1) & (inter + room >= k - 1)
    total = np.where(ok, va[:, None] + vb[None, :], -np.inf)
    return float(total.max())


def paired_class_part(pairs: np.ndarray, cand: np.ndarray, vals: np.ndarray, member: np.ndarray,
                      sizes: np.ndarray, k: int) -> float:
    """P of the module docstring for the forced ``pairs`` ((n, 2) classes), the candidates ``cand`` (C, L), the
    class values ``vals`` (C, nsub) of :func:`.setbound.class_values` and the subsets' ``member`` (nsub, L) and
    ``sizes`` (:func:`.setbound.subset_tables`)."""
    C = cand.shape[0]
    degree = np.bincount(np.asarray(pairs).ravel(), minlength=C)
    h = vals.max(axis=1)
    total = float(h[degree == 0].sum())
    for a, b in np.asarray(pairs, dtype=np.int64):
        total += _pair_term(member, sizes, cand[a], cand[b], vals[a] / degree[a], vals[b] / degree[b], k)
    return total
