"""One-pass streaming statistics of a dense model for the QPM solver and head.

docs/METHOD.md, "Pipeline" stage 2 and "Locality bias": one pass over the un-augmented training
set with the dense model in eval mode gives, for every feature ``f`` with pooled activation
``x_f`` and feature map ``M_f``,

* ``A[f, c]``: Pearson correlation of ``x_f`` with the one-hot indicator of class ``c``,
  then ``A / max|A|``;
* ``mean[f]``, ``std[f]`` of ``x_f`` (population std, ``ddof=0``, as the authors' metadata,
  which the QPM head uses as ``(x - mean) / std``);
* ``locality[f] = sum_n peak(softmax(M_nf)) * w_nf / N`` and
  ``edge[f] = -sum_n [argmax(M_nf) on the border] * w_nf`` with the per-image shares
  ``w_n = x_n / sum_f x_nf``, finished into ``B`` by :func:`finish_locality_bias`.

Only running sums are kept (``O(F * C + F)`` memory, independent of the number of images), in
float64, as sums of ``x - K`` with ``K`` the first batch's mean so that the variance does not
suffer from cancellation. :meth:`StatisticsAccumulator.all_reduce` adds the sums of all
``torch.distributed`` ranks.

Documented edge cases:

* a constant feature (``std <= 1e-12 * |mean|``) gets ``std = 0`` and a zero row in ``A``
  (it cannot be normalised: ``QPMModel.set_qpm_head`` refuses it); if every feature is
  constant, :meth:`StatisticsAccumulator.compute` raises ``ValueError``;
* a class without images makes its correlation undefined: ``compute`` raises ``ValueError``
  naming the classes;
* negative activations: the shares use the positive part, ``w_n = x_n^+ / sum_f x_nf^+``
  (identical to the authors' ``x / sum_f x`` for ReLU backbones, whose pooled features are >= 0;
  docs/METHOD.md, "Locality bias"); an image without
  positive activation adds nothing to ``locality``/``edge`` but still counts in ``N``;
* under DDP every rank reads a disjoint shard (``create_qpm_loader(..., shard=True)``, no padding) and
  ``all_reduce`` sums them, so every image counts exactly once.

Unlike the authors' code (one pass for the pooled features, a second one, with the training
transforms, for the maps), pooled features and maps come from the same un-augmented pass.
"""
import math
import os
from dataclasses import dataclass, fields
from typing import Callable, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .atomic import atomic_write
from .forward import ForwardBatch, forward_pass

__all__ = [
    "QPMStatistics", "StatisticsAccumulator", "collect_statistics", "finish_locality_bias",
    "clip_outliers_and_scale", "largest_cluster_range", "mean_shift_1d", "peak_softmax_and_border", "feature_shares",
    "LOCALITY_BIAS_SCALE", "ForwardBatch", "forward_pass",  # forward_pass, ForwardBatch: qpm_timm.forward
]

LOCALITY_BIAS_SCALE = 0.1 * math.sqrt(10)  # max|B| (docs/METHOD.md, "Locality bias")
CONSTANT_RTOL = 1e-12  # std <= CONSTANT_RTOL * |mean|: the feature is constant

PathLike = Union[str, os.PathLike]


@dataclass
class QPMStatistics:
    """Everything the solver (``A``, ``B``) and the QPM head (``mean``, ``std``) need.

    Float64 arrays ``A`` (F, C) normalised to ``max|A| = 1``, ``B``, ``mean``, ``std``,
    ``locality``, ``edge`` (F,); int64 ``class_counts`` (C,); ``num_images``.
    """
    A: np.ndarray
    B: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    locality: np.ndarray
    edge: np.ndarray
    class_counts: np.ndarray
    num_images: int

    def __post_init__(self):
        for field in ("A", "B", "mean", "std", "locality", "edge"):
            setattr(self, field, np.asarray(getattr(self, field), dtype=np.float64))
        self.class_counts = np.asarray(self.class_counts, dtype=np.int64)
        self.num_images = int(self.num_images)
        if self.A.ndim != 2:
            raise ValueError(f"A must be (num_features, num_classes), got shape {self.A.shape}")
        num_features, num_classes = self.A.shape
        for field in ("B", "mean", "std", "locality", "edge"):
            if getattr(self, field).shape != (num_features,):
                raise ValueError(f"{field} must have shape ({num_features},), got {getattr(self, field).shape}")
        if self.class_counts.shape != (num_classes,):
            raise ValueError(f"class_counts must have shape ({num_classes},), got {self.class_counts.shape}")

    @property
    def num_features(self) -> int:
        return self.A.shape[0]

    @property
    def num_classes(self) -> int:
        return self.A.shape[1]

    def save(self, path: PathLike) -> None:
        """Write an ``.npz`` file atomically (temporary file in the same folder, then rename)."""
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def load(cls, path: PathLike) -> "QPMStatistics":
        with np.load(os.fspath(path), allow_pickle=False) as data:
            missing = [f.name for f in fields(cls) if f.name not in data.files]
            if missing:
                raise ValueError(f"{os.fspath(path)} is not a QPMStatistics file: missing {missing}")
            return cls(**{f.name: data[f.name] for f in fields(cls)})


def mean_shift_1d(values: np.ndarray, bandwidth: float, max_iter: int = 300) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``MeanShift(bandwidth).fit`` for 1-D data -> (cluster_centers, labels).

    The same algorithm (flat kernel, every point a seed, a seed stops when it moves by
    ``<= 1e-3 * bandwidth`` or after ``max_iter`` steps; centres ordered by (intensity, value)
    descending; a centre within ``bandwidth`` of a stronger one is dropped; every point joins its
    nearest centre), but all seeds step at once using sorted prefix sums: ~1000x faster than
    scikit-learn's per-seed neighbour queries (seconds per call at 2048 features), and tested
    to give the same clusters (tests/test_stats.py).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    origin = np.median(x)  # prefix sums of x - origin keep the window means accurate
    xs = np.sort(x) - origin
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    means = x - origin
    intensity = np.zeros(x.size, dtype=np.int64)
    active = np.arange(x.size)
    stop = 1e-3 * bandwidth
    for step in range(max_iter + 1):
        m = means[active]
        lo = np.searchsorted(xs, m - bandwidth, side="left")
        hi = np.searchsorted(xs, m + bandwidth, side="right")
        count = hi - lo
        new = (prefix[hi] - prefix[lo]) / count
        means[active], intensity[active] = new, count
        done = (np.abs(new - m) <= stop) | (step == max_iter)
        active = active[~done]
        if active.size == 0:
            break
    strength = dict(zip((means + origin).tolist(), intensity.tolist()))  # equal centres merge, as in sklearn
    ordered = sorted(strength.items(), key=lambda item: (item[1], item[0]), reverse=True)
    centres = np.array([c for c, _ in ordered])
    keep = np.ones(centres.size, dtype=bool)
    for i in range(centres.size):
        if keep[i]:
            keep[np.abs(centres - centres[i]) <= bandwidth] = False
            keep[i] = True
    centres = centres[keep]
    labels = np.abs(x[:, None] - centres[None, :]).argmin(axis=1)
    return centres, labels


def largest_cluster_range(values: np.ndarray) -> Tuple[float, float]:
    """(low, high) of the largest 1-D MeanShift cluster of ``values`` (docs/METHOD.md, "Locality bias").

    MeanShift as the authors call it (scikit-learn's defaults: bandwidth from
    ``sklearn.cluster.estimate_bandwidth``, quantile 0.3), run by :func:`mean_shift_1d`; ties
    between equally large clusters go to the lowest label (the strongest centre). If at least
    30 % of the values coincide the estimated bandwidth is 0 and the cluster is that most
    frequent value (what scikit-learn's MeanShift returns then, too).
    """
    from sklearn.cluster import estimate_bandwidth

    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("values must be a non-empty array of finite numbers")
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0])
    bandwidth = estimate_bandwidth(v.reshape(-1, 1))
    if bandwidth <= 0:
        unique, counts = np.unique(v, return_counts=True)
        mode = float(unique[np.argmax(counts)])
        return mode, mode
    _, labels = mean_shift_1d(v, bandwidth)
    members = v[labels == np.bincount(labels).argmax()]
    return float(members.min()), float(members.max())


def clip_outliers_and_scale(values: np.ndarray, scale: float = LOCALITY_BIAS_SCALE) -> np.ndarray:
    """Set outliers to the largest MeanShift cluster's range ends, subtract the mean, scale to ``max|.| = scale``.

    The authors' rule for an outlier ``v`` beyond an end ``e`` is ``|e| * sign(v)``: plain
    clipping whenever ``v`` and ``e`` have the same sign (always, for one-signed data), and it
    keeps a non-degenerate result when the cluster is a single value (e.g. the many features
    set to ``min(locality)`` in the last step of :func:`finish_locality_bias`), where plain
    clipping would flatten everything to 0. All-equal input gives zeros (instead of 0 / 0).
    """
    v = np.asarray(values, dtype=np.float64)
    low, high = largest_cluster_range(v)
    v = np.where(v < low, abs(low) * np.sign(v), np.where(v > high, abs(high) * np.sign(v), v))
    centred = v - v.mean()
    largest = np.abs(centred).max()
    return centred * (scale / largest) if largest > 0 else np.zeros_like(centred)


def finish_locality_bias(locality: np.ndarray, edge: np.ndarray, scale: float = LOCALITY_BIAS_SCALE) -> np.ndarray:
    """Locality bias ``B`` from the two accumulators (docs/METHOD.md, "Locality bias").

    Both are clipped and scaled; ``B = locality`` where ``edge >= 0``, else ``min(locality)``;
    then clipped and scaled once more. Positive ``B``: local features that avoid the border.
    """
    locality = clip_outliers_and_scale(locality, scale)
    edge = clip_outliers_and_scale(edge, scale)
    return clip_outliers_and_scale(np.where(edge >= 0, locality, locality.min()), scale)


def peak_softmax_and_border(feature_maps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per map: the largest value of its spatial softmax, and whether its argmax is on the border.

    ``feature_maps`` (N, F, H, W) -> (peak (N, F) float32, on_border (N, F) bool). The peak is
    ``1 / sum_l exp(M_l - max M)``, in float32 whatever the input dtype; the argmax is the first
    maximal location in row-major order (as ``torch.argmax``), non-square maps are handled.
    """
    if feature_maps.ndim != 4:
        raise ValueError(f"feature_maps must be (N, F, H, W), got shape {tuple(feature_maps.shape)}")
    height, width = feature_maps.shape[2:]
    maps = feature_maps.float().flatten(2)
    top, where = maps.max(dim=2)
    peak = (maps - top.unsqueeze(2)).exp_().sum(dim=2).reciprocal_()
    row, col = where // width, where % width
    on_border = (row == 0) | (row == height - 1) | (col == 0) | (col == width - 1)
    return peak, on_border


def feature_shares(pooled: torch.Tensor) -> torch.Tensor:
    """Per-image weights ``x^+ / sum_f x^+`` (docs/METHOD.md, "Locality bias").

    Zero rows for images without positive mass.
    """
    positive = pooled.clamp(min=0)
    total = positive.sum(dim=1, keepdim=True)
    return positive / torch.where(total > 0, total, torch.ones_like(total))


def _float64_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` if it supports float64 (CPU, CUDA), else the CPU (e.g. MPS)."""
    device = torch.device(device)
    try:
        torch.zeros(1, dtype=torch.float64, device=device)
    except (RuntimeError, TypeError):
        return torch.device("cpu")
    return device


class StatisticsAccumulator:
    """Running float64 sums for :class:`QPMStatistics`; ``O(F * C + F)`` memory.

    ``update(pooled (N, F), targets (N,), feature_maps (N, F, H, W))`` once per batch,
    ``all_reduce()`` under ``torch.distributed`` (no-op otherwise), then ``compute()``.
    ``device`` holds the sums; it must support float64 and the process group's backend
    (CUDA for NCCL, CPU for gloo).
    """

    def __init__(self, num_features: int, num_classes: int, device: Union[str, torch.device] = "cpu"):
        if int(num_features) < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2 (A correlates features with classes), got {num_classes}")
        self.num_features, self.num_classes = int(num_features), int(num_classes)
        self.device = torch.device(device)
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.device)  # noqa: E731
        self._shift = zeros(self.num_features)  # K: x is accumulated as x - K
        self._has_shift = False
        self._reduced = False
        self._count = zeros(())
        self._sum = zeros(self.num_features)  # sum (x - K)
        self._sum_sq = zeros(self.num_features)  # sum (x - K)^2
        self._class_sum = zeros(self.num_classes, self.num_features)  # sum over class c of (x - K)
        self._class_counts = zeros(self.num_classes)
        self._locality = zeros(self.num_features)  # sum peak * share
        self._edge = zeros(self.num_features)  # sum on_border * share

    @property
    def num_images(self) -> int:
        return int(self._count.item())

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the running sums (constant: independent of the number of images)."""
        return sum(t.numel() * t.element_size() for t in self._state())

    def _state(self):
        return (self._shift, self._count, self._sum, self._sum_sq, self._class_sum, self._class_counts,
                self._locality, self._edge)

    def _check(self, pooled: torch.Tensor, targets: torch.Tensor, feature_maps: torch.Tensor) -> None:
        if pooled.ndim != 2 or pooled.shape[1] != self.num_features:
            raise ValueError(f"pooled must be (N, {self.num_features}), got shape {tuple(pooled.shape)}")
        n = pooled.shape[0]
        if feature_maps.ndim != 4 or feature_maps.shape[:2] != (n, self.num_features):
            raise ValueError(
                f"feature_maps must be ({n}, {self.num_features}, H, W), got shape {tuple(feature_maps.shape)}")
        if targets.shape != (n,):
            raise ValueError(f"targets must be class indices of shape ({n},), got shape {tuple(targets.shape)}")
        if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
            raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
        bad = (targets < 0) | (targets >= self.num_classes)
        if bad.any():
            raise ValueError(
                f"targets {sorted(set(targets[bad].tolist()))} are outside [0, {self.num_classes}); "
                f"check num_classes")

    @torch.inference_mode()
    def update(self, pooled: torch.Tensor, targets: torch.Tensor, feature_maps: torch.Tensor) -> None:
        """Add one batch: pooled features (N, F), class indices (N,), feature maps (N, F, H, W)."""
        if self._reduced:
            raise RuntimeError("update() after all_reduce(): the sums already hold every rank's images")
        targets = torch.as_tensor(targets)
        self._check(pooled, targets, feature_maps)
        if pooled.shape[0] == 0:
            return
        x = pooled.detach().to(self.device, torch.float64)
        targets = targets.to(self.device, torch.long)
        if not self._has_shift:
            self._shift.copy_(x.mean(dim=0))
            self._has_shift = True
        d = x - self._shift
        self._count += x.shape[0]
        self._sum += d.sum(dim=0)
        self._sum_sq += (d * d).sum(dim=0)
        self._class_sum.index_add_(0, targets, d)
        self._class_counts += torch.bincount(targets, minlength=self.num_classes).to(torch.float64)
        peak, on_border = peak_softmax_and_border(feature_maps.detach())
        shares = feature_shares(x)
        self._locality += (peak.to(self.device, torch.float64) * shares).sum(dim=0)
        self._edge += (on_border.to(self.device, torch.float64) * shares).sum(dim=0)

    @torch.inference_mode()
    def all_reduce(self) -> None:
        """Sum the accumulators over all ``torch.distributed`` ranks (no-op if not initialised).

        Every rank first re-centres its sums on the global mean (exact algebra, small shifts),
        so the sums of ``x - K`` of different ranks can be added.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._reduced:
            raise RuntimeError("all_reduce() was already called; calling it again would count every image twice")
        totals = torch.cat([self._count.view(1), self._sum + self._count * self._shift])
        dist.all_reduce(totals)
        global_mean = totals[1:] / totals[0].clamp(min=1)
        delta = self._shift - global_mean  # x - global_mean = (x - K) + delta
        sum_sq = self._sum_sq + 2 * delta * self._sum + self._count * delta * delta
        total = self._sum + self._count * delta
        class_sum = self._class_sum + self._class_counts[:, None] * delta
        flat = torch.cat([self._count.view(1), total, sum_sq, class_sum.flatten(), self._class_counts,
                          self._locality, self._edge])
        dist.all_reduce(flat)
        f, c = self.num_features, self.num_classes
        parts = torch.split(flat, [1, f, f, c * f, c, f, f])
        self._count.copy_(parts[0][0])
        self._sum.copy_(parts[1])
        self._sum_sq.copy_(parts[2])
        self._class_sum.copy_(parts[3].view(c, f))
        self._class_counts.copy_(parts[4])
        self._locality.copy_(parts[5])
        self._edge.copy_(parts[6])
        self._shift.copy_(global_mean)
        self._has_shift = True
        self._reduced = True

    def compute(self) -> QPMStatistics:
        """Finish ``A``, ``mean``, ``std``, ``locality``, ``edge`` and ``B`` from the sums."""
        n = float(self._count.item())
        if n == 0:
            raise ValueError("no images were accumulated; call update() with at least one batch")
        counts = self._class_counts.cpu().numpy()
        absent = np.flatnonzero(counts == 0)
        if absent.size:
            raise ValueError(
                f"classes {absent.tolist()} have no images among the {int(n)} accumulated, so their "
                f"correlation A[:, c] is undefined; pass the full training set or the right num_classes")
        shift, total, total_sq = (t.cpu().numpy() for t in (self._shift, self._sum, self._sum_sq))
        mean_d = total / n
        mean = shift + mean_d
        std = np.sqrt(np.maximum(total_sq / n - mean_d ** 2, 0.0))  # population std (ddof=0)
        constant = std <= CONSTANT_RTOL * np.abs(mean)
        std[constant] = 0.0
        if constant.all():
            raise ValueError(f"all {self.num_features} features are constant over the {int(n)} images; A is undefined")
        # cov(x_f, y_c) = sum_{i in c} (x_if - mean_f) / N ; std(y_c) = sqrt(p_c (1 - p_c))
        cov = (self._class_sum.cpu().numpy().T - np.outer(mean_d, counts)) / n
        p = counts / n
        corr = np.zeros_like(cov)
        corr[~constant] = cov[~constant] / np.outer(std[~constant], np.sqrt(p * (1 - p)))
        corr = np.clip(corr, -1.0, 1.0)
        locality = self._locality.cpu().numpy() / n
        edge = -self._edge.cpu().numpy()
        return QPMStatistics(
            A=corr / np.abs(corr).max(), B=finish_locality_bias(locality, edge), mean=mean, std=std,
            locality=locality, edge=edge, class_counts=np.rint(counts).astype(np.int64), num_images=int(n))


def collect_statistics(
        model: nn.Module,
        loader,
        num_classes: int,
        device: Union[str, torch.device] = "cpu",
        amp: bool = False,
        progress: bool = False,
        observers: Sequence[Callable[[ForwardBatch], None]] = (),
) -> QPMStatistics:
    """One :func:`forward_pass` over ``loader`` accumulating the statistics (:class:`StatisticsAccumulator`).

    ``loader`` yields ``(images, targets, ...)``; use eval transforms (the un-augmented training set:
    docs/METHOD.md, "Pipeline" stage 2). The model is moved to ``device`` and its train/eval mode restored
    afterwards. The sums live on ``device`` if it supports float64, else on the CPU. Under ``torch.distributed`` every
    rank passes its shard and receives the statistics of all ranks (every rank must see >= 1 batch).

    ``observers`` ride along on the same pass and do not change the statistics: each receives every
    batch as a :class:`ForwardBatch` (e.g. :class:`qpm_timm.explain.GalleryCollector`, the feature gallery of
    the dense model's channels).
    """
    device = torch.device(device)
    accumulator = None

    if not hasattr(getattr(model, "module", model), "forward_with_features"):
        raise TypeError(
            "model must implement forward_with_features(x) -> (logits, feature_maps, pooled); "
            "build it with qpm_timm.create_qpm(..., head='dense')")

    def accumulate(batch: ForwardBatch) -> None:
        nonlocal accumulator
        if accumulator is None:
            accumulator = StatisticsAccumulator(batch.pooled.shape[1], num_classes, _float64_device(device))
        accumulator.update(batch.pooled, batch.targets, batch.feature_maps)

    forward_pass(model, loader, [accumulate, *observers], device, amp, progress, desc="QPM statistics")
    if accumulator is None:
        raise ValueError("the loader yielded no batches")
    accumulator.all_reduce()
    return accumulator.compute()
