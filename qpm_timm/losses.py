"""Training losses of a QPM: the Feature Diversity Loss (docs/METHOD.md, "Feature Diversity Loss"; Q-SENN / QPM
papers) and DINO-QPM's L1 activation terms (:class:`ActivationL1`; docs/METHOD.md, "ViT backbones and the adapter").

The loss rewards the features a class relies on for lighting up *different* spatial
locations. It works unchanged for both head states of a QPM model:

* dense head: ``class_weights`` is the real-valued linear weight over all channels;
* QPM head: ``class_weights`` is the frozen binary assignment over the selected channels and
  ``feature_maps`` are the raw selected channels.

Numerics follow the authors' implementation: the scale of every map is the mean of its *raw*
(un-softmaxed) values, nothing is detached (the gradient reaches the feature maps and, through
``|w|``, a trainable dense weight; pass ``class_weights.detach()`` to stop the latter), the
normalisation of ``|w|`` adds ``eps`` to its L2 norm and the largest spatial mean is clamped
to at least ``min_mean`` (maps of ReLU backbones are >= 0, so the clamp only matters for dead
images). Everything is computed in float32, also under autocast / bfloat16 inputs.
"""

import torch
from torch import nn

__all__ = ["ActivationL1", "FeatureDiversityLoss", "feature_diversity_loss", "mean_scaled_softmax_maps", "predicted_class_weights"]


def _check_shapes(feature_maps: torch.Tensor, logits: torch.Tensor, class_weights: torch.Tensor) -> None:
    if feature_maps.ndim != 4:
        raise ValueError(f"feature_maps must be (N, F, H, W), got shape {tuple(feature_maps.shape)}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if class_weights.ndim != 2:
        raise ValueError(f"class_weights must be (C, F), got shape {tuple(class_weights.shape)}")
    n, f = feature_maps.shape[:2]
    if logits.shape[0] != n:
        raise ValueError(f"batch size mismatch: feature_maps has {n} images, logits {logits.shape[0]}")
    if class_weights.shape != (logits.shape[1], f):
        raise ValueError(
            f"class_weights must be (C, F) = ({logits.shape[1]}, {f}) to match logits and "
            f"feature_maps, got {tuple(class_weights.shape)}")


def predicted_class_weights(logits: torch.Tensor, class_weights: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``|w_c| / (||w_c||_2 + eps)`` for the predicted class ``c`` of every image -> (N, F), float32."""
    predicted = logits.detach().argmax(dim=1)
    weights = class_weights.float().abs()[predicted]
    return weights / (weights.norm(dim=1, keepdim=True) + eps)


def mean_scaled_softmax_maps(feature_maps: torch.Tensor, min_mean: float = 1e-6) -> torch.Tensor:
    """Spatial softmax of every map times (its raw spatial mean / the image's largest mean) -> (N, F, H*W).

    docs/METHOD.md, "Feature Diversity Loss": "Softmax every map over its H·W locations, scale each map by its
    spatial mean divided by the largest spatial mean among that image's maps". Computed in float32.
    """
    maps = feature_maps.float().flatten(2)
    means = maps.mean(dim=2)
    largest = means.amax(dim=1, keepdim=True).clamp(min=min_mean)
    return torch.softmax(maps, dim=2) * (means / largest).unsqueeze(2)


def feature_diversity_loss(
        feature_maps: torch.Tensor,
        logits: torch.Tensor,
        class_weights: torch.Tensor,
        beta: float = 0.196,
        eps: float = 1e-5,
        min_mean: float = 1e-6,
) -> torch.Tensor:
    """``-beta * mean_n sum_l max_f (w_f * scaled_softmax(M_f)[l])`` (docs/METHOD.md, FDL), a float32 scalar."""
    _check_shapes(feature_maps, logits, class_weights)
    weights = predicted_class_weights(logits, class_weights, eps)
    maps = mean_scaled_softmax_maps(feature_maps, min_mean) * weights.unsqueeze(2)
    return -beta * maps.amax(dim=1).sum(dim=1).mean()


class FeatureDiversityLoss(nn.Module):
    """Feature Diversity Loss, ``beta = 0.196`` for ResNets (docs/METHOD.md, "Feature Diversity Loss").

    ``forward(feature_maps (N, F, H, W), logits (N, C), class_weights (C, F)) -> scalar``.
    """

    def __init__(self, beta: float = 0.196, eps: float = 1e-5, min_mean: float = 1e-6):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0 (the loss is already negated), got {beta}")
        self.beta = float(beta)
        self.eps = float(eps)
        self.min_mean = float(min_mean)

    def forward(self, feature_maps: torch.Tensor, logits: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        return feature_diversity_loss(feature_maps, logits, class_weights, self.beta, self.eps, self.min_mean)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class ActivationL1(nn.Module):
    """DINO-QPM's sparsity terms: ``maps_weight * mean|feature_maps| + pooled_weight * mean|pooled|`` (the mean
    absolute value of the feature maps the head reads and of their pooled features); 0 when both weights are 0."""

    def __init__(self, maps_weight: float = 0.0, pooled_weight: float = 0.0):
        super().__init__()
        for name, w in (("maps_weight", maps_weight), ("pooled_weight", pooled_weight)):
            if not w >= 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.maps_weight, self.pooled_weight = float(maps_weight), float(pooled_weight)

    def forward(self, feature_maps: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        loss = feature_maps.new_zeros((), dtype=torch.float32)
        if self.maps_weight:
            loss = loss + self.maps_weight * feature_maps.float().abs().mean()
        if self.pooled_weight:
            loss = loss + self.pooled_weight * pooled.float().abs().mean()
        return loss
