"""Q-SENN (Norrenbrock et al., AAAI 2024): per round, an elastic-net path on the selected, normalised features, its
densest regularised point quantised to ``{-a, 0, +a}`` with about ``n_wc * C`` nonzeros, and a bias from each class's
count of positive minus negative weights (docs/METHOD.md, "Baselines: Q-SENN"). The rounds' fine-tunes are the run's.
"""
import time
from typing import Tuple

import numpy as np
import torch

from .features import PooledFeatures, fit_split
from .layer import SparseLayer, normalised
from .path import ELASTIC_NET, PathSettings, regularization_path

__all__ = ['quantise', 'count_bias', 'fit_qsenn_round', 'QSENN_ROUNDS', 'QSENN_ROUND_LR_DECAY']

QSENN_ROUNDS = (10, 10, 10, 40)  # fine-tune epochs of rounds 0-3 (the authors' QSENNScheduler)
QSENN_ROUND_LR_DECAY = 0.9  # round r fine-tunes at lr x 0.9^r


def quantise(weight: torch.Tensor, count: int) -> Tuple[torch.Tensor, float, float]:
    """``weight`` quantised to ``{-a, 0, +a}`` (docs/METHOD.md, "Baselines: Q-SENN", step 2): the threshold is the
    midpoint between the ``count``-th and the next largest ``|w|`` (below the smallest nonzero when there are at most
    ``count``), the entries above it become ``sign(w) * a`` with ``a`` their mean ``|w|``, the rest 0. Returns the
    quantised weights, ``a`` and the threshold."""
    values = torch.sort(weight.abs().flatten()[weight.flatten() != 0], descending=True).values
    if values.numel() == 0:
        raise ValueError('Q-SENN: the path point has no nonzero weight to quantise.')
    if count < values.numel():
        threshold = float((values[count - 1] + values[count]) / 2)
    else:
        threshold = float(values[-1]) / 2
    above = weight.abs() > threshold
    a = float(weight.abs()[above].mean())
    return torch.where(above, torch.sign(weight) * a, torch.zeros_like(weight)), a, threshold


def count_bias(weight: torch.Tensor, largest: float) -> torch.Tensor:
    """Q-SENN's bias (step 3): with ``n_c`` = positive minus negative weights of class ``c`` and ``B`` = ``largest``
    (the path point's largest ``|bias|``), ``b_c = B - (n_c - min n) * 2B / (max n - min n)``, clipped to
    ``[-B, B]``. When every class has the same count any constant bias gives the same logits up to a shift: 0 (the
    authors' code divides by zero there)."""
    n = (weight > 0).sum(1) - (weight < 0).sum(1)
    spread = int(n.max() - n.min())
    if spread == 0:
        return torch.zeros(weight.shape[0])
    bias = largest - (n - n.min()).float() * (2 * largest / spread)
    return bias.clamp(-largest, largest)


def fit_qsenn_round(features: PooledFeatures, channels: np.ndarray, num_classes: int, n_per_class: int,
                    seed: int = 0, settings: PathSettings = ELASTIC_NET, round_index: int = 0) -> SparseLayer:
    """One Q-SENN round's layer from ``features`` of the selected ``channels`` only (N, k): the raw pooled features
    of the current model (round 0: the dense model's), normalised by their own training mean/std, which the new head
    keeps (docs/METHOD.md, "Baselines: Q-SENN" on why not the authors' twice-normalised features); the full path,
    its last (smallest-penalty) point quantised and given the count bias."""
    start = time.perf_counter()
    if features.num_features != len(channels):
        raise ValueError(f'Q-SENN: {features.num_features} features for {len(channels)} selected channels.')
    mean, std = features.mean_std()
    fit, _ = fit_split(len(features.labels), seed)
    x = normalised(features.pooled[fit], mean, std)
    points = regularization_path(x, torch.as_tensor(features.labels[fit]), num_classes, settings, seed=seed)
    point = points[-1]
    weight, a, threshold = quantise(point.weight, n_per_class * num_classes)
    bias = count_bias(weight, float(point.bias.abs().max()))
    info = dict(round=round_index, point=point.index, lam=point.lam, points_walked=len(points), a=a,
                threshold=threshold, point_nonzeros_per_class=point.nonzeros_per_class,
                seconds=time.perf_counter() - start)
    return SparseLayer('qsenn', channels, weight.numpy(), bias.numpy(), mean, std, info)
