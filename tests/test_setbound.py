"""The set bound (qpm_timm/solver/setbound.py, pairbound.py): valid against exhaustive optima on tiny instances,
with the redundancy term, with fixed features and with CHiQPM's forced pairs; equal to its LP; below today's bound."""
import itertools
import math

import numpy as np
import pytest

from qpm_timm.solver import QPMProblem
from qpm_timm.solver.bound import lagrangian_bound, lp_bound
from qpm_timm.solver.heuristic import best_start
from qpm_timm.solver.setbound import (
    SetMultipliers,
    candidate_lists,
    set_bound,
    set_lagrangian_bound,
    start_multipliers,
)
from qpm_timm.solver.synthetic import synthetic_statistics


def _exhaustive(p: QPMProblem, fixed_in=(), fixed_out=()) -> float:
    """max Z over every S (with ``fixed_in`` in, ``fixed_out`` out) and every assignment of distinct n_wc-sets,
    each forced pair sharing exactly n_wc - 1 features."""
    F, C = p.A.shape
    n, k = p.n_features, p.n_per_class
    best = -math.inf
    for S in itertools.combinations(range(F), n):
        if not set(fixed_in) <= set(S) or set(fixed_out) & set(S):
            continue
        S = np.array(S)
        sets = [frozenset(S[list(t)].tolist()) for t in itertools.combinations(range(n), k)]
        val = np.array([[p.A[list(t), c].sum() for t in sets] for c in range(C)])
        for choice in itertools.permutations(range(len(sets)), C):
            if p.pairs is not None and any(len(sets[choice[a]] & sets[choice[b]]) != k - 1 for a, b in p.pairs):
                continue
            z_a = val[np.arange(C), list(choice)].sum()
            best = max(best, p.z_a_factor * z_a + p.z_r(S) + p.B[S].sum())
    return best


def _tiny(seed: int, with_b: bool = True, with_r: bool = True, pairs=None, F: int = 7, C: int = 4) -> QPMProblem:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(F, C))
    A /= np.abs(A).max()
    B = rng.normal(size=F) * 0.3 if with_b else None
    R = np.abs(rng.normal(size=(F, F))) if with_r else None
    return QPMProblem(A, B, R, n_features=4, n_per_class=2, r_threshold=0.0 if with_r else None, pairs=pairs)


def _incumbent_sets(p: QPMProblem) -> np.ndarray:
    S, _, W = best_start(p)
    return np.array([S[np.flatnonzero(W[c])] for c in range(p.num_classes)])


def _random_multipliers(p: QPMProblem, cand: np.ndarray, rng) -> SetMultipliers:
    C, L = cand.shape
    return SetMultipliers(cand=cand, nu=rng.normal(size=C) * 50, mu=rng.normal(size=(C, L)) * 50,
                          lam=np.abs(rng.normal(size=(C, L * (L - 1) // 2))) * 5)


@pytest.mark.parametrize("with_b,with_r", [(False, True), (True, True), (True, False)])
def test_set_bound_is_never_below_the_exhaustive_optimum(with_b, with_r):
    """With the redundancy term: the chosen multipliers and random ones give D >= the true optimum; the chosen
    ones never exceed today's LP bound."""
    for seed in range(4):
        p = _tiny(seed, with_b, with_r)
        opt = _exhaustive(p)
        lb, nu = lp_bound(p)
        bound, m, _ = set_bound(p, nu, _incumbent_sets(p), candidates=4)
        assert opt - 1e-9 <= bound <= lb + 1e-9
        rng = np.random.default_rng(seed)
        for _ in range(5):
            assert set_lagrangian_bound(p, _random_multipliers(p, m.cand, rng)) >= opt - 1e-9


def test_node_bound_is_valid_with_features_fixed_in_and_out():
    """D of a node bounds the best solution with its features fixed (every split of 2 fixed features)."""
    p = _tiny(5)
    lb, nu = lp_bound(p)
    _, m, _ = set_bound(p, nu, _incumbent_sets(p), candidates=4)
    rng = np.random.default_rng(0)
    for fixed_in, fixed_out in [((0,), (1,)), ((2, 3), ()), ((), (4, 5)), ((1, 6), (0, 2))]:
        opt = _exhaustive(p, fixed_in, fixed_out)
        assert set_lagrangian_bound(p, m, fixed_in, fixed_out) >= opt - 1e-9
        assert set_lagrangian_bound(p, _random_multipliers(p, m.cand, rng), fixed_in, fixed_out) >= opt - 1e-9


def test_infeasible_node_has_bound_minus_infinity():
    p = _tiny(0)
    m = start_multipliers(p, candidate_lists(p, 3), lp_bound(p)[1])
    assert set_lagrangian_bound(p, m, fixed_in=(0,), fixed_out=(0,)) == -math.inf
    assert set_lagrangian_bound(p, m, fixed_out=(0, 1, 2, 3)) == -math.inf


def test_start_multipliers_are_never_above_todays_bound():
    A, B = synthetic_statistics(40, 8, seed=1)
    p = QPMProblem(A, B, n_features=6, n_per_class=2)
    lb, nu = lp_bound(p)
    m = start_multipliers(p, candidate_lists(p, 5), nu)
    assert set_lagrangian_bound(p, m) <= lagrangian_bound(p, nu) + 1e-9


def test_set_bound_reaches_its_lp_and_sees_the_redundancy_term():
    """Column generation ends with D equal to the LP optimum (strong duality: the multipliers are that LP's
    duals), and on a synthetic instance the bound is below today's (which drops Z_R)."""
    A, B = synthetic_statistics(48, 12, seed=3)
    p = QPMProblem(A, B, n_features=8, n_per_class=3)
    lb, nu = lp_bound(p)
    bound, m, lp = set_bound(p, nu, _incumbent_sets(p), candidates=6, rounds=100)
    assert lp.price(4) == 0                                   # no column left with a positive reduced cost
    assert set_lagrangian_bound(p, m) == pytest.approx(lp.h.getObjectiveValue(), rel=1e-6)
    _, z, _ = best_start(p)
    assert z <= bound < lb - 0.5


@pytest.mark.parametrize("pairs", [[(0, 1)], [(0, 1), (1, 2)], [(0, 1), (2, 3), (1, 3)]])
def test_pair_bound_is_valid_and_never_above_the_pair_free_bound(pairs):
    for seed in range(3):
        p = _tiny(seed, pairs=pairs, C=4)
        free = _tiny(seed, C=4)
        opt = _exhaustive(p)
        lb, nu = lp_bound(free)
        _, m, _ = set_bound(free, nu, _incumbent_sets(free), candidates=4)
        rng = np.random.default_rng(seed)
        for mult in (m, _random_multipliers(p, m.cand, rng)):
            with_pairs = set_lagrangian_bound(p, mult)
            assert opt - 1e-9 <= with_pairs <= set_lagrangian_bound(p, mult, with_pairs=False) + 1e-9
