"""Training losses of a QPM: the Feature Diversity Loss (docs/METHOD.md, "Feature Diversity Loss"; Q-SENN / QPM
papers), DINO-QPM's L1 activation terms (:class:`ActivationL1`; docs/METHOD.md, "ViT backbones and the adapter") and
CHiQPM's Feature Grounding Loss (:class:`FeatureGroundingLoss`; docs/METHOD.md, "CHiQPM: Feature Grounding Loss").

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

__all__ = ["ActivationL1", "FeatureDiversityLoss", "FeatureGroundingLoss", "feature_diversity_loss",
           "feature_grounding_loss", "mean_scaled_softmax_maps", "predicted_class_weights"]


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


def feature_grounding_loss(features: torch.Tensor, targets: torch.Tensor, assignment: torch.Tensor,
                           min_scale: float = 0.01) -> torch.Tensor:
    """CHiQPM's FGL (docs/METHOD.md, "CHiQPM: Feature Grounding Loss"), a float32 scalar: per image, with ``f`` its
    normalised (ReLU'd) features (N, n_f*) and ``w`` its target class's binary row of ``assignment`` (C, n_f*),
    ``(2 * mean(f where w = 0) - mean(f where w = 1)) / max(max|f|, min_scale)``; averaged over the batch. A class
    using every feature has no ``w = 0`` part (its mean counts as 0)."""
    if features.ndim != 2 or targets.ndim != 1 or features.shape[0] != targets.shape[0]:
        raise ValueError(f"features must be (N, F) and targets (N,), got {tuple(features.shape)} and "
                         f"{tuple(targets.shape)}")
    if assignment.ndim != 2 or assignment.shape[1] != features.shape[1]:
        raise ValueError(f"assignment must be (C, F) with F = {features.shape[1]}, got {tuple(assignment.shape)}")
    f = features.float()
    w = assignment.detach().float()[targets]
    used = w.sum(dim=1)
    on = (f * w).sum(dim=1) / used.clamp(min=1.0)
    off = (f * (1.0 - w)).sum(dim=1) / (w.shape[1] - used).clamp(min=1.0)
    return ((2.0 * off - on) / f.abs().amax(dim=1).clamp(min=min_scale)).mean()


class FeatureGroundingLoss(nn.Module):
    """``weight * feature_grounding_loss`` (CHiQPM: weight 3; docs/METHOD.md, "CHiQPM: Feature Grounding Loss").

    ``forward(features (N, n_f*), targets (N,), assignment (C, n_f*)) -> scalar``; the features are the QPM head's
    normalised ones (:meth:`~qpm_timm.models.head.QPMHead.normalize`, with the ReLU of a CHiQPM head).
    """

    def __init__(self, weight: float = 3.0, min_scale: float = 0.01):
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight, self.min_scale = float(weight), float(min_scale)

    def forward(self, features: torch.Tensor, targets: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
        return self.weight * feature_grounding_loss(features, targets, assignment, self.min_scale)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
