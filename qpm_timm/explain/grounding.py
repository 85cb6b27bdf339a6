""" The explanation metrics of a QPM over a dataset: Plausibility, Feature grounding, Faithfulness (docs/METHOD.md,
"Explanation metrics").

:class:`ExplanationCollector` rides on a :func:`qpm_timm.forward.forward_pass` over an unshuffled loader (it reads
each image's masks by its dataset index) and gathers, per batch:

* Plausibility, where the dataset has object masks (the concepts dataset: the union of the planted concepts;
  CUB with its segmentations): :func:`qpm_timm.metrics.plausibility` of every image, and its chance level, the
  share of the grid the dilated object covers (what an evidence map spread evenly scores);
* Feature grounding, where it has concept masks (the concepts dataset): :func:`qpm_timm.metrics.grounding_sums`,
  scored at the end with each feature matched to the concept it tracks (:func:`qpm_timm.metrics.match_features`
  over the same images);
* Faithfulness by deletion, on request, on a fixed random subset of the images (any dataset): per image, each
  feature's window around the maximum of its map (``cells x cells`` feature-map cells) is blanked in one copy and a
  random window of the same size in another (one per image, shared by the features; a grid smaller than the
  window is blanked whole, so both drops are equal there); the drops of the feature's
  pooled activation and of the predicted class's logit are averaged over the images whose predicted class uses
  the feature. Costs ``F' + 1`` extra forward passes per chosen image.
"""
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch

from ..data.masks import dataset_masks, has_masks
from ..forward import ForwardBatch
from ..metrics import (
    blank_windows,
    dilate_masks,
    feature_grounding,
    grounding_sums,
    match_features,
    peak_windows,
    plausibility,
)

__all__ = ['Deletion', 'ExplanationMetrics', 'ExplanationCollector', 'FAITHFULNESS_IMAGES', 'WINDOW_CELLS']

FAITHFULNESS_IMAGES = 256  # images the deletion test uses by default (a fixed random subset)
WINDOW_CELLS = 3  # side of the blanked window in feature-map cells (the 3 x 3 neighbourhood Plausibility dilates by)


@dataclass
class Deletion:
    """Faithfulness by deletion, per feature ``(F',)``: mean drops when the peak window or a random window is
    blanked, over ``images`` images whose predicted class uses the feature."""
    images: np.ndarray
    activation_peak: np.ndarray
    activation_random: np.ndarray
    logit_peak: np.ndarray
    logit_random: np.ndarray

    @staticmethod
    def _ratio(peak: np.ndarray, random: np.ndarray) -> np.ndarray:
        """peak / random mean drop; NaN where blanking a random window did not lower the value on average."""
        return np.where(random > 0, peak / np.where(random > 0, random, 1.0), np.nan)

    @property
    def activation_ratio(self) -> np.ndarray:
        return self._ratio(self.activation_peak, self.activation_random)

    @property
    def logit_ratio(self) -> np.ndarray:
        return self._ratio(self.logit_peak, self.logit_random)


@dataclass
class ExplanationMetrics:
    """What :class:`ExplanationCollector` measured; None where the dataset (or the request) does not allow it."""
    plausibility: Optional[float] = None
    plausibility_chance: Optional[float] = None  # the mean share of the grid the dilated object covers
    grounding: Optional[np.ndarray] = None  # (F',) per feature, NaN where undefined
    grounding_chance: Optional[np.ndarray] = None  # (F',) the share of the grid its concept covers
    matching: Optional[np.ndarray] = None  # (F',) the concept of every feature (-1: none)
    deletion: Optional[Deletion] = None

    def summary(self) -> Dict[str, float]:
        """The means ``validate.py`` reports: plausibility, feature_grounding and, with the deletion test,
        faithfulness (mean activation-drop ratio) and faithfulness_logit (mean logit-drop ratio)."""
        out: Dict[str, float] = {}
        if self.plausibility is not None:
            out['plausibility'] = self.plausibility
        if self.grounding is not None:
            out['feature_grounding'] = _nanmean(self.grounding)
        if self.deletion is not None:
            out['faithfulness'] = _nanmean(self.deletion.activation_ratio)
            out['faithfulness_logit'] = _nanmean(self.deletion.logit_ratio)
        return out


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float('nan')


class ExplanationCollector:
    """Observer of :func:`qpm_timm.forward.forward_pass` gathering the explanation metrics of QPM ``model`` over
    ``dataset`` (module docstring); :meth:`result` after the pass."""

    def __init__(self, model, dataset, faithfulness: bool = False, max_images: int = FAITHFULNESS_IMAGES,
                 cells: int = WINDOW_CELLS, seed: int = 0):
        if max_images < 1:
            raise ValueError(f'max_images={max_images} must be >= 1.')
        self.model, self.dataset, self.cells, self.seed = model, dataset, cells, seed
        self.weights = model.class_weights.detach().float()
        self.object = has_masks(dataset, 'object')
        self.concept = has_masks(dataset, 'concept') and getattr(dataset, 'concept_presence', None) is not None
        self.chosen = None
        if faithfulness:
            order = np.random.default_rng([seed, 2718]).permutation(len(dataset))
            self.chosen = torch.zeros(len(dataset), dtype=torch.bool)
            self.chosen[torch.as_tensor(order[:max_images])] = True
        self.scores, self.areas, self.pooled, self.indices = [], [], [], []
        self.sums = None
        self.drops = None

    def __call__(self, batch: ForwardBatch) -> None:
        if batch.indices is None:
            raise ValueError('the explanation metrics read masks by dataset index: use an unshuffled loader.')
        grid = tuple(batch.feature_maps.shape[-2:])
        maps = batch.feature_maps.float()
        if self.object:
            masks = dataset_masks(self.dataset, batch.indices, grid, 'object').to(maps.device)
            self.scores.append(plausibility(maps, self.weights.to(maps.device), batch.logits.argmax(1), masks).cpu())
            self.areas.append(dilate_masks(masks).float().mean(dim=(1, 2)).cpu())
        if self.concept:
            sums = grounding_sums(maps, dataset_masks(self.dataset, batch.indices, grid, 'concept').to(maps.device))
            self.sums = sums if self.sums is None else tuple(a + b for a, b in zip(self.sums, sums))
            self.pooled.append(batch.pooled.float().cpu())
            self.indices.append(batch.indices.cpu())
        if self.chosen is not None:
            self._delete(batch)

    def _delete(self, batch: ForwardBatch) -> None:
        """The deletion test on the batch's chosen images (module docstring)."""
        chosen = self.chosen[batch.indices.cpu()].to(batch.images.device)
        if not chosen.any():
            return
        images, maps = batch.images[chosen], batch.feature_maps[chosen].float()
        logits, pooled = batch.logits[chosen].float(), batch.pooled[chosen].float()
        n, f, h, w = maps.shape
        cells = min(self.cells, h, w)  # a grid smaller than the window: the whole grid
        predicted = logits.argmax(1)
        random = torch.as_tensor(np.stack([
            np.random.default_rng([self.seed, int(i)]).integers(0, (h - cells + 1, w - cells + 1))
            for i in batch.indices.cpu()[chosen.cpu()]]), device=maps.device)
        windows = torch.cat([peak_windows(maps, cells), random[:, None]], dim=1)  # (n, F' + 1, 2)
        blanked = blank_windows(images, windows, (h, w), cells)
        outputs = [self.model.forward_with_features(part) for part in blanked.split(max(n, 1))]
        new_logits = torch.cat([o[0] for o in outputs]).float().reshape(n, f + 1, -1)
        new_pooled = torch.cat([o[2] for o in outputs]).float().reshape(n, f + 1, f)
        rows, feats = torch.arange(n, device=maps.device), torch.arange(f, device=maps.device)
        act_peak = pooled - new_pooled[:, feats, feats]
        act_random = pooled - new_pooled[:, f, :]
        logit = logits[rows, predicted][:, None]
        logit_peak = logit - new_logits[rows[:, None], feats[None, :], predicted[:, None]]
        logit_random = (logit - new_logits[rows, f, predicted][:, None]).expand(n, f)
        uses = (self.weights.to(maps.device)[predicted] != 0).double()
        sums = torch.stack([uses.sum(0)] + [(d.double() * uses).sum(0)
                                            for d in (act_peak, act_random, logit_peak, logit_random)]).cpu().numpy()
        self.drops = sums if self.drops is None else self.drops + sums

    def result(self) -> ExplanationMetrics:
        out = ExplanationMetrics()
        if self.scores:
            out.plausibility = float(torch.cat(self.scores).mean())
            out.plausibility_chance = float(torch.cat(self.areas).mean())
        if self.sums is not None:
            indices = torch.cat(self.indices).numpy()
            out.matching, _ = match_features(torch.cat(self.pooled).numpy(), self.dataset.concept_presence[indices])
            out.grounding, out.grounding_chance = feature_grounding(*self.sums, out.matching)
        if self.chosen is not None:
            f = self.weights.shape[1]
            count, *means = self.drops if self.drops is not None else np.zeros((5, f))
            per = [np.where(count > 0, m / np.maximum(count, 1), np.nan) for m in means]
            out.deletion = Deletion(count.astype(np.int64), *per)
        return out
