""" The hierarchical scores of CHiQPM's prediction sets (docs/METHOD.md, "CHiQPM prediction sets and trees").

For one image, a class's *path* is its ``n_wc`` features ordered by this image's activation (largest first); the
classes whose paths agree with the predicted class's path on the first ``n`` features form the depth-``n`` branch of
the prediction. Everything here is numpy on the features the binary layer sums, computed once per image.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = ['SetInputs', 'set_inputs', 'feature_floor', 'class_members', 'class_paths', 'shared_prefix',
           'hierarchical_scores', 'level_accuracy']


@dataclass
class SetInputs:
    """What the prediction sets of ``N`` images need: the logits ``(N, C)``, the features the binary layer sums,
    shifted to be >= 0, ``(N, F')``, and the labels ``(N,)`` (None for unlabelled images)."""
    logits: np.ndarray
    features: np.ndarray
    labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.logits)

    def subset(self, index: np.ndarray) -> 'SetInputs':
        return SetInputs(self.logits[index], self.features[index], None if self.labels is None else self.labels[index])

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(1)


def feature_floor(head) -> float:
    """A lower bound of the normalised features, fixed by the model (no data): 0 for CHiQPM's ReLU head, else
    ``min_f(-mean_f / std_f)`` (the normalised value of a zero activation, the least a ReLU backbone gives), at most
    0. The scores read ``features - floor`` (clipped at 0), so every activation on a path counts as >= 0."""
    if head.relu:
        return 0.0
    return float(min(0.0, (-head.mean.double() / head.std.double()).min().item()))


@torch.no_grad()
def set_inputs(model, pooled: torch.Tensor, labels=None) -> SetInputs:
    """:class:`SetInputs` of a QPM from the pooled features of its kept channels (``forward_with_features().pooled``
    or :func:`qpm_timm.run.evaluate` with ``keep_features``): the logits are the head's, without dropout."""
    head = model.head
    normalised = head.normalize(pooled.float().to(head.mean.device)).double().cpu()
    weights = model.class_weights.detach().double().cpu()
    features = (normalised - feature_floor(head)).clamp_min(0).numpy()
    return SetInputs(logits=(normalised @ weights.T).numpy(), features=features,
                     labels=None if labels is None else np.asarray(labels, dtype=np.int64))


def class_members(weights) -> np.ndarray:
    """``(C, n_wc)`` the feature indices of every class, ascending (the rows of the binary ``W``)."""
    w = np.asarray(weights) > 0
    counts = w.sum(1)
    if len(set(counts.tolist())) != 1:
        raise ValueError(f'every class needs the same number of features, got {sorted(set(counts.tolist()))}.')
    return np.stack([np.flatnonzero(row) for row in w])


def class_paths(features: np.ndarray, members: np.ndarray):
    """``(paths, values)``, both ``(N, C, n_wc)``: every class's features ordered by the image's activation, largest
    first (ties by feature index), and those activations."""
    values = features[:, members]  # (N, C, K)
    order = np.argsort(-values, axis=2, kind='stable')
    paths = np.take_along_axis(np.broadcast_to(members, values.shape), order, axis=2)
    return paths, np.take_along_axis(values, order, axis=2)


def shared_prefix(paths: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """``delta (N, C, n_wc)`` bool: ``delta[i, c, n - 1]`` when class ``c``'s path agrees with class ``anchor[i]``'s on
    its first ``n`` features."""
    anchor_paths = paths[np.arange(len(paths)), anchor]  # (N, K)
    return np.cumprod(paths == anchor_paths[:, None, :], axis=2).astype(bool)


def hierarchical_scores(inputs: SetInputs, members: np.ndarray, level: int) -> np.ndarray:
    """``(N, C)`` non-conformity scores at depth ``level`` (0 ... n_wc): for a class on the prediction's depth-``level``
    branch, ``-(its activation where its path leaves the prediction's + the shared activations deeper than
    level)``; ``+inf`` for every other class, which a set of this level never holds."""
    paths, values = class_paths(inputs.features, members)
    delta = shared_prefix(paths, inputs.predictions)
    k = members.shape[1]
    if not 0 <= level <= k:
        raise ValueError(f'level must lie in [0, {k}], got {level}.')
    diverges = ~delta[:, :, -1]
    first = np.argmin(delta, axis=2)  # first depth where the paths differ (0 when they never do: masked below)
    at_divergence = np.take_along_axis(values, first[..., None], axis=2)[..., 0] * diverges
    shared_beyond = (values * delta)[:, :, level:].sum(2)
    on_branch = delta[:, :, level - 1] if level else np.ones(delta.shape[:2], dtype=bool)
    return np.where(on_branch, -(at_divergence + shared_beyond), np.inf)


def level_accuracy(inputs: SetInputs, members: np.ndarray) -> np.ndarray:
    """``(n_wc + 1,)``: the share of images whose true class lies on the prediction's depth-``n`` branch, ``n = 0 ...
    n_wc`` (1 at depth 0, the top-1 accuracy at depth ``n_wc``)."""
    paths, _ = class_paths(inputs.features, members)
    delta = shared_prefix(paths, inputs.predictions)
    on_path = delta[np.arange(len(inputs)), inputs.labels]  # (N, K)
    return np.concatenate([[1.0], on_path.mean(0)])
