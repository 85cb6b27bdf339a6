"""The pooled features every baseline is fitted on (docs/METHOD.md, "Baselines: what every method starts from").

The dense model's global-average-pooled features of the un-augmented training set, collected on the same pass as the
QPM statistics (:class:`FeatureCollector` rides along :func:`qpm_timm.stats.collect_statistics`), kept with their
labels as :class:`PooledFeatures` (``features.npz`` of a run), and split at random 90 / 10 into the part the
regularisation paths are fitted on and a held-out part, with the run's seed (the authors' split).
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from ..atomic import atomic_write
from ..forward import ForwardBatch

__all__ = ['PooledFeatures', 'FeatureCollector', 'fit_split', 'VAL_FRACTION']

VAL_FRACTION = 0.1  # the authors' held-out share of the training features
PathLike = Union[str, os.PathLike]


@dataclass
class PooledFeatures:
    """``pooled`` (N, F) float32 pooled features of the training images (eval transform), ``labels`` (N,) int64."""
    pooled: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.pooled = np.ascontiguousarray(self.pooled, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.pooled.ndim != 2 or self.labels.shape != (self.pooled.shape[0],):
            raise ValueError(f'pooled must be (N, F) and labels (N,), got {self.pooled.shape} and '
                             f'{self.labels.shape}.')
        if not np.isfinite(self.pooled).all():
            raise ValueError('the pooled features hold NaN or inf; the dense model is broken (retrain it).')

    @property
    def num_features(self) -> int:
        return self.pooled.shape[1]

    def mean_std(self) -> Tuple[np.ndarray, np.ndarray]:
        """Per-feature mean and population std (as the QPM statistics'), float64."""
        x = self.pooled.astype(np.float64)
        return x.mean(0), x.std(0)

    def restricted(self, channels) -> 'PooledFeatures':
        """The same images, only ``channels``."""
        return PooledFeatures(self.pooled[:, np.asarray(channels, dtype=np.int64)], self.labels)

    def save(self, path: PathLike) -> None:
        with atomic_write(path, 'wb') as fh:
            np.savez(fh, pooled=self.pooled, labels=self.labels)

    @classmethod
    def load(cls, path: PathLike) -> 'PooledFeatures':
        with np.load(os.fspath(path), allow_pickle=False) as data:
            if not {'pooled', 'labels'} <= set(data.files):
                raise ValueError(f'{os.fspath(path)} is not a pooled-features file (needs pooled and labels).')
            return cls(data['pooled'], data['labels'])


class FeatureCollector:
    """An observer of :func:`qpm_timm.forward.forward_pass` keeping every batch's pooled features and labels."""

    def __init__(self):
        self._pooled: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []

    def __call__(self, batch: ForwardBatch) -> None:
        self._pooled.append(batch.pooled.detach().float().cpu())
        self._labels.append(batch.targets.detach().cpu())

    @property
    def seen(self) -> bool:
        return bool(self._pooled)

    def result(self) -> Optional[PooledFeatures]:
        if not self._pooled:
            return None
        return PooledFeatures(torch.cat(self._pooled).numpy(), torch.cat(self._labels).numpy())


def fit_split(n: int, seed: int, val_fraction: float = VAL_FRACTION) -> Tuple[np.ndarray, np.ndarray]:
    """``(fit, held_out)`` image indices: a seeded random ``1 - val_fraction`` / ``val_fraction`` split."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(np.floor(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
