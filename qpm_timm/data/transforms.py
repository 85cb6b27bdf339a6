"""Train / eval transforms of the QPM recipe and the per-dataset normalisation and image size.

Fine-grained datasets (CUB, Stanford Cars, FGVC-Aircraft, class-per-folder trees) follow the
authors' recipe (QPM_METHOD.md, "Recipe"): images already cropped to the object (CUB with
``crop_to_bbox=True``) are resized to a square; the others are resized on the short side and randomly
cropped with 4 px padding (center-cropped for eval). Training adds a horizontal flip,
``ColorJitter(0.1, 0.1, 0.1)`` and ``TrivialAugmentWide``. ImageNet uses timm's standard
pipeline (RandomResizedCrop, flip, colour jitter 0.1; eval resize to 1/0.875 and center crop).
The concepts dataset is only flipped and shifted: TrivialAugment's rotations and shears would
turn one concept into another (horizontal into vertical stripes, a square into a diamond).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms as T

from .concepts import CONCEPTS_IMG_SIZE, CONCEPTS_MEAN, CONCEPTS_NUM_CLASSES, CONCEPTS_STD

__all__ = ['QPMDataConfig', 'resolve_qpm_data_config', 'create_qpm_transform']


@dataclass(frozen=True)
class QPMDataConfig:
    """Normalisation and default input size of a dataset."""
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    img_size: int
    num_classes: Optional[int] = None


# Per-dataset statistics as used by the authors (configs/dataset_params.py of ThomasNorr/QPM);
# ImageNet's for ImageNet and for any other natural-image folder.
_CONFIGS = {
    'concepts': QPMDataConfig(CONCEPTS_MEAN, CONCEPTS_STD, CONCEPTS_IMG_SIZE, CONCEPTS_NUM_CLASSES),
    'cub': QPMDataConfig((0.4853, 0.4964, 0.4295), (0.2300, 0.2258, 0.2625), 224, 200),
    'cars': QPMDataConfig((0.4593, 0.4466, 0.4453), (0.2920, 0.2910, 0.2988), 224, 196),
    'aircraft': QPMDataConfig((0.4827, 0.5130, 0.5352), (0.2236, 0.2170, 0.2478), 224, 100),
    'imagenet': QPMDataConfig(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 224, 1000),
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


def create_qpm_transform(
        name: str = 'concepts',
        is_training: bool = False,
        img_size: Optional[int] = None,
        crop_to_bbox: bool = True,
        jitter: float = 0.1,
        trivial_augment: bool = True,
        hflip: bool = True,
        mean: Optional[Tuple[float, ...]] = None,
        std: Optional[Tuple[float, ...]] = None,
):
    """The recipe's transform for dataset ``name`` (PIL image -> normalised tensor).

    Args:
        name: dataset name as accepted by ``create_qpm_dataset``.
        is_training: augmenting train transform or deterministic eval transform.
        img_size: output side; default from ``resolve_qpm_data_config``.
        crop_to_bbox: for CUB, whether the images are cropped to their bounding boxes (then
            resized to a square, else resized on the short side and (random/center) cropped).
        jitter: ColorJitter strength for brightness, contrast, saturation (0 disables).
        trivial_augment, hflip: the remaining train augmentations of the recipe.
        mean, std: override the dataset's normalisation.
    """
    key = canonical_name(name)
    cfg = resolve_qpm_data_config(key)
    size = img_size or cfg.img_size
    normalize = T.Normalize(mean=list(mean or cfg.mean), std=list(std or cfg.std))
    if key == 'concepts':
        ops = [T.Resize((size, size))]
        if is_training:
            ops += [T.RandomCrop(size, padding=size // 16, padding_mode='reflect')]
            ops += [T.RandomHorizontalFlip()] if hflip else []
        return T.Compose(ops + [T.ToTensor(), normalize])
    if key == 'imagenet':
        return create_transform(
            size, is_training=is_training, hflip=0.5 if hflip else 0.0, color_jitter=jitter,
            mean=tuple(mean or cfg.mean), std=tuple(std or cfg.std), crop_pct=0.875)
    squash = key == 'cub' and crop_to_bbox
    ops = [T.Resize((size, size)) if squash else T.Resize(size)]
    if not squash:
        ops.append(T.RandomCrop(size, padding=4) if is_training else T.CenterCrop(size))
    if is_training:
        ops += [T.RandomHorizontalFlip()] if hflip else []
        ops += [T.ColorJitter(jitter, jitter, jitter)] if jitter else []
        ops += [T.TrivialAugmentWide()] if trivial_augment else []
    return T.Compose(ops + [T.ToTensor(), normalize])
