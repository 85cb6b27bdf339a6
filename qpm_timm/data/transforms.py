"""Train / eval transforms of the QPM recipe and the per-dataset data config (docs/METHOD.md, "Recipe").

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
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as T

from .concepts import CONCEPTS_IMG_SIZE, CONCEPTS_MEAN, CONCEPTS_NUM_CLASSES, CONCEPTS_STD

__all__ = ['QPMDataConfig', 'resolve_qpm_data_config', 'qpm_data_config', 'create_qpm_transform']


@dataclass(frozen=True)
class QPMDataConfig:
    """Normalisation, default input size and eval crop of a dataset."""
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    img_size: int
    num_classes: Optional[int] = None
    crop_pct: float = 1.0
    interpolation: str = 'bilinear'


# Per-dataset statistics as used by the authors (configs/dataset_params.py of ThomasNorr/QPM);
# ImageNet's for ImageNet and for any other natural-image folder.
_CONFIGS = {
    'concepts': QPMDataConfig(CONCEPTS_MEAN, CONCEPTS_STD, CONCEPTS_IMG_SIZE, CONCEPTS_NUM_CLASSES),
    'cub': QPMDataConfig((0.4853, 0.4964, 0.4295), (0.2300, 0.2258, 0.2625), 224, 200),
    'cars': QPMDataConfig((0.4593, 0.4466, 0.4453), (0.2920, 0.2910, 0.2988), 224, 196),
    'aircraft': QPMDataConfig((0.4827, 0.5130, 0.5352), (0.2236, 0.2170, 0.2478), 224, 100),
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
        ops = [T.Resize((size, size)), T.RandomCrop(size, padding=size // 16, padding_mode='reflect')]
        ops += [T.RandomHorizontalFlip()] if hflip else []
        return T.Compose(ops + [T.ToTensor(), normalize])
    if key == 'imagenet':
        return create_transform(size, is_training=True, hflip=0.5 if hflip else 0.0, color_jitter=jitter,
                                mean=tuple(cfg['mean']), std=tuple(cfg['std']))
    squash = cfg['crop_mode'] == 'squash'
    ops = [T.Resize((size, size))] if squash else [T.Resize(size), T.RandomCrop(size, padding=4)]
    ops += [T.RandomHorizontalFlip()] if hflip else []
    ops += [T.ColorJitter(jitter, jitter, jitter)] if jitter else []
    ops += [T.TrivialAugmentWide()] if trivial_augment else []
    return T.Compose(ops + [T.ToTensor(), normalize])
