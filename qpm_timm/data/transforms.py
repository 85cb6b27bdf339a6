"""Train / eval transforms of the QPM recipe (docs/METHOD.md, "Recipe"); the per-dataset data config is
:mod:`.configs`.

The **eval** transform of every dataset is timm's own (``timm.data.create_transform``) built from a timm data
config (``input_size``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``, ``interpolation``): the config a training
run evaluates with is the one its export records in ``pretrained_cfg``, so timm's ``resolve_data_config(model=...)``
rebuilds exactly the same tensors. The per-dataset defaults (:func:`qpm_data_config`) encode the recipe: images
already cropped to the object (CUB with ``crop_to_bbox=True``) are squashed to a square (``crop_mode='squash'``,
``crop_pct=1``); the other fine-grained sets are resized on the short side and center-cropped (``crop_pct=1``);
ImageNet uses timm's standard ``crop_pct=0.875``.

The **training** augmentation is dataset-specific: fine-grained datasets (CUB, Stanford Cars, FGVC-Aircraft,
class-per-folder trees) resize (square for box crops, else short side + random crop with 4 px padding), then
a horizontal flip,
``ColorJitter(0.1, 0.1, 0.1)`` and ``TrivialAugmentWide``. ImageNet uses timm's standard
pipeline (RandomResizedCrop, flip, colour jitter 0.1; eval resize to 1/0.875 and center crop).
The concepts dataset is only flipped and shifted: TrivialAugment's rotations and shears would
turn one concept into another (horizontal into vertical stripes, a square into a diamond).
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from timm.data import create_transform
from timm.data.transforms import MaybeToTensor
from torchvision import transforms as T

from .configs import QPMDataConfig, canonical_name, qpm_data_config, resolve_qpm_data_config

__all__ = ['QPMDataConfig', 'resolve_qpm_data_config', 'qpm_data_config', 'create_qpm_transform', 'ShiftFlip',
           'batched_transform']


def create_qpm_transform(
        name: str = 'concepts',
        is_training: bool = False,
        img_size: Optional[int] = None,
        crop_to_bbox: bool = True,
        jitter: float = 0.1,
        trivial_augment: bool = True,
        hflip: bool = True,
        data_config: Optional[Dict[str, Any]] = None,
):
    """The recipe's transform for dataset ``name`` (PIL image -> normalised tensor).

    Args:
        name: dataset name as accepted by ``create_qpm_dataset``.
        is_training: augmenting train transform or timm's deterministic eval transform.
        img_size: output side; default from ``data_config``, else the dataset's.
        crop_to_bbox: for CUB, whether the images are cropped to their bounding boxes (then
            resized to a square, else resized on the short side and (random/center) cropped).
        jitter: ColorJitter strength for brightness, contrast, saturation (0 disables).
        trivial_augment, hflip: the remaining train augmentations of the recipe.
        data_config: a timm data config overriding the dataset's (:func:`qpm_data_config`) key by key, e.g. the
            ``pretrained_cfg`` of an exported model; the eval transform is exactly timm's for it.
    """
    key = canonical_name(name)
    cfg = {**qpm_data_config(key, crop_to_bbox=crop_to_bbox), **(data_config or {})}
    if img_size:
        cfg['input_size'] = (3, img_size, img_size)
    if not is_training:
        return create_transform(cfg['input_size'], is_training=False, interpolation=cfg['interpolation'],
                                mean=tuple(cfg['mean']), std=tuple(cfg['std']), crop_pct=cfg['crop_pct'],
                                crop_mode=cfg['crop_mode'])
    size = cfg['input_size'][-1]
    normalize = T.Normalize(mean=list(cfg['mean']), std=list(cfg['std']))
    if key == 'concepts':
        return ShiftFlip(size, hflip, normalize)
    if key == 'imagenet':
        return create_transform(size, is_training=True, hflip=0.5 if hflip else 0.0, color_jitter=jitter,
                                mean=tuple(cfg['mean']), std=tuple(cfg['std']))
    squash = cfg['crop_mode'] == 'squash'
    ops = [T.Resize((size, size))] if squash else [T.Resize(size), T.RandomCrop(size, padding=4)]
    ops += [T.RandomHorizontalFlip()] if hflip else []
    ops += [T.ColorJitter(jitter, jitter, jitter)] if jitter else []
    ops += [T.TrivialAugmentWide()] if trivial_augment else []
    return T.Compose(ops + [T.ToTensor(), normalize])


def _normalize(images: torch.Tensor, normalize: T.Normalize) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float, the same arithmetic as ``ToTensor`` then ``Normalize``."""
    x = images.permute(0, 3, 1, 2).float().div(255)
    mean = torch.as_tensor(normalize.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(normalize.std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub(mean).div(std)


def _reflect(index: torch.Tensor, n: int) -> torch.Tensor:
    """Indices outside ``[0, n)`` mirrored without repeating the edge (``np.pad``'s and torch's ``'reflect'``)."""
    index = index.abs()
    return torch.where(index >= n, 2 * (n - 1) - index, index)


class ShiftFlip(T.Compose):
    """The concepts dataset's training augmentation: a random shift (reflect-pad ``size // 16`` px, random
    ``size`` crop), a horizontal flip with probability 0.5, normalisation.

    Called on a PIL image it is the torchvision pipeline ``Resize((size, size))``, ``RandomCrop(size, padding,
    padding_mode='reflect')``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``. :meth:`batch` does the
    same to a whole batch of ``size x size`` uint8 images at once, with the offsets and flips drawn from torch's
    global RNG as torchvision draws them (so a seeded epoch draws the same batches); for given offsets and flips
    both give the same tensor (``tests/test_data_concepts.py``).
    """

    def __init__(self, size: int, hflip: bool, normalize: T.Normalize):
        self.size, self.padding, self.hflip, self.normalize = size, size // 16, hflip, normalize
        ops = [T.Resize((size, size)), T.RandomCrop(size, padding=self.padding, padding_mode='reflect')]
        ops += [T.RandomHorizontalFlip()] if hflip else []
        super().__init__(ops + [T.ToTensor(), normalize])

    def batch(self, images: torch.Tensor, offsets: Optional[torch.Tensor] = None,
              flips: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(N, size, size, 3)`` uint8 -> ``(N, 3, size, size)`` float: image ``i`` is the crop at ``offsets[i]``
        = (top, left) of its padded version (``0 .. 2 * padding``), mirrored where ``flips[i]``; both are drawn
        when not given."""
        n, h, w = images.shape[:3]
        if (h, w) != (self.size, self.size):
            raise ValueError(f'ShiftFlip.batch takes {self.size} x {self.size} images, got {h} x {w}.')
        if offsets is None:
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2))
        if flips is None:
            flips = torch.rand(n) < 0.5 if self.hflip else torch.zeros(n, dtype=torch.bool)
        ramp = torch.arange(self.size)
        rows = _reflect(offsets[:, :1] - self.padding + ramp, h)  # (N, size)
        cols = offsets[:, 1:] - self.padding + torch.where(flips[:, None], ramp.flip(0), ramp)
        cols = _reflect(cols, w)
        picked = images[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return _normalize(picked, self.normalize)


def _side(size) -> Optional[Tuple[int, int]]:
    if isinstance(size, int):
        return None  # a short-side resize: the identity only for square images, checked by the caller
    return tuple(size) if len(size) == 2 else (size[0], size[0])


def batched_transform(transform: Optional[Callable], image_size: Sequence[int]) -> Optional[Callable]:
    """A function doing to a ``(N, H, W, 3)`` uint8 batch what ``transform`` does to each ``H x W`` PIL image,
    or None where no batched equivalent is known (then read the images one by one).

    Known: :class:`ShiftFlip` at its own size, and timm's eval transform (resize, center crop, to-tensor,
    normalise) whose resize and crop keep a square ``H x W`` image as it is (the concepts dataset at its
    rendering size), which is then normalisation alone.
    """
    h, w = image_size
    if isinstance(transform, ShiftFlip):
        return transform.batch if (h, w) == (transform.size, transform.size) else None
    ops = getattr(transform, 'transforms', None)
    if type(transform) is not T.Compose or ops is None or len(ops) != 4 or h != w:
        return None
    resize, crop, to_tensor, normalize = ops
    if not (type(resize) is T.Resize and type(crop) is T.CenterCrop and type(to_tensor) in (T.ToTensor, MaybeToTensor)
            and type(normalize) is T.Normalize):
        return None
    resize_side = _side(resize.size)
    if not ((resize_side is None and resize.size == h) or resize_side == (h, w)) or resize.max_size is not None:
        return None
    if _side(crop.size) != (h, w):
        return None
    return lambda images: _normalize(images, normalize)
