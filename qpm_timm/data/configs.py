"""The data config of every dataset (docs/METHOD.md, "Recipe"): normalisation, default input size, class count and
the evaluation crop, as timm data configs (``input_size``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``,
``interpolation``). A training run evaluates with :func:`qpm_data_config` and its export records it in
``pretrained_cfg``, so timm's ``resolve_data_config(model=...)`` rebuilds exactly the same tensors. The recipe: images
already cropped to the object (CUB with ``crop_to_bbox=True``) are squashed to a square (``crop_mode='squash'``,
``crop_pct=1``); the other fine-grained sets are resized on the short side and center-cropped (``crop_pct=1``);
ImageNet uses timm's standard ``crop_pct=0.875``. Plain values only: the models' registry reads them without
importing any transform.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .constants import (
    AIRCRAFT_MEAN,
    AIRCRAFT_STD,
    CARS_MEAN,
    CARS_STD,
    CONCEPTS_IMG_SIZE,
    CONCEPTS_MEAN,
    CONCEPTS_NUM_CLASSES,
    CONCEPTS_STD,
    CUB_MEAN,
    CUB_STD,
)

__all__ = ['QPMDataConfig', 'resolve_qpm_data_config', 'qpm_data_config', 'canonical_name']


@dataclass(frozen=True)
class QPMDataConfig:
    """Normalisation, default input size and eval crop of a dataset."""
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    img_size: int
    num_classes: Optional[int] = None
    crop_pct: float = 1.0
    interpolation: str = 'bilinear'


# Per-dataset statistics as used by the authors (.constants); ImageNet's for ImageNet and for any other
# natural-image folder.
_CONFIGS = {
    'concepts': QPMDataConfig(CONCEPTS_MEAN, CONCEPTS_STD, CONCEPTS_IMG_SIZE, CONCEPTS_NUM_CLASSES),
    'cub': QPMDataConfig(CUB_MEAN, CUB_STD, 224, 200),
    'cars': QPMDataConfig(CARS_MEAN, CARS_STD, 224, 196),
    'aircraft': QPMDataConfig(AIRCRAFT_MEAN, AIRCRAFT_STD, 224, 100),
    'imagenet': QPMDataConfig(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 224, 1000, crop_pct=0.875),
}
_ALIASES = {'cub200': 'cub', 'cub2011': 'cub', 'cub_200_2011': 'cub', 'stanford_cars': 'cars',
            'stanfordcars': 'cars', 'fgvc_aircraft': 'aircraft', 'fgvcaircraft': 'aircraft'}
_NATURAL_FOLDER = QPMDataConfig(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 224, None)


def canonical_name(name: str) -> str:
    """Lower-case dataset key with aliases resolved (``'CUB2011'`` -> ``'cub'``)."""
    key = (name or '').lower().replace('-', '_')
    return _ALIASES.get(key, key)


def resolve_qpm_data_config(name: str) -> QPMDataConfig:
    """Mean, std, default image size (and class count when fixed) of a dataset name.

    Unknown names (a class-per-folder tree, anything timm's ``create_dataset`` reads) get
    ImageNet's mean/std at 224 px and ``num_classes=None``.
    """
    return _CONFIGS.get(canonical_name(name), _NATURAL_FOLDER)


def qpm_data_config(name: str, img_size: Optional[int] = None, crop_to_bbox: bool = True) -> Dict[str, Any]:
    """The timm data config (``input_size``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``, ``interpolation``) a
    model trained on dataset ``name`` is evaluated with; ``img_size`` overrides the dataset's side. CUB's box
    crops (``crop_to_bbox``) are squashed to a square, everything else keeps its aspect ratio."""
    key = canonical_name(name)
    cfg = resolve_qpm_data_config(key)
    size = img_size or cfg.img_size
    return dict(input_size=(3, size, size), mean=tuple(cfg.mean), std=tuple(cfg.std), crop_pct=cfg.crop_pct,
                crop_mode='squash' if key == 'cub' and crop_to_bbox else 'center', interpolation=cfg.interpolation)
