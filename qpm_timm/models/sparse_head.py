""" The sparse linear heads of the compact baselines QPM is compared with (docs/METHOD.md, "Baselines").

One head class, :class:`SparseHead`, in three registered kinds (:data:`SPARSE_HEADS`): select ``k`` channels ->
pool -> ``(x - mean) / clamp(std, 1e-6)`` -> feature dropout -> ``x @ W^T + b`` with a real-valued, sparse ``W``
and a bias ``b``, both frozen buffers (what the sparsification chose). The kinds differ in what the fine-tune may
change and where ``W`` comes from:

* ``sldd`` -- SLDD-Model (Norrenbrock et al. 2023): ``W`` an elastic-net path point cut to ``n_wc * C`` nonzeros;
  mean and std are trainable parameters (as in the authors' ``SLDDLevel``);
* ``qsenn`` -- Q-SENN (Norrenbrock et al., AAAI 2024): ``W`` quantised to ``{-a, 0, +a}``; mean and std trainable;
* ``glm`` -- glm-saga alone (Wong et al. 2021): the path point on all pooled features, no fine-tune; mean and std
  frozen buffers.

The head keeps :class:`~qpm_timm.models.head.QPMHead`'s interface (``select``, ``normalize``, ``forward_pooled``,
``class_weights``), so the losses, the metrics, the explanations and the export treat every compact head alike.
"""
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d

__all__ = ['SparseHeadKind', 'SPARSE_HEADS', 'SparseLinear', 'SparseHead', 'check_sparse_head_kind',
           'check_sparse_layer', 'STD_MIN']

STD_MIN = 1e-6  # the authors' clamp of a trainable std (SLDDLevel)
SPARSE_DROP_RATE = 0.1  # feature dropout of SLDDLevel, as the QPM head's


@dataclass(frozen=True)
class SparseHeadKind:
    """A registered sparse head: its name, whether mean/std train in the fine-tune, what it is."""
    name: str
    trainable_stats: bool
    description: str


SPARSE_HEADS: Dict[str, SparseHeadKind] = {k.name: k for k in (
    SparseHeadKind('sldd', True, 'SLDD-Model: elastic-net path point cut to n_wc * C nonzeros, bias, fine-tuned'),
    SparseHeadKind('qsenn', True, 'Q-SENN: weights quantised to {-a, 0, +a}, count-based bias, four rounds'),
    SparseHeadKind('glm', False, 'glm-saga: elastic-net path point on all features, bias, no fine-tune'),
)}


def check_sparse_head_kind(kind: str) -> SparseHeadKind:
    if kind not in SPARSE_HEADS:
        raise ValueError(f'unknown sparse head kind {kind!r}; one of {sorted(SPARSE_HEADS)}.')
    return SPARSE_HEADS[kind]


def check_sparse_layer(weight: torch.Tensor, bias: torch.Tensor, num_classes: int, n_features: int) -> None:
    """Shapes and finiteness of a sparse layer ``(W (C, k), b (C,))``."""
    if tuple(weight.shape) != (num_classes, n_features):
        raise ValueError(f'weight must have shape (num_classes={num_classes}, n_features={n_features}), '
                         f'got {tuple(weight.shape)}.')
    if tuple(bias.shape) != (num_classes,):
        raise ValueError(f'bias must have shape ({num_classes},), got {tuple(bias.shape)}.')
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise ValueError('the sparse layer holds NaN or inf weights; refit it.')


class SparseLinear(nn.Module):
    """``x @ W^T + b`` with ``W`` and ``b`` frozen buffers (the sparsification's result)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer('weight', weight)
        self.register_buffer('bias', bias)
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class SparseHead(nn.Module):
    """select ``k`` channels -> pool -> ``(x - mean) / clamp(std, 1e-6)`` -> dropout -> ``x @ W^T + b``."""

    def __init__(
            self,
            kind: str,
            selection: torch.Tensor,
            weight: Optional[torch.Tensor],
            bias: Optional[torch.Tensor],
            mean: torch.Tensor,
            std: torch.Tensor,
            pool_type: str = 'avg',
            drop_rate: float = SPARSE_DROP_RATE,
    ):
        """``weight``/``bias`` None: no classifier (``num_classes=0``), the normalised features are the output."""
        super().__init__()
        self.kind = check_sparse_head_kind(kind).name
        self.register_buffer('selection', selection.long())
        if SPARSE_HEADS[kind].trainable_stats:
            self.mean = nn.Parameter(mean.clone())
            self.std = nn.Parameter(std.clone())
        else:
            self.register_buffer('mean', mean)
            self.register_buffer('std', std)
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.drop = nn.Dropout(drop_rate)
        self.fc = SparseLinear(weight, bias) if weight is not None else nn.Identity()

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """The ``k`` feature maps the layer reads."""
        return x.index_select(1, self.selection)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / clamp(std, 1e-6)`` (the authors' ``SLDDLevel``; std may train, so it is clamped)."""
        mean, std = self.mean.to(x.dtype), self.std.to(x.dtype).clamp(min=STD_MIN)
        if self.global_pool.is_identity():  # un-pooled maps (global_pool='')
            mean, std = mean[:, None, None], std[:, None, None]
        return (x - mean) / std

    def forward_pooled(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.normalize(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.forward_pooled(self.global_pool(self.select(x)), pre_logits)

    @property
    def class_weights(self) -> torch.Tensor:
        """``C x k`` real-valued sparse weights."""
        return self.fc.weight

    def extra_repr(self) -> str:
        return f'kind={self.kind!r}'
