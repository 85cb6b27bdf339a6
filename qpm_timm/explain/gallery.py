""" Feature galleries: every feature's most activating images and the patch around its map's maximum.

:class:`GalleryCollector` keeps, per feature channel, the ``k`` images with the largest pooled activation
seen so far, with their label, the maximum of the feature's map on them and where it lies. It rides along a
pass over a dataset as an observer of :func:`qpm_timm.forward.forward_pass` / ``collect_statistics``, so the
training run's statistics pass over the un-augmented training set gives the gallery of every dense channel
for free; memory is ``O(F * k)``, whatever the number of images. The report later keeps the rows of the
selected channels (:meth:`FeatureGallery.select`) and re-reads the images through their dataset indices.

Under ``torch.distributed`` with the sharded statistics loader (``create_qpm_loader(..., shard=True)``, rank
``r`` reads images ``r::world``), every rank records indices into the whole dataset and
``GalleryCollector.gather(all_ranks=True)`` (a collective: call it on every rank) merges the ranks' top-k lists.
"""
import os
import zipfile
from dataclasses import dataclass, fields
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from ..atomic import atomic_write
from ..forward import ForwardBatch

__all__ = ['FeatureGallery', 'GalleryCollector', 'patch_box', 'PATCH_FRACTION', 'GALLERY_K']

PATCH_FRACTION = 0.4  # side of a gallery patch, as a fraction of the image's shorter side
GALLERY_K = 16  # images kept per feature by default

PathLike = Union[str, os.PathLike]


def patch_box(location: Sequence[int], map_size: Sequence[int], image_size: Sequence[int],
              fraction: float = PATCH_FRACTION) -> Tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` pixels of the square patch centred on map cell ``location = (row, col)``
    of an ``map_size = (H', W')`` map over an ``image_size = (H, W)`` image, shifted to lie inside the image."""
    (row, col), (h, w), (height, width) = location, map_size, image_size
    side = max(1, min(height, width, int(round(fraction * min(height, width)))))
    centre_y, centre_x = (row + 0.5) * height / h, (col + 0.5) * width / w
    top = int(np.clip(round(centre_y - side / 2), 0, height - side))
    left = int(np.clip(round(centre_x - side / 2), 0, width - side))
    return top, left, top + side, left + side


@dataclass
class FeatureGallery:
    """Top-``k`` images of each feature channel, best first (rows: channels; columns: ranks).

    ``index`` is -1 (and ``score`` -inf) where fewer than ``k`` images were seen.
    """
    channels: np.ndarray  # (F,) backbone channel of every row
    index: np.ndarray  # (F, k) dataset index of the image
    label: np.ndarray  # (F, k) its label
    score: np.ndarray  # (F, k) the feature's pooled activation on it (the ranking key)
    peak: np.ndarray  # (F, k) the maximum of the feature's map on it
    location: np.ndarray  # (F, k, 2) (row, col) of that maximum on the map
    map_size: np.ndarray  # (2,) H', W' of the feature maps
    image_size: np.ndarray  # (2,) H, W of the images fed to the model
    num_images: int

    def __post_init__(self):
        for name, dtype in (('channels', np.int64), ('index', np.int64), ('label', np.int64),
                            ('score', np.float32), ('peak', np.float32), ('location', np.int64),
                            ('map_size', np.int64), ('image_size', np.int64)):
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))
        self.num_images = int(self.num_images)
        f, k = self.index.shape
        if self.channels.shape != (f,) or self.location.shape != (f, k, 2) or any(
                getattr(self, name).shape != (f, k) for name in ('label', 'score', 'peak')):
            raise ValueError(f'inconsistent gallery arrays: channels {self.channels.shape}, index {self.index.shape}, '
                             f'location {self.location.shape}')

    @property
    def k(self) -> int:
        return self.index.shape[1]

    def select(self, channels: Sequence[int]) -> 'FeatureGallery':
        """The rows of ``channels`` in that order (e.g. the QPM's selection out of a dense model's gallery)."""
        row_of = {int(c): i for i, c in enumerate(self.channels)}
        missing = [int(c) for c in channels if int(c) not in row_of]
        if missing:
            raise ValueError(f'the gallery has no rows for channels {missing[:10]}; it was collected on other '
                             f'channels (e.g. another model): collect it again for this model.')
        rows = [row_of[int(c)] for c in channels]
        return FeatureGallery(self.channels[rows], self.index[rows], self.label[rows], self.score[rows],
                              self.peak[rows], self.location[rows], self.map_size, self.image_size, self.num_images)

    def patch(self, row: int, rank: int, fraction: float = PATCH_FRACTION) -> Tuple[int, int, int, int]:
        """:func:`patch_box` of entry ``rank`` of feature row ``row``."""
        return patch_box(self.location[row, rank], self.map_size, self.image_size, fraction)

    def save(self, path: PathLike) -> None:
        """Write an ``.npz`` file atomically (the earlier file stays intact if writing fails)."""
        with atomic_write(path, 'wb') as fh:
            np.savez(fh, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def load(cls, path: PathLike) -> 'FeatureGallery':
        """Read a file written by :meth:`save`; a missing, damaged or foreign file names itself."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'gallery file {path} does not exist.')
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f'{path} is not a readable gallery file ({e}); collect the gallery again.') from e
        missing = [f.name for f in fields(cls) if f.name not in arrays]
        if missing:
            raise ValueError(f'{path} is not a feature gallery file: missing {missing}.')
        return cls(**{f.name: arrays[f.name] for f in fields(cls)})


def _top_k(k: int, score: torch.Tensor, index: torch.Tensor, *payload: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The ``k`` entries of every row with the largest ``score`` (F, M), best first, ties to the lower dataset
    ``index`` (so the result does not depend on batching or sharding), with the matching payload."""
    by_index = index.argsort(dim=1, stable=True)
    by_score = score.gather(1, by_index).argsort(dim=1, descending=True, stable=True)
    order = by_index.gather(1, by_score)[:, :k]
    return tuple(t.gather(1, order if t.dim() == 2 else order[..., None].expand(-1, -1, t.shape[2]))
                 for t in (score, index, *payload))


def _pad(k: int, score, index, label, peak, location) -> Tuple[torch.Tensor, ...]:
    """Top-k lists with fewer than ``k`` columns filled up with empty entries (score -inf, index -1)."""
    pad = k - score.shape[1]
    if pad <= 0:
        return score, index, label, peak, location
    f = score.shape[0]
    empty = lambda fill, t, *tail: torch.full((f, pad, *tail), fill, dtype=t.dtype, device=t.device)  # noqa: E731
    return (torch.cat([score, empty(-float('inf'), score)], 1), torch.cat([index, empty(-1, index)], 1),
            torch.cat([label, empty(-1, label)], 1), torch.cat([peak, empty(0, peak)], 1),
            torch.cat([location, empty(0, location, 2)], 1))


class GalleryCollector:
    """Streaming top-``k`` images per feature channel (module docstring); an observer of
    :func:`qpm_timm.forward.forward_pass` and ``collect_statistics(..., observers=[collector])``.

    Args:
        k: images kept per channel.
        channels: the backbone channel of each row of the feature maps it will see; default ``0..F-1`` (the maps
            of a dense model); pass ``model.head.selection`` for the maps of a QPM.
        image_size: ``(H, W)`` of the images, when the batches carry cached backbone maps instead of images (the
            feature cache, ``model.reading_backbone_maps()``); default: the batches' own size.
    """

    def __init__(self, k: int = GALLERY_K, channels: Optional[Sequence[int]] = None,
                 image_size: Optional[Sequence[int]] = None):
        if int(k) < 1:
            raise ValueError(f'k must be >= 1, got {k}')
        self.k = int(k)
        self.channels = None if channels is None else torch.as_tensor(channels, dtype=torch.long).cpu()
        self._state: Optional[Tuple[torch.Tensor, ...]] = None  # score, index, label, peak, location
        self._map_size = self._image_size = None
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self._count = 0

    def __call__(self, batch: ForwardBatch) -> None:
        """Merge one batch's images into the running top-k lists."""
        if batch.indices is None:
            raise ValueError('the gallery needs the dataset index of every image: use an unshuffled loader.')
        maps = batch.feature_maps.detach()
        n, f, h, w = maps.shape
        if self.channels is not None and self.channels.numel() != f:
            raise ValueError(f'{self.channels.numel()} channels given for feature maps with {f} channels')
        sizes = (h, w), self.image_size or tuple(batch.images.shape[-2:])
        if self._map_size is None:
            self._map_size, self._image_size = sizes
        elif sizes != (self._map_size, self._image_size):
            raise ValueError(f'map/image size {sizes} differs from the first batch\'s '
                             f'{(self._map_size, self._image_size)}: use a fixed-size eval transform.')
        device = maps.device
        peak, where = maps.flatten(2).max(dim=2)  # (n, f), in the maps' dtype: no float copy of the maps
        batch_state = (
            batch.pooled.detach().float().T,
            batch.indices.to(device)[None].expand(f, n),
            torch.as_tensor(batch.targets).to(device, torch.long)[None].expand(f, n),
            peak.float().T,
            torch.stack([where // w, where % w], dim=2).transpose(0, 1),
        )
        self._count += n
        if self._state is not None:
            batch_state = tuple(torch.cat([old, new], dim=1) for old, new in zip(self._state, batch_state))
        self._state = _top_k(self.k, *batch_state)

    @property
    def seen(self) -> bool:
        """Whether any batch went through the collector."""
        return self._state is not None

    def gather(self, all_ranks: bool = False) -> FeatureGallery:
        """The gallery of the images seen; with ``all_ranks`` under ``torch.distributed``, of the images of every
        rank (a collective: every rank must call it, e.g. after the sharded statistics pass)."""
        if self._state is None:
            raise ValueError('the gallery saw no images.')
        state, count = _pad(self.k, *self._state), self._count
        if all_ranks and dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            merged = []
            for t in state:
                parts = [torch.empty_like(t) for _ in range(world)]
                dist.all_gather(parts, t.contiguous())
                merged.append(torch.cat(parts, dim=1))
            state = _top_k(self.k, *merged)
            total = torch.tensor([count], dtype=torch.long, device=state[0].device)
            dist.all_reduce(total)
            count = int(total.item())
        score, index, label, peak, location = (t.cpu().numpy() for t in state)
        channels = self.channels if self.channels is not None else torch.arange(score.shape[0])
        return FeatureGallery(channels.numpy(), index, label, score, peak, location, self._map_size,
                              self._image_size, count)
