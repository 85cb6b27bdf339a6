"""Certify mode: branch and bound on the selection around the set bound (docs/METHOD.md, "Certify mode").

A node fixes features in (``F1``) and out (``F0``); its bound is :func:`.setbound.set_lagrangian_bound` at those
fixings (valid for every solution of the node by the proof in :mod:`.setbound`: fixing features in makes Z_R
among them exact and charges every free feature its unpaid redundancy to them; fixing out removes the feature
from every class), with the root multipliers (the root LP's, :func:`.setbound.set_bound`). The global bound is
the largest bound of an open node (or the incumbent once none is open): every feasible solution better than the
incumbent lies in one open node (the two children of a node split its solutions by ``s_f``; a node is closed only
when its bound is at most the incumbent), so it bounds Z. Best-first order; ties by creation
order. Work is counted in deterministic units (node evaluations by their size, LP simplex iterations), never by
the clock; ``time_limit`` only cuts and says so. The state (incumbent, root multipliers, open nodes, counters,
curve) is written to ``state_path`` and a later call with the same path continues where it stopped: resumed or
not, the same effort explores the same nodes.
"""
import heapq
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_write
from .bound import lp_bound
from .heuristic import evaluate_selection
from .problem import QPMProblem
from .setbound import (
    SetMultipliers,
    pair_totals,
    selection_values,
    set_bound,
    set_lagrangian_bound,
    subset_tables,
)

__all__ = ["CertifyResult", "certify"]

_FORMAT = "qpm-certify-v1"
_NODE_UNIT = 2e-9        # units per node and (C * nsub * (L + L(L-1)/2) + 30 F C) (the node's arithmetic)
_LP_UNIT = 2e-4          # units per HiGHS simplex iteration (about a millisecond at CUB scale)
_SAVE_EVERY = 50         # nodes between two state files


@dataclass
class CertifyResult:
    """What certify proved: ``objective`` (the incumbent's Z), ``bound`` (proven), ``gap`` (``bound / objective -
    1``), ``selected`` / ``assignment`` (the incumbent), ``proven`` (gap <= target), ``nodes``, ``open_nodes``,
    ``effort`` / ``effort_used`` (units), ``cut_by_wall_clock``, ``curve`` ([(effort used, seconds, bound, Z)]),
    ``root_bound`` (the set bound before branching)."""
    objective: float
    bound: float
    selected: np.ndarray
    assignment: np.ndarray
    proven: bool
    nodes: int
    open_nodes: int
    effort: float
    effort_used: float
    cut_by_wall_clock: bool
    root_bound: float
    curve: List[Tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def gap(self) -> float:
        return max(0.0, self.bound / self.objective - 1.0) if self.objective > 0 else math.inf


def _node_charge(problem: QPMProblem, L: int) -> float:
    member, pmember, _, _ = subset_tables(L, problem.n_per_class)
    F, C = problem.shape
    return _NODE_UNIT * (C * member.shape[0] * (member.shape[1] + pmember.shape[1]) + 30 * F * C)


def _selection_order(problem: QPMProblem, m: SetMultipliers, F1: np.ndarray, F0: np.ndarray) -> np.ndarray:
    """The free features by decreasing node value ``g_f - sum_{h in F1} q[f, h]`` (index order on ties)."""
    g = selection_values(problem, m)
    q = np.maximum(problem.penalty - pair_totals(problem, m), 0.0)
    g = g - q[:, F1].sum(axis=1)
    free = np.ones(problem.num_all_features, dtype=bool)
    free[F1], free[F0] = False, False
    idx = np.flatnonzero(free)
    return idx[np.lexsort((idx, -g[idx]))]


class _State:
    """The branch and bound's resumable state (JSON)."""

    def __init__(self, problem: QPMProblem, m: SetMultipliers, S, W, Z: float, root: float):
        self.hash, self.m = problem.input_hash(), m
        self.S, self.W, self.Z, self.root = np.asarray(S), np.asarray(W, dtype=bool), float(Z), float(root)
        self.heap: List[Tuple[float, int, Tuple[int, ...], Tuple[int, ...]]] = [(-root, 0, (), ())]
        self.seq, self.nodes, self.used, self.curve = 1, 0, 0.0, []
        self.elapsed, self.leaves = 0.0, -math.inf

    def bound(self) -> float:
        """The global bound: the incumbent, the best open node, the best leaf not evaluated exactly."""
        return max(self.Z, self.leaves, -self.heap[0][0] if self.heap else -math.inf)

    def to_json(self) -> Dict:
        m = self.m
        return dict(format=_FORMAT, input_hash=self.hash, selected=self.S.tolist(), assignment=self.W.tolist(),
                    objective=self.Z, root_bound=self.root, leaves=self.leaves, seq=self.seq, nodes=self.nodes,
                    used=self.used, elapsed=self.elapsed, curve=self.curve,
                    heap=[[b, s, list(a), list(o)] for b, s, a, o in self.heap],
                    cand=m.cand.tolist(), nu=m.nu.tolist(), mu=m.mu.tolist(), lam=m.lam.tolist())

    @classmethod
    def from_json(cls, problem: QPMProblem, d: Dict) -> "_State":
        if d.get("format") != _FORMAT or d.get("input_hash") != problem.input_hash():
            raise ValueError("the certify state file belongs to another problem (input hash differs); "
                             "remove it or pass another state_path")
        m = SetMultipliers(cand=np.array(d["cand"], dtype=np.int64), nu=np.array(d["nu"]), mu=np.array(d["mu"]),
                           lam=np.array(d["lam"]).reshape(len(d["cand"]), -1))
        st = cls(problem, m, d["selected"], d["assignment"], d["objective"], d["root_bound"])
        st.heap = [(float(b), int(s), tuple(a), tuple(o)) for b, s, a, o in d["heap"]]
        heapq.heapify(st.heap)
        st.seq, st.nodes, st.used, st.elapsed = int(d["seq"]), int(d["nodes"]), float(d["used"]), float(d["elapsed"])
        st.curve = [tuple(x) for x in d["curve"]]
        st.leaves = float(d["leaves"])
        return st

    def save(self, path: Optional[str]) -> None:
        if path:
            with atomic_write(path) as fh:
                json.dump(self.to_json(), fh)


def certify(problem: QPMProblem, selected: Sequence[int], assignment: np.ndarray, *, target_gap: float = 0.01,
            effort: float = 100.0, time_limit: float = 600.0, candidates: int = 10, lp_rounds: int = 30,
            lp_iterations: int = 400_000, state_path: Optional[str] = None, progress: bool = False,
            bound: Optional[float] = None) -> CertifyResult:
    """Prove the incumbent ``(selected, assignment)`` within ``target_gap`` of the optimum, or as close as
    ``effort`` units allow (module docstring). ``bound``: a bound already known (e.g. the solve's), kept if lower.
    With forced pairs (not idealised) the node bounds include them (:mod:`.pairbound`); new incumbents are only
    sought for plain problems (a node's selection with its exact assignment). ``progress``: a tqdm bar with
    incumbent, bound and gap."""
    t0 = time.perf_counter()
    forced = problem.pairs is not None
    if state_path and os.path.exists(state_path):
        with open(state_path) as fh:
            st = _State.from_json(problem, json.load(fh))
    else:
        S = np.sort(np.asarray(selected, dtype=np.int64))
        W = np.asarray(assignment, dtype=bool)
        Z = problem.objective(S, W)
        _, nu = lp_bound(problem)
        sets = np.array([S[np.flatnonzero(W[c])] for c in range(problem.num_classes)])
        root, m, lp = set_bound(problem, nu, sets, candidates=candidates, rounds=lp_rounds, iterations=lp_iterations)
        st = _State(problem, m, S, W, Z, min(root, bound if bound is not None else math.inf))
        st.used = _LP_UNIT * lp.iterations
        st.curve.append((st.used, time.perf_counter() - t0, st.bound(), st.Z))
    charge = _node_charge(problem, st.m.cand.shape[1])
    n = problem.n_features
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=effort, initial=min(st.used, effort), unit="u", desc="certify", dynamic_ncols=True)
    cut = False
    start_elapsed = st.elapsed
    while st.heap and st.bound() > st.Z * (1 + target_gap) and st.used < effort:
        if time.perf_counter() - t0 >= time_limit:
            cut = True
            break
        nb, _, F1t, F0t = heapq.heappop(st.heap)
        F1, F0 = np.array(F1t, dtype=np.int64), np.array(F0t, dtype=np.int64)
        order = _selection_order(problem, st.m, F1, F0)
        st.nodes += 1
        st.used += charge
        if not forced and order.size >= n - F1.size:            # the node's own selection: a candidate incumbent
            S2 = np.sort(np.concatenate([F1, order[: n - F1.size]]))
            Z2, W2 = evaluate_selection(problem, S2)
            st.used += charge
            if Z2 > st.Z + 1e-9:
                st.S, st.W, st.Z = S2, W2, Z2
        if forced and F1.size == n:                             # a leaf whose forced assignment is not solved here
            st.leaves = max(st.leaves, -nb)
        if F1.size < n and order.size:
            f = int(order[0])
            for child in ((tuple(sorted(F1t + (f,))), F0t), (F1t, tuple(sorted(F0t + (f,))))):
                b = set_lagrangian_bound(problem, st.m, child[0], child[1])
                st.used += charge
                if b > st.Z * (1 + 1e-12):
                    heapq.heappush(st.heap, (-b, st.seq, child[0], child[1]))
                st.seq += 1
        st.heap = [x for x in st.heap if -x[0] > st.Z * (1 + 1e-12)]
        heapq.heapify(st.heap)
        st.elapsed = start_elapsed + time.perf_counter() - t0
        if st.nodes % 10 == 0:
            st.curve.append((st.used, st.elapsed, st.bound(), st.Z))
        if bar is not None:
            bar.n = min(st.used, effort)
            bar.set_postfix_str(f"Z {st.Z:.4f} bound {st.bound():.4f} gap {100 * (st.bound() / st.Z - 1):.3f} % "
                                f"nodes {st.nodes} open {len(st.heap)}")
        if st.nodes % _SAVE_EVERY == 0:
            st.save(state_path)
    if bar is not None:
        bar.close()
    st.elapsed = start_elapsed + time.perf_counter() - t0
    st.curve.append((st.used, st.elapsed, st.bound(), st.Z))
    st.save(state_path)
    bound_now = st.bound()
    return CertifyResult(objective=st.Z, bound=bound_now, selected=st.S, assignment=st.W,
                         proven=bound_now <= st.Z * (1 + target_gap), nodes=st.nodes, open_nodes=len(st.heap),
                         effort=float(effort), effort_used=st.used, cut_by_wall_clock=cut, root_bound=st.root,
                         curve=list(st.curve))
