""" QPM classifier heads.

Two head states of a QPM (docs/METHOD.md, "Pipeline"):

* :class:`DenseHead` (stage 1, dense training): pool -> feature dropout 0.2 -> ``Linear(F, C)``.
* :class:`QPMHead` (stage 4, fine-tune and inference): select ``n_f*`` channels -> pool ->
  ``(x - mean) / std`` [-> ReLU, CHiQPM's head] -> feature dropout 0.1 -> ``x @ W^T`` with ``W`` the binary
  class x feature assignment and no bias. Selection, mean, std and ``W`` are buffers: they are frozen, and every
  *parameter* of a QPM still receives a gradient.

Both heads expose ``select`` (the feature maps the head reads), ``forward_pooled`` (everything after
pooling) and ``class_weights`` (the ``C x F'`` matrix the Feature Diversity Loss and the
explanations read), so :meth:`QPMModel.forward_with_features` runs the backbone once.
"""
import itertools
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d

__all__ = [
    'BinaryLinear', 'DenseHead', 'QPMHead', 'check_qpm_sizes', 'check_selection', 'check_assignment',
    'placeholder_assignment',
]

DENSE_DROP_RATE = 0.2  # docs/METHOD.md, "Recipe": feature dropout of the dense model
QPM_DROP_RATE = 0.1  # docs/METHOD.md, "Pipeline" stage 4: feature dropout of the QPM


def check_qpm_sizes(num_classes: int, n_features: int, n_per_class: int, num_features: Optional[int] = None) -> None:
    """Refuse sizes for which no QPM exists (docs/METHOD.md, "The optimisation problem")."""
    if n_features < 1 or n_per_class < 1:
        raise ValueError(f'n_features ({n_features}) and n_per_class ({n_per_class}) must be >= 1.')
    if n_per_class > n_features:
        raise ValueError(
            f'n_per_class={n_per_class} > n_features={n_features}: every class uses n_per_class of the '
            f'n_features kept features, so choose n_per_class <= n_features.')
    if num_features is not None and n_features > num_features:
        raise ValueError(
            f'n_features={n_features} > the backbone\'s {num_features} feature channels; keep at most {num_features}.')
    n_sets = math.comb(n_features, n_per_class)
    if num_classes > n_sets:
        raise ValueError(
            f'num_classes={num_classes} > binomial(n_features={n_features}, n_per_class={n_per_class}) = {n_sets}: '
            f'classes need distinct feature sets; increase n_features or n_per_class.')


def check_selection(selection: torch.Tensor, n_features: int, num_features: int) -> torch.Tensor:
    """Validate the kept channel indices (``s`` of docs/METHOD.md) and return them as a long tensor."""
    selection = torch.as_tensor(selection)
    if selection.dtype.is_floating_point or selection.dtype == torch.bool:
        raise ValueError(f'selection must hold integer channel indices, got dtype {selection.dtype}.')
    if selection.shape != (n_features,):
        raise ValueError(f'selection must have shape ({n_features},), got {tuple(selection.shape)}.')
    selection = selection.long()
    if selection.numel() and (selection.min() < 0 or selection.max() >= num_features):
        raise ValueError(f'selection indices must lie in [0, {num_features}), got min {int(selection.min())}, '
                         f'max {int(selection.max())}.')
    if torch.unique(selection).numel() != selection.numel():
        raise ValueError('selection repeats a channel; every kept feature must be a different channel.')
    return selection


def check_assignment(assignment: torch.Tensor, num_classes: int, n_features: int, n_per_class: int) -> torch.Tensor:
    """Validate the binary class x feature matrix ``W`` (docs/METHOD.md, "The optimisation problem");
    returns it as float."""
    assignment = torch.as_tensor(assignment)
    if assignment.shape != (num_classes, n_features):
        raise ValueError(f'assignment must have shape (num_classes={num_classes}, n_features={n_features}), '
                         f'got {tuple(assignment.shape)}.')
    values = assignment.detach().float()
    if not torch.all((values == 0) | (values == 1)):
        raise ValueError('assignment must be binary (0/1 or bool); found other values.')
    per_class = values.sum(1)
    bad = torch.nonzero(per_class != n_per_class).flatten()
    if bad.numel():
        c = int(bad[0])
        raise ValueError(f'every class must use exactly n_per_class={n_per_class} features; class {c} uses '
                         f'{int(per_class[c])} ({bad.numel()} classes wrong).')
    rows, inverse = torch.unique(values, dim=0, return_inverse=True)
    if rows.shape[0] != num_classes:
        counts = torch.bincount(inverse)
        dup = torch.nonzero(inverse == int(torch.argmax(counts))).flatten()[:2].tolist()
        raise ValueError(f'classes {dup[0]} and {dup[1]} have the same feature set; every class needs its own.')
    return values


def placeholder_assignment(num_classes: int, n_features: int, n_per_class: int) -> torch.Tensor:
    """A valid, deterministic ``W`` (first ``C`` ``n_per_class``-subsets) for a QPM not yet solved."""
    w = torch.zeros(num_classes, n_features)
    for c, subset in enumerate(itertools.islice(itertools.combinations(range(n_features), n_per_class), num_classes)):
        w[c, list(subset)] = 1.
    return w


class BinaryLinear(nn.Module):
    """``x @ W^T`` with a frozen binary ``W`` stored as a buffer, no bias (QPM logits)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer('weight', weight)
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class DenseHead(nn.Module):
    """pool -> feature dropout -> ``Linear(F, C)`` (the dense model of QPM stage 1)."""

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            pool_type: str = 'avg',
            drop_rate: float = DENSE_DROP_RATE,
            device=None,
            dtype=None,
    ):
        super().__init__()
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes, device=device, dtype=dtype) if num_classes > 0 else nn.Identity()

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """The dense head reads every channel."""
        return x

    def forward_pooled(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.forward_pooled(self.global_pool(x), pre_logits)

    @property
    def class_weights(self) -> torch.Tensor:
        """``C x F`` linear weight."""
        return self.fc.weight


class QPMHead(nn.Module):
    """select ``n_f*`` channels -> pool -> ``(x - mean) / std`` -> dropout -> ``x @ W^T`` (QPM stage 4)."""

    def __init__(
            self,
            selection: torch.Tensor,
            assignment: Optional[torch.Tensor],
            mean: torch.Tensor,
            std: torch.Tensor,
            pool_type: str = 'avg',
            drop_rate: float = QPM_DROP_RATE,
            relu: bool = False,
    ):
        """``relu``: a ReLU on the normalised features (the head of CHiQPM, the authors' hierarchical QPM)."""
        super().__init__()
        self.relu = relu
        self.register_buffer('selection', selection.long())
        self.register_buffer('mean', mean)
        self.register_buffer('std', std)
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        self.drop = nn.Dropout(drop_rate)
        self.fc = BinaryLinear(assignment) if assignment is not None else nn.Identity()

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """The ``n_f*`` kept feature maps (``s_f = 1``)."""
        return x.index_select(1, self.selection)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` with the frozen statistics of the dense model (docs/METHOD.md, "Pipeline",
        stage 2), then the ReLU of a CHiQPM head: the features the binary layer sums."""
        mean, std = self.mean.to(x.dtype), self.std.to(x.dtype)
        if self.global_pool.is_identity():  # un-pooled maps (global_pool=''); a fixed setting, fx-traceable
            mean, std = mean[:, None, None], std[:, None, None]
        x = (x - mean) / std
        return F.relu(x) if self.relu else x

    def forward_pooled(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.normalize(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.forward_pooled(self.global_pool(self.select(x)), pre_logits)

    @property
    def class_weights(self) -> torch.Tensor:
        """``C x n_f*`` binary assignment ``W``."""
        return self.fc.weight
