"""One factory for every dataset the scripts reach through ``--dataset`` / ``--data-dir``.

=============================  =====================================================================
name                           dataset
=============================  =====================================================================
``concepts``                   :class:`ConceptsDataset` (generated, no ``root``)
``cub`` (``cub200``, ...)      :class:`CUB200Dataset` (native CUB_200_2011 folder, ``crop_to_bbox=True``)
``cars`` (``stanford_cars``)   torchvision ``StanfordCars`` (``root/stanford_cars/...``)
``aircraft`` (``fgvc_...``)    torchvision ``FGVCAircraft`` (``root/fgvc-aircraft-2013b/...``)
``imagenet``, ``folder``, ''   timm ``create_dataset`` on a class-per-folder tree (or tar)
anything else                  passed to timm ``create_dataset`` unchanged (``torch/...``, ``hfds/...``)
=============================  =====================================================================

Splits (one table, :mod:`.splits`): ``'train'``/``'training'`` is the training split; ``'val'``,
``'validation'``, ``'test'``, ``'eval'`` and ``'evaluation'`` all mean the evaluation split (CUB/Cars/Aircraft
only have a test split; Aircraft trains on ``trainval``, as the authors do). Nothing is downloaded: a missing
dataset raises ``FileNotFoundError`` naming what is missing.
"""
import copy
import os
from typing import Any, Dict, List, Optional, Union

from timm.data import create_dataset
from torch.utils.data import Dataset
from torchvision.datasets import FGVCAircraft, StanfordCars

from .concepts import ConceptsDataset
from .configs import qpm_data_config
from .cub import CUB200Dataset
from .splits import is_train_split
from .transforms import canonical_name, create_qpm_transform

__all__ = ['create_qpm_dataset', 'create_qpm_split', 'with_transform', 'get_class_names', 'StanfordCarsDataset',
           'FGVCAircraftDataset']

def _need_root(name: str, root: Optional[str]) -> str:
    if not root:
        raise ValueError(f'dataset {name!r} needs a root folder (--data-dir).')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'dataset {name!r}: root folder {root!r} does not exist.')
    return root


def _inner_root(root: str, folder: str) -> str:
    """Accept either the parent of ``folder`` (torchvision's layout) or ``folder`` itself."""
    if os.path.basename(os.path.normpath(root)) == folder:
        return os.path.dirname(os.path.normpath(root))
    return root


class StanfordCarsDataset(StanfordCars):
    """torchvision ``StanfordCars`` without download, with ``targets`` and a clear missing-file error.

    ``root`` is the folder containing ``stanford_cars/`` (or ``stanford_cars`` itself), laid out as
    torchvision expects: ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``, ``cars_train/``,
    ``cars_test/``, ``cars_test_annos_withlabels.mat``.
    """

    def __init__(self, root: str, split: str = 'train', **kwargs):
        root = _inner_root(_need_root('cars', root), 'stanford_cars')
        base = os.path.join(root, 'stanford_cars')
        train = is_train_split(split)
        needed = [os.path.join(base, 'devkit', 'cars_meta.mat')]
        needed += ([os.path.join(base, 'devkit', 'cars_train_annos.mat'), os.path.join(base, 'cars_train')] if train
                   else [os.path.join(base, 'cars_test_annos_withlabels.mat'), os.path.join(base, 'cars_test')])
        missing = [p for p in needed if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f'Stanford Cars: missing {", ".join(repr(p) for p in missing)} '
                                    f'(download is not possible; place the files there by hand).')
        super().__init__(root, split='train' if train else 'test', download=False, **kwargs)

    @property
    def targets(self) -> List[int]:
        return [t for _, t in self._samples]


class FGVCAircraftDataset(FGVCAircraft):
    """torchvision ``FGVCAircraft`` without download (``trainval`` for training, ``test`` for eval).

    ``root`` is the folder containing ``fgvc-aircraft-2013b/`` (or that folder itself).
    """

    def __init__(self, root: str, split: str = 'train', annotation_level: str = 'variant', **kwargs):
        root = _inner_root(_need_root('aircraft', root), 'fgvc-aircraft-2013b')
        tv_split = 'trainval' if is_train_split(split) else 'test'
        data = os.path.join(root, 'fgvc-aircraft-2013b', 'data')
        level_file = {'variant': 'variants.txt', 'family': 'families.txt', 'manufacturer': 'manufacturers.txt'}
        if annotation_level not in level_file:
            raise ValueError(f'unknown annotation_level {annotation_level!r}; use one of {sorted(level_file)}.')
        needed = [os.path.join(data, level_file[annotation_level]),
                  os.path.join(data, f'images_{annotation_level}_{tv_split}.txt'), os.path.join(data, 'images')]
        missing = [p for p in needed if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f'FGVC-Aircraft: missing {", ".join(repr(p) for p in missing)} '
                                    f'(no download at run time; extract fgvc-aircraft-2013b.tar.gz into {root!r}).')
        super().__init__(root, split=tv_split, annotation_level=annotation_level, download=False, **kwargs)

    @property
    def targets(self) -> List[int]:
        return list(self._labels)


def create_qpm_dataset(
        name: str,
        root: Optional[str] = None,
        split: str = 'train',
        is_training: bool = False,
        **kwargs,
) -> Dataset:
    """Build dataset ``name`` (see the module table); ``kwargs`` go to the dataset class.

    ``is_training`` is forwarded to timm's ``create_dataset`` (iterable datasets shuffle with it);
    the map-style datasets here ignore it, augmentation comes from ``transform=``.
    """
    key = canonical_name(name)
    if key == 'concepts':
        if root:
            raise ValueError('the concepts dataset is generated; it takes no root (leave --data-dir unset).')
        return ConceptsDataset(split=split, **kwargs)
    if key == 'cub':
        return CUB200Dataset(_need_root(name, root), split=split, **kwargs)
    if key == 'cars':
        return StanfordCarsDataset(root, split=split, **kwargs)
    if key == 'aircraft':
        return FGVCAircraftDataset(root, split=split, **kwargs)
    timm_name = '' if key in ('imagenet', 'folder', 'image_folder', '') else name
    if '/' not in timm_name or timm_name.split('/', 1)[0].lower() not in ('hfds', 'hfids', 'tfds', 'wds'):
        _need_root(name or 'folder', root)
    try:
        return create_dataset(timm_name, root=root, split=split, is_training=is_training, **kwargs)
    except RuntimeError as e:  # timm's reader: "Found 0 images in subfolders of ..."
        raise ValueError(f'dataset {name or "folder"!r} at {root!r} (split {split!r}) holds no images it can read '
                         f'({e}); give a folder with one sub-folder of images per class.') from e


def create_qpm_split(
        name: str,
        root: Optional[str] = None,
        split: str = 'train',
        is_training: bool = False,
        transform_size: Optional[int] = None,
        data_config: Optional[Dict[str, Any]] = None,
        **kwargs,
) -> Dataset:
    """Split ``split`` of dataset ``name`` reading through the recipe's train or timm's eval transform
    (:func:`create_qpm_transform` for the timm ``data_config``, default the dataset's, with output side
    ``transform_size``; it follows the dataset's ``crop_to_bbox``, default True); ``kwargs`` go to the dataset
    class (``--dataset-args``, where the concepts dataset's own ``img_size`` is its rendering size). The one way
    train.py, validate.py and explain.py build their data.

    The concepts dataset is generated at the transform's side (its ``output_size``, unless given): each drawing is
    resized once instead of at every read, so a run at another ``--img-size`` reads its images in batches.
    """
    transform = create_qpm_transform(name, is_training=is_training, img_size=transform_size,
                                     crop_to_bbox=kwargs.get('crop_to_bbox', True), data_config=data_config)
    if canonical_name(name) == 'concepts' and 'output_size' not in kwargs:
        kwargs['output_size'] = _concepts_side(transform_size, data_config)
    return create_qpm_dataset(name, root, split=split, is_training=is_training, transform=transform, **kwargs)


def _concepts_side(transform_size: Optional[int], data_config: Optional[Dict[str, Any]]) -> Optional[int]:
    """The side a concepts transform reads its images at without resizing them: ``transform_size`` or the given data
    config's side, where its eval crop keeps the whole image (``crop_pct`` 1); None (the drawings' own side) where
    the caller asks for no side (the transform is set later, e.g. validate.py once the model is known)."""
    if transform_size is None and not data_config:
        return None
    cfg = {**qpm_data_config('concepts'), **(data_config or {})}
    if cfg['crop_pct'] != 1:
        return None
    return transform_size or cfg['input_size'][-1]


def with_transform(dataset: Dataset, transform) -> Dataset:
    """The same samples read through ``transform``: a shallow copy, so nothing is built or scanned again
    (e.g. the training split with the eval transform for the statistics pass). Every map-style dataset here
    (and timm's ``ImageDataset``, torchvision's) applies ``self.transform`` in ``__getitem__``."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


def get_class_names(dataset: Union[str, Dataset], root: Optional[str] = None, **kwargs) -> List[str]:
    """Readable class names in target order, of a dataset or of ``create_qpm_dataset(dataset, root, **kwargs)``.

    Uses ``dataset.classes`` where present, else the folder names of timm's reader
    (``reader.class_to_idx``); raises ``TypeError`` for datasets without class names.
    """
    if isinstance(dataset, str):
        dataset = create_qpm_dataset(dataset, root=root, **kwargs)
    classes = getattr(dataset, 'classes', None)
    if classes is not None:
        return [str(c) for c in classes]
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    if class_to_idx:
        return [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    raise TypeError(f'{type(dataset).__name__} exposes no class names (no .classes or reader.class_to_idx).')
