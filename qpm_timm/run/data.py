"""The data of a run: which dataset, its evaluation data config, and its splits (docs/METHOD.md, "Pipeline")."""
from typing import Any, Dict, List, Optional, Tuple

from timm.data import resolve_data_config
from torch.utils.data import Dataset

from ..data import create_qpm_split, get_class_names, qpm_data_config, with_transform
from .cli import UsageError, unexpected_keywords

__all__ = ['resolve_dataset', 'eval_data_config', 'build_train_data', 'build_eval_dataset', 'class_names_of']


def resolve_dataset(args) -> None:
    """timm's convention: ``--data-dir`` alone is a class-per-folder tree; nothing at all is the concepts dataset.
    ``--dataset-args`` (flag or config file) must be a mapping of the dataset's keyword arguments."""
    if args.dataset is None:
        args.dataset = 'folder' if args.data_dir else 'concepts'
    if args.dataset_args is not None and not isinstance(args.dataset_args, dict):
        raise UsageError(f'--dataset-args must be a YAML mapping such as "{{images_per_class: 10}}", got '
                         f'{args.dataset_args!r}.')


def _crop_to_bbox(args) -> bool:
    return (args.dataset_args or {}).get('crop_to_bbox', True)


def eval_data_config(args, pretrained_cfg: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The timm data config of the evaluation transform, resolved as timm's validate.py does
    (``resolve_data_config(args, pretrained_cfg=...)``): ``pretrained_cfg`` (an export records what its training run
    validated with) or else the dataset's recipe, the flags ``--img-size --crop-pct --crop-mode --interpolation
    --mean --std`` overriding. The export of a training run records exactly this config."""
    source = pretrained_cfg or qpm_data_config(args.dataset, args.img_size, crop_to_bbox=_crop_to_bbox(args))
    return resolve_data_config(vars(args), pretrained_cfg=source)


def class_names_of(dataset: Dataset) -> List[str]:
    """The dataset's class names in target order; a dataset without any is bad input."""
    try:
        return get_class_names(dataset)
    except TypeError as e:
        raise UsageError(f'{e} Give a dataset with class names (a class-per-folder tree names its classes).') from e


def _split(args, split: str, **kwargs) -> Dataset:
    """``create_qpm_split`` with ``--dataset-args``; an argument the dataset does not take is bad input."""
    with unexpected_keywords(lambda e: f'--dataset-args {args.dataset_args} do not fit the {args.dataset} dataset '
                                       f'({e}).'):
        return create_qpm_split(args.dataset, args.data_dir, split, **kwargs, **(args.dataset_args or {}))


def build_train_data(args, data_config: Dict[str, Any]) -> Tuple[Dataset, Dataset, Dataset, List[str]]:
    """Train (augmented), train-eval (the same images with the eval transform, for the statistics) and val
    datasets, and the class names."""
    train = _split(args, args.train_split, is_training=True, data_config=data_config)
    val = _split(args, args.val_split, is_training=False, data_config=data_config)
    return train, with_transform(train, val.transform), val, class_names_of(train)


def build_eval_dataset(args, split: str) -> Dataset:
    """The images of ``split``; the eval transform is set once the model's data config is known."""
    return _split(args, split)
