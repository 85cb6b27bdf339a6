"""What a baseline's sparsification returns: :class:`SparseLayer`, the sparse head's content and how it was found."""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Union

import numpy as np
import torch

from ..atomic import atomic_write
from ..models.sparse_head import STD_MIN, check_sparse_head_kind

__all__ = ['SparseLayer', 'normalised']

PathLike = Union[str, os.PathLike]


def normalised(pooled: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """``(x - mean) / clamp(std, 1e-6)`` as float32, the features the sparse head's layer reads."""
    return torch.as_tensor((pooled - mean) / np.maximum(std, STD_MIN), dtype=torch.float32)


@dataclass
class SparseLayer:
    """A sparse head of kind ``kind`` (:data:`qpm_timm.models.sparse_head.SPARSE_HEADS`): the backbone ``channels``
    (k,) it reads, real-valued ``weight`` (C, k) and ``bias`` (C,), the normalisation ``mean``/``std`` (k,); ``info``:
    how it was found (the path point, its penalty, the counts before a cut, the seconds the fit took)."""
    kind: str
    channels: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_sparse_head_kind(self.kind)
        self.channels = np.asarray(self.channels, dtype=np.int64)
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        k = self.channels.shape[0]
        if self.weight.shape != (self.bias.shape[0], k) or self.mean.shape != (k,) or self.std.shape != (k,):
            raise ValueError(f'inconsistent sparse layer: channels {self.channels.shape}, weight {self.weight.shape}, '
                             f'bias {self.bias.shape}, mean {self.mean.shape}, std {self.std.shape}.')

    @property
    def nonzeros(self) -> int:
        return int((self.weight != 0).sum())

    @property
    def nonzeros_per_class(self) -> float:
        """Mean number of nonzero weights per class (measured)."""
        return self.nonzeros / self.weight.shape[0]

    @property
    def features_used(self) -> int:
        """Features with a nonzero weight for some class."""
        return int((self.weight != 0).any(0).sum())

    def save(self, path: PathLike) -> None:
        """An ``.npz`` file, written atomically (the run's ``sparse_<method>.npz``)."""
        with atomic_write(path, 'wb') as fh:
            np.savez(fh, kind=np.array(self.kind), channels=self.channels, weight=self.weight, bias=self.bias,
                     mean=self.mean, std=self.std, info=np.array(json.dumps(self.info)))

    @classmethod
    def load(cls, path: PathLike) -> 'SparseLayer':
        with np.load(os.fspath(path), allow_pickle=False) as d:
            need = {'kind', 'channels', 'weight', 'bias', 'mean', 'std', 'info'}
            if not need <= set(d.files):
                missing = sorted(need - set(d.files))
                raise ValueError(f'{os.fspath(path)} is not a sparse-layer file (missing {missing}).')
            return cls(str(d['kind']), d['channels'], d['weight'], d['bias'], d['mean'], d['std'],
                       json.loads(str(d['info'])))
