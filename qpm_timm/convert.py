""" Convert a checkpoint of the authors' code (QPM, CHiQPM) into the Hub format of :mod:`qpm_timm.hub`.

    python -m qpm_timm.convert --source authors-qpm --checkpoint qpm_50_5_FinetunedModel.pth \\
        --variant qpm_resnet50_cub --output qpm_resnet50_cub

The file is read with ``torch.load(..., weights_only=True)`` and mapped by
:func:`qpm_timm.models.authors.authors_to_qpm` (the same mapping ``timm.create_model(variant, pretrained=True,
pretrained_cfg_overlay=dict(file=...))`` applies); the export records the authors' evaluation transform in
``config.json``. Push the folder with ``python -m qpm_timm.hub push <folder> --repo-id ORG/NAME``.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import timm
import torch

from .data.transforms import qpm_data_config
from .hub import read_weights, save_pretrained
from .models.authors import AUTHORS_EVAL_DATASETS, AUTHORS_SOURCES, authors_to_qpm, is_authors_state_dict
from .models.qpm import QPMModel
from .models.variants import VARIANT_ARGS, get_variant, variant_dataset

__all__ = ['authors_data_config', 'convert_authors_checkpoint', 'load_authors_checkpoint']

def _variant_dataset(variant: str) -> str:
    dataset = variant_dataset(variant)  # refuses an unknown variant
    if dataset not in AUTHORS_EVAL_DATASETS:
        raise ValueError(f'{variant}: the authors released no {dataset} checkpoint and their {dataset} evaluation '
                         f'transform is not one of the known ones ({", ".join(AUTHORS_EVAL_DATASETS)}); not converted.')
    return dataset


def authors_data_config(variant: str, crop_to_bbox: bool = True, img_size: int = 224) -> Dict:
    """The authors' evaluation transform (their ``get_data.py``) as a timm data config, which is the recipe's
    (:func:`~qpm_timm.data.transforms.qpm_data_config`): CUB box crops resized to a square (``squash``), everything
    else on the short side and center-cropped; bilinear; the dataset's mean/std."""
    return qpm_data_config(_variant_dataset(variant), img_size, crop_to_bbox)


def _head_sizes(state_dict: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """``num_classes``, ``n_features``, ``n_per_class`` of the file's head (first class's row), when it has one."""
    weight = state_dict.get('linear.layer.weight')
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.numel():
        return {}
    return dict(num_classes=weight.shape[0], n_features=weight.shape[1], n_per_class=int(weight[0].ne(0).sum()))


def load_authors_checkpoint(checkpoint: str, variant: str, source: str = 'authors-qpm') -> QPMModel:
    """``variant`` holding the authors' checkpoint ``checkpoint`` (its class count and head sizes)."""
    if source not in AUTHORS_SOURCES:
        raise ValueError(f'unknown --source {source!r}; one of {", ".join(AUTHORS_SOURCES)}.')
    get_variant(variant)  # refuses an unknown variant
    state_dict = read_weights(checkpoint)
    if not is_authors_state_dict(state_dict):
        raise ValueError(f'{checkpoint} has qpm-timm keys (backbone.*, head.*): it is not an authors\' checkpoint; '
                         f'load it with timm.create_model({variant!r}, checkpoint_path=...) or export it with '
                         f'qpm_timm.hub.save_pretrained.')
    model = timm.create_model(variant, relu_after_norm=AUTHORS_SOURCES[source], **_head_sizes(state_dict))
    model.load_state_dict(authors_to_qpm(state_dict, model, str(checkpoint)))
    return model.eval()


def _read_label_names(path: str) -> List[str]:
    """One class name per line; CUB's ``classes.txt`` (``<id> <name>``) is read too."""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    numbered = all(line.split(' ', 1)[0] == str(i + 1) and ' ' in line for i, line in enumerate(lines))
    return [line.split(' ', 1)[1] for line in lines] if numbered else lines


_SOURCE_URLS = {'authors-qpm': 'https://github.com/ThomasNorr/QPM',
                'authors-chiqpm': 'https://github.com/ThomasNorr/CHiQPM'}


def convert_authors_checkpoint(
        checkpoint: str,
        variant: str,
        output: str,
        source: str = 'authors-qpm',
        crop_to_bbox: bool = True,
        img_size: int = 224,
        label_names: Optional[Sequence[str]] = None,
) -> Path:
    """Write the Hub format of the authors' ``checkpoint`` into ``output`` (an earlier export there survives a
    failure) and return the folder."""
    data_config = authors_data_config(variant, crop_to_bbox, img_size)
    model = load_authors_checkpoint(checkpoint, variant, source)
    model.pretrained_cfg.update(  # provenance: their weights, under no licence their repositories state
        license='other', origin_url=_SOURCE_URLS[source],
        notes=f"converted from the authors' checkpoint {Path(checkpoint).name} ({source}); the authors' "
              f"repositories state no licence for their weights")
    return save_pretrained(model, output, label_names=label_names, data_config=data_config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog='Exit code 2 on bad input (unknown variant, a file that is not theirs).')
    parser.add_argument('--source', required=True, choices=sorted(AUTHORS_SOURCES),
                        help='authors-qpm (ThomasNorr/QPM) or authors-chiqpm (ThomasNorr/CHiQPM: ReLU after the '
                             'normalisation)')
    parser.add_argument('--checkpoint', required=True, metavar='FILE', help="the authors' .pth state dict")
    parser.add_argument('--variant', required=True, choices=sorted(VARIANT_ARGS), help='architecture it fits')
    parser.add_argument('--output', required=True, metavar='DIR', help='export folder (Hub format)')
    parser.add_argument('--no-crop-to-bbox', dest='crop_to_bbox', action='store_false',
                        help="CUB without the ground-truth box crop (the authors' QPM-NoCrop): resize + center crop")
    parser.add_argument('--img-size', type=int, default=224, help='evaluation size (the authors\' default 224)')
    parser.add_argument('--label-names', metavar='FILE', default=None,
                        help="class names, one per line (CUB's classes.txt works), in the checkpoint's class order")
    args = parser.parse_args(argv)
    try:
        labels = _read_label_names(args.label_names) if args.label_names else None
        folder = convert_authors_checkpoint(args.checkpoint, args.variant, args.output, args.source,
                                            args.crop_to_bbox, args.img_size, labels)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'converted {args.checkpoint} ({args.source}) to {folder}: '
          f'timm.create_model("local-dir:{folder}", pretrained=True)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
