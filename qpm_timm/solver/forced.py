"""CHiQPM's assignment for a fixed selection: forced pairs (exact), the idealising step, uniqueness added lazily.

docs/METHOD.md, "CHiQPM: forced pairs" and "CHiQPM: idealising". For a fixed selection ``S`` (``n`` columns) the
CP-SAT model has one boolean ``W[c, j]`` per class and selected feature, ``sum_j W[c, j] = n_wc`` and the objective
``z_a_factor * sum A[S[j], c] W[c, j]`` (``Z_R`` and ``Z_B`` are constant for a fixed ``S``).

* **Forced** (:func:`assign_forced`): for every forced pair ``(a, b)``, ``sum_j (W[a, j] AND W[b, j]) = n_wc - 1``
  with the AND exact (``y <=> W[a, j] AND W[b, j]``).
* **Idealised** (:func:`assign_idealized`, the authors' ``idealize_shares`` done as they describe it): the
  candidates are the class pairs that share ``n_wc - 1`` features in the forced solution; a boolean per candidate
  may claim ``share >= n_wc - 1``; at least ``len(pairs)`` of them must. The forced solution satisfies this, so
  the idealised objective is never lower.
* **Groups and uniqueness, lazily.** The classes are split into groups that no constraint couples (the connected
  components of the forced or candidate pairs; every other class alone, with its ``n_wc`` best features). Each
  group is one CP-SAT model; inside it, each pair of classes with the same row gets the exact constraint
  ``sum_j (W[c, j] AND W[d, j]) <= n_wc - 1`` and the group is solved again, hinted with its last answer, until
  no two of its rows agree. Classes of different groups with the same row merge their groups, which are solved
  again, until no two rows agree at all (the authors add uniqueness lazily too). Each group's model is a
  relaxation of the whole problem restricted to it, so when every group is proven optimal, the assembled
  assignment is optimal for ``S``. A group of forced pairs starts from a feasible assignment (:func:`_embed`), which
  stays its answer when CP-SAT finds no better one within its share of the effort.

Whether forced pairs can be satisfied at all does not depend on ``S`` or ``A`` (the constraints see ``n`` symmetric
columns), so an infeasible model proves the request infeasible for every selection; :class:`PairsInfeasible` says
so. Every solve is bounded by CP-SAT's deterministic time (:func:`.cpsat.run_sat`).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from ortools.sat.python import cp_model

from .cpsat import _scale, run_sat, shared_vars
from .pairs import pair_shares, sharing_pairs
from .problem import QPMProblem

__all__ = ["PairsInfeasible", "assign_forced", "assign_idealized"]


class PairsInfeasible(ValueError):
    """The forced pairs cannot all share ``n_wc - 1`` features (or no such assignment was found in the effort)."""


class _Group:
    """The CP-SAT model of one group of classes (module docstring) over the ``n`` selected columns."""

    def __init__(self, classes: Sequence[int], V: np.ndarray, k: int):
        self.classes, self.k = list(classes), k
        self.m = cp_model.CpModel()
        self.W = {c: [self.m.new_bool_var(f"w{c}_{j}") for j in range(V.shape[0])] for c in self.classes}
        Q = _scale(float(np.abs(V[:, self.classes]).max()))
        terms = []
        for c in self.classes:
            self.m.add(sum(self.W[c]) == k)
            terms += [q * w for q, w in zip(np.round(V[:, c] * Q).astype(np.int64).tolist(), self.W[c]) if q]
        self.m.maximize(sum(terms))

    def force(self, pairs: np.ndarray) -> None:
        """Every pair shares exactly ``n_wc - 1`` features."""
        for a, b in pairs:
            self.m.add(sum(shared_vars(self.m, self.W[int(a)], self.W[int(b)])) == self.k - 1)

    def at_least(self, candidates: np.ndarray, count: int) -> None:
        """At least ``count`` of the candidate pairs share ``n_wc - 1`` (or more) features."""
        claims = []
        for a, b in candidates:
            claim = self.m.new_bool_var("")
            self.m.add(sum(shared_vars(self.m, self.W[int(a)], self.W[int(b)], ge_and=False)) >= self.k - 1
                       ).only_enforce_if(claim)
            claims.append(claim)
        self.m.add(sum(claims) >= count)

    def solve(self, hint: np.ndarray, det_time: float, workers: int, seed: int, wall_left: Callable[[], float]
              ) -> Tuple[Optional[np.ndarray], int, float, bool, bool]:
        """Solve with uniqueness inside the group added lazily; returns (rows (len(classes), n) bool or None,
        last CP-SAT status, deterministic time spent, proven optimal, cut by the wall clock)."""
        spent, cut = 0.0, False
        while True:
            self.m.clear_hints()
            for c in self.classes:
                for v, x in zip(self.W[c], hint[c]):
                    self.m.add_hint(v, bool(x))
            run = run_sat(self.m, workers, seed, max(1e-3, det_time - spent), wall_left())
            spent += run.spent
            cut |= run.cut_by_wall_clock
            if not run.has_solution:
                return None, run.status, spent, False, cut
            rows = np.array([[run.solver.boolean_value(v) for v in self.W[c]] for c in self.classes], dtype=bool)
            collisions = _collisions(rows)
            if not collisions:
                return rows, run.status, spent, run.optimal, cut
            hint = hint.copy()
            for i, c in enumerate(self.classes):
                hint[c] = rows[i]
            for i, j in collisions:
                c, d = self.classes[i], self.classes[j]
                self.m.add(sum(shared_vars(self.m, self.W[c], self.W[d], le_and=False)) <= self.k - 1)


def _collisions(W: np.ndarray) -> List[Tuple[int, int]]:
    """Row pairs (i, j), i < j, that are identical."""
    groups: Dict[bytes, List[int]] = {}
    for i, row in enumerate(W):
        groups.setdefault(row.tobytes(), []).append(i)
    return [(g[i], g[j]) for g in groups.values() for i in range(len(g)) for j in range(i + 1, len(g))]


def _components(num_classes: int, pairs: np.ndarray) -> np.ndarray:
    """Group label of every class: connected components of ``pairs`` (union-find; labels = smallest member)."""
    parent = np.arange(num_classes)

    def root(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(c) for c in range(num_classes)])


def _top_rows(V: np.ndarray, k: int) -> np.ndarray:
    """(C, n) bool: every class's ``k`` best columns (stable ties)."""
    order = np.argsort(-V, axis=0, kind="stable")[:k]
    W = np.zeros(V.T.shape, dtype=bool)
    np.put_along_axis(W, order.T, True, axis=1)
    return W


_EMBED_NODES = 20_000  # search nodes of the forced pairs' start (:func:`_embed`): bounded work, deterministic
_ASCENT_PASSES = 20    # and at most this many coordinate-ascent passes over it


def _embed(V: np.ndarray, k: int, classes: np.ndarray, pairs: np.ndarray, taken: set) -> Optional[np.ndarray]:
    """A feasible start for one group of forced pairs (rows (len(classes), n) bool), or None when none is found in
    ``_EMBED_NODES`` nodes: depth-first, always extending the class with the most placed partners; a class's
    candidates are its best sets (no placed partner) or the one-feature swaps of a placed partner's set that
    share ``k - 1`` with every placed partner, best first by ``V``; every set differs from the others and from
    ``taken``. Then coordinate ascent: each class in turn takes its best set among the swaps of a partner's set
    that keep every pair of it exact, until a pass changes nothing."""
    n = V.shape[0]
    partners: Dict[int, List[int]] = {int(c): [] for c in classes}
    for a, b in pairs:
        partners[int(a)].append(int(b))
        partners[int(b)].append(int(a))
    rows: Dict[int, frozenset] = {}
    used = set(taken)
    nodes = [0]

    def candidates(c: int) -> List[frozenset]:
        placed = [rows[d] for d in partners[c] if d in rows]
        if not placed:
            order = np.argsort(-V[:, c], kind="stable")
            opts = [frozenset(int(j) for j in order[:k])]
            opts += [frozenset(int(j) for j in order[:k - 1]) | {int(x)} for x in order[k:]]
        else:
            base = placed[0]
            opts = [base - {drop} | {add} for drop in sorted(base) for add in range(n) if add not in base]
            opts = [t for t in opts if all(len(t & r) == k - 1 for r in placed[1:])]
        opts = [t for t in opts if t not in used]
        return sorted(opts, key=lambda t: (-float(V[sorted(t), c].sum()), sorted(t)))

    def place() -> bool:
        todo = [c for c in partners if c not in rows]
        if not todo:
            return True
        c = max(todo, key=lambda d: (sum(x in rows for x in partners[d]), len(partners[d]), -d))
        for t in candidates(c):
            nodes[0] += 1
            if nodes[0] > _EMBED_NODES:
                return False
            rows[c] = t
            used.add(t)
            if place():
                return True
            del rows[c]
            used.discard(t)
        return False

    if not place():
        return None
    for _ in range(_ASCENT_PASSES):  # coordinate ascent: every class its best set given its partners' sets
        moved = False
        for c in sorted(partners):
            used.discard(rows[c])
            placed = [rows[d] for d in partners[c]]
            opts = [placed[0] - {drop} | {add} for drop in sorted(placed[0]) for add in range(n)
                    if add not in placed[0]]
            opts = [t for t in opts if t not in used and all(len(t & r) == k - 1 for r in placed[1:])]
            best = max(opts + [rows[c]], key=lambda t: (float(V[sorted(t), c].sum()), t == rows[c]))
            moved |= best != rows[c]
            rows[c] = best
            used.add(best)
        if not moved:
            break
    out = np.zeros((len(classes), n), dtype=bool)
    for i, c in enumerate(classes):
        out[i, sorted(rows[int(c)])] = True
    return out


def _assign(problem: QPMProblem, S: np.ndarray, coupled: np.ndarray,
            constrain: Callable[[_Group, np.ndarray], Tuple[np.ndarray, bool]],
            hint: Optional[np.ndarray], det_time: float, workers: int, seed: int, wall_left: Callable[[], float],
            what: str) -> Tuple[np.ndarray, float, bool, bool]:
    """The group scheme of the module docstring; ``coupled``: the class pairs that ``constrain`` ties together;
    ``constrain(group, start)`` adds a group's constraints and returns the start rows of its classes and whether
    they satisfy them (then they are the answer when CP-SAT finds nothing in its share of ``det_time``).
    Returns (W (C, n) bool, deterministic time spent, proven optimal for ``S``, cut by the wall clock)."""
    V = problem.z_a_factor * problem.A[np.sort(S)]
    k, C = problem.n_per_class, problem.num_classes
    W = _top_rows(V, k)
    start = W.copy() if hint is None else np.asarray(hint, dtype=bool).copy()
    label = _components(C, coupled)
    solved: Dict[int, bool] = {}  # group label -> proven optimal
    spent, cut = 0.0, False
    while True:
        todo = [g for g in np.unique(label) if g not in solved and (label == g).sum() > 1]
        for i, g in enumerate(todo):
            classes = np.flatnonzero(label == g)
            group = _Group(classes, V, k)
            start[classes], feasible = constrain(group, start)
            share = (det_time - spent) / (len(todo) - i)
            rows, status, used, opt, was_cut = group.solve(start, share, workers, seed, wall_left)
            spent, cut = spent + used, cut or was_cut
            if rows is None and feasible and not _collisions(start[classes]):
                rows, opt = start[classes], False  # CP-SAT found nothing better than the feasible start in time
            if rows is None:
                if status == cp_model.INFEASIBLE:
                    raise PairsInfeasible(_infeasible_message(problem, what))
                raise PairsInfeasible(
                    f"no assignment satisfying {what} was found within the solver's effort ({spent:.3g} "
                    f"deterministic units{', cut by the time limit' if cut else ''}); raise the effort or the "
                    f"time limit, or force fewer pairs")
            W[classes] = rows
            start[classes] = rows
            solved[g] = opt
        collisions = _collisions(W)
        if not collisions:
            return W, spent, all(solved.values()), cut
        for c, d in collisions:  # merge the two groups
            a, b = sorted((label[c], label[d]))
            solved.pop(a, None)
            solved.pop(b, None)
            label[label == b] = a


def _infeasible_message(problem: QPMProblem, what: str) -> str:
    return (f"{what} cannot be satisfied: no assignment of distinct sets of n_per_class={problem.n_per_class} out "
            f"of n_features={problem.n_features} features lets every forced pair share exactly "
            f"{problem.n_per_class - 1} (proven by CP-SAT; this does not depend on the statistics or the "
            f"selection). Force fewer pairs (lower rho), or raise n_features")


def assign_forced(problem: QPMProblem, S: np.ndarray, hint: Optional[np.ndarray], det_time: float, workers: int,
                  seed: int, wall_left: Callable[[], float]) -> Tuple[np.ndarray, float, bool, bool]:
    """The best assignment for ``S`` in which every forced pair shares exactly ``n_wc - 1`` features (module
    docstring); returns (W (C, n) bool, deterministic time, proven optimal for ``S``, cut by the wall clock).
    Raises :class:`PairsInfeasible` for a request that cannot be met or no solution within ``det_time``."""
    pairs = problem.pairs

    def constrain(group: _Group, start: np.ndarray) -> Tuple[np.ndarray, bool]:
        inside = pairs[np.isin(pairs[:, 0], group.classes)]
        group.force(inside)
        classes = np.asarray(group.classes)
        if np.all(pair_shares(start, inside) == problem.n_per_class - 1):
            return start[classes], True
        others = np.setdiff1d(np.arange(problem.num_classes), classes)
        rows = _embed(problem.z_a_factor * problem.A[np.sort(S)], problem.n_per_class, classes, inside,
                      {frozenset(np.flatnonzero(r).tolist()) for r in start[others]})
        return (start[classes], False) if rows is None else (rows, True)

    return _assign(problem, S, pairs, constrain, hint, det_time, workers, seed, wall_left,
                   f"the {len(pairs)} forced pairs")


def _release(V: np.ndarray, k: int, W: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """The idealised step's start: from the forced ``W``, classes in order of what they would gain (ties: lower
    index) take their ``k`` best columns where no other class has that set and at least ``count`` candidate pairs
    still share ``k - 1`` features. Feasible for the idealised constraints by construction."""
    W = W.copy()
    top = _top_rows(V, k)
    gain = (V.T * top).sum(axis=1) - (V.T * W).sum(axis=1)
    taken = {row.tobytes() for row in W}
    for c in np.lexsort((np.arange(len(gain)), -gain)):
        if gain[c] <= 1e-12 or top[c].tobytes() in taken:
            continue
        old = W[c].copy()
        W[c] = top[c]
        if (pair_shares(W, candidates) == k - 1).sum() >= count:
            taken.discard(old.tobytes())
            taken.add(top[c].tobytes())
        else:
            W[c] = old
    return W


def assign_idealized(problem: QPMProblem, S: np.ndarray, W_forced: np.ndarray, det_time: float, workers: int,
                     seed: int, wall_left: Callable[[], float]) -> Tuple[np.ndarray, float, bool, bool]:
    """CHiQPM's idealising step for ``S`` (module docstring), started from the forced solution ``W_forced`` relaxed
    greedily (:func:`_release`), which stays the answer when CP-SAT finds no better one within ``det_time``."""
    candidates = sharing_pairs(W_forced, problem.n_per_class - 1)
    # one group: the claims of all candidates are counted together
    coupled = np.stack([np.full(len(candidates), candidates[0, 0]), candidates[:, 1]], axis=1) \
        if len(candidates) else candidates
    coupled = np.concatenate([coupled, candidates])

    def constrain(group: _Group, start: np.ndarray) -> Tuple[np.ndarray, bool]:
        group.at_least(candidates, len(problem.pairs))
        return start[group.classes], True

    V = problem.z_a_factor * problem.A[np.sort(S)]
    start = _release(V, problem.n_per_class, W_forced, candidates, len(problem.pairs))
    return _assign(problem, S, coupled, constrain, start, det_time, workers, seed, wall_left,
                   f"at least {len(problem.pairs)} of the {len(candidates)} pairs sharing {problem.n_per_class - 1} "
                   f"features")
