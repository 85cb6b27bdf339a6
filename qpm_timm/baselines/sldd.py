"""SLDD-Model ("Take 5", Norrenbrock et al. 2023): feature selection by a group-sparse path, then an elastic-net
path on the selected, normalised features, cut to ``n_wc * C`` nonzeros (docs/METHOD.md, "Baselines: SLDD-Model").
"""
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .features import PooledFeatures, fit_split
from .layer import SparseLayer, normalised
from .path import ELASTIC_NET, GROUP_SELECTION, PathPoint, PathSettings, regularization_path

__all__ = ['check_selection_size', 'select_features', 'select_from_features', 'sparsest_enough', 'keep_largest',
           'fit_sldd', 'SLDD_DENSITY']

SLDD_DENSITY = 0.5  # the path point has at most n_wc / 0.5 nonzeros per class before the cut (the authors' factor)


def check_selection_size(n_features: int, num_features: int, method: str) -> None:
    """``1 <= n_f* <= F``, else a ValueError naming the sizes and what to change."""
    if not 1 <= n_features <= num_features:
        raise ValueError(f'{method} selects n_features={n_features} of the backbone\'s {num_features} feature '
                         f'channels; choose --n-features between 1 and {num_features}.')


def select_features(x: torch.Tensor, y: torch.Tensor, num_classes: int, n_features: int, seed: int = 0,
                    settings: PathSettings = GROUP_SELECTION) -> Tuple[np.ndarray, Dict]:
    """SLDD's feature selection (docs/METHOD.md, "Baselines: SLDD-Model", step 1): walk glm-saga's group-sparse path
    (a feature's weights over all classes are one group) from the largest penalty down; a feature enters when its
    column becomes non-zero, several entering at one point in the order of their column norm; stop once
    ``n_features`` are in. Returns the selected features (ascending) and the walk's record."""
    check_selection_size(n_features, x.shape[1], 'the group-sparse selection')
    order: List[int] = []

    def enough(point: PathPoint) -> bool:
        norms = point.weight.norm(dim=0)
        new = [int(f) for f in torch.argsort(-norms, stable=True) if norms[f] > 0 and int(f) not in order]
        order.extend(new[:n_features - len(order)])
        return len(order) >= n_features

    points = regularization_path(x, y, num_classes, settings, seed=seed, stop=enough)
    if len(order) < n_features:
        raise ValueError(f'the group-sparse path admitted only {len(order)} of the n_features={n_features} features '
                         f'in its {settings.k} points (down to {settings.epsilon:g} x the largest penalty); lower '
                         f'--n-features or let the path go further (a smaller epsilon).')
    return np.sort(np.asarray(order)), dict(entry_order=order, points=len(points), lam=points[-1].lam)


def select_from_features(features: PooledFeatures, num_classes: int, n_features: int, seed: int = 0,
                         settings: PathSettings = GROUP_SELECTION) -> Tuple[np.ndarray, Dict]:
    """:func:`select_features` on the fitting split of the dense model's pooled features, normalised by their
    training mean/std (SLDD's step 1; Q-SENN's round 0)."""
    check_selection_size(n_features, features.num_features, 'the group-sparse selection')
    mean, std = features.mean_std()
    fit, _ = fit_split(len(features.labels), seed)
    return select_features(normalised(features.pooled[fit], mean, std), torch.as_tensor(features.labels[fit]),
                           num_classes, n_features, seed, settings)


def sparsest_enough(points: List[PathPoint], max_per_class: float, method: str) -> PathPoint:
    """The path point with the largest mean number of nonzeros per class that is still ``<= max_per_class``
    (all-zero points excluded), else a ValueError naming the sizes."""
    fitting = [p for p in points if 0 < p.nonzeros_per_class <= max_per_class]
    if not fitting:
        first = next((p for p in points if p.nonzeros), None)
        found = f'its first non-empty point has {first.nonzeros_per_class:.2f}' if first else 'every point is empty'
        raise ValueError(f'{method}: the regularisation path has no point with between 0 and {max_per_class:g} '
                         f'nonzero weights per class ({found}); raise --n-per-class or use more path points '
                         f'(finer penalty steps).')
    return max(fitting, key=lambda p: (p.nonzeros_per_class, -p.index))


def keep_largest(weight: torch.Tensor, count: int) -> torch.Tensor:
    """``weight`` with all but its ``count`` largest ``|w|`` set to 0 (ties: the earlier entry in row-major order)."""
    flat = weight.flatten()
    if int((flat != 0).sum()) <= count:
        return weight.clone()
    keep = torch.argsort(-flat.abs(), stable=True)[:count]
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.view_as(weight)


def fit_sldd(features: PooledFeatures, num_classes: int, n_features: int, n_per_class: int, seed: int = 0,
             selection_settings: PathSettings = GROUP_SELECTION, path_settings: PathSettings = ELASTIC_NET,
             selection: Optional[np.ndarray] = None) -> SparseLayer:
    """SLDD-Model's sparse layer (docs/METHOD.md, "Baselines: SLDD-Model", steps 1-3) from the dense model's pooled
    training features: ``n_features`` channels by the group-sparse path (or the given ``selection``), the elastic-net
    path on them (normalised by their training mean/std) walked until its points have more than ``n_wc / 0.5``
    nonzeros per class, the densest point within that, cut to its ``n_wc * C`` largest weights; its bias."""
    start = time.perf_counter()
    check_selection_size(n_features, features.num_features, 'SLDD-Model')
    info: Dict = {}
    if selection is None:
        selection, info['selection'] = select_from_features(features, num_classes, n_features, seed,
                                                            selection_settings)
    selection = np.asarray(selection, dtype=np.int64)
    mean, std = features.mean_std()
    fit, _ = fit_split(len(features.labels), seed)
    y = torch.as_tensor(features.labels[fit])
    x = normalised(features.pooled[fit][:, selection], mean[selection], std[selection])
    cap = n_per_class / SLDD_DENSITY
    points = regularization_path(x, y, num_classes, path_settings, seed=seed,
                                 stop=lambda p: p.nonzeros_per_class > cap)
    point = sparsest_enough(points, cap, 'SLDD-Model')
    weight = keep_largest(point.weight, n_per_class * num_classes)
    info.update(point=point.index, lam=point.lam, points_walked=len(points),
                point_nonzeros_per_class=point.nonzeros_per_class, seconds=time.perf_counter() - start)
    return SparseLayer('sldd', selection, weight.numpy(), point.bias.numpy(), mean[selection], std[selection], info)
