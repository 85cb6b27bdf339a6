"""glm-saga alone (Wong et al. 2021, "glm-saga_5" in the compactness literature): an elastic-net sparse linear layer on
all of the dense model's pooled features, the path point with about ``n_wc`` nonzeros per class, no fine-tune
(docs/METHOD.md, "Baselines: glm-saga")."""
import time

import torch

from .features import PooledFeatures, fit_split
from .layer import SparseLayer, normalised
from .path import ELASTIC_NET, PathSettings, regularization_path

__all__ = ['fit_glm']


def fit_glm(features: PooledFeatures, num_classes: int, n_per_class: int, seed: int = 0,
            settings: PathSettings = ELASTIC_NET) -> SparseLayer:
    """The path on all normalised features, walked until its points pass ``n_wc`` nonzeros per class; of the
    non-empty points walked, the one closest to ``n_wc`` per class (ties: the sparser). The head reads only the
    features that point uses."""
    start = time.perf_counter()
    mean, std = features.mean_std()
    fit, _ = fit_split(len(features.labels), seed)
    x = normalised(features.pooled[fit], mean, std)
    points = regularization_path(x, torch.as_tensor(features.labels[fit]), num_classes, settings, seed=seed,
                                 stop=lambda p: p.nonzeros_per_class > n_per_class)
    candidates = [p for p in points if p.nonzeros]
    if not candidates:
        raise ValueError(f'glm-saga: every point of the regularisation path ({len(points)} points, down to '
                         f'{settings.epsilon:g} x the largest penalty) is empty; let the path go further.')
    point = min(candidates, key=lambda p: (abs(p.nonzeros_per_class - n_per_class), p.nonzeros_per_class))
    used = point.used_features.numpy()
    info = dict(point=point.index, lam=point.lam, points_walked=len(points), seconds=time.perf_counter() - start)
    return SparseLayer('glm', used, point.weight[:, used].numpy(), point.bias.numpy(), mean[used], std[used], info)
