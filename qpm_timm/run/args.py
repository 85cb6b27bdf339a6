"""The flags the three scripts share (data, model, weights, device and precision) and ``-c config.yaml``.

Each ``add_*`` function adds one argument group to a script's parser and returns it, so a script adds its own
flags to the same group. Every flag means the same in ``train.py``, ``validate.py`` and ``explain.py``.
"""
import argparse
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import yaml
from timm.utils import ParseKwargs

from ..precision import AUTO, Precision, resolve_precision
from .cli import UsageError

__all__ = ['yaml_mapping', 'yaml_pairs', 'finetune_rounds', 'add_data_args', 'add_model_args', 'add_weights_args',
           'add_device_args',
           'parse_args_with_config', 'resolve_args_precision']


class KeyValues(ParseKwargs):
    """timm's ``key=value`` flag parser, with a usage error naming the flag for a value without ``=``."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [value for value in values if value and '=' not in value]
        if bad:
            parser.error(f'{option_string} takes key=value pairs (e.g. {option_string} drop_rate=0.4 '
                         f'"channels=[16, 32]"), not {bad}')
        super().__call__(parser, namespace, values, option_string)


def yaml_mapping(text: str) -> Dict[str, Any]:
    """``--dataset-args``: a YAML mapping (argparse turns the error into a usage message and exit code 2)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f'not valid YAML ({e})') from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'must be a YAML mapping such as "{{images_per_class: 10}}", got {text!r}')
    return value


def yaml_pairs(text: str) -> list:
    """``--pairs``: a YAML list of class index pairs such as "[[0, 1], [2, 5]]" (CHiQPM's forced pairs)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f'not valid YAML ({e})') from e
    if not (isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and
                                            all(isinstance(c, int) for c in p) for p in value)):
        raise argparse.ArgumentTypeError(f'must be a YAML list of class index pairs such as "[[0, 1], [2, 5]]", '
                                         f'got {text!r}')
    return value


def finetune_rounds(args) -> list:
    """Epochs of every fine-tune round: ``--finetune-rounds`` or one round of ``--finetune-epochs``."""
    return list(args.finetune_rounds) if args.finetune_rounds else [args.finetune_epochs]


def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Dataset and evaluation transform (the model's data config, as timm resolves it, flags overriding)."""
    group = parser.add_argument_group('Dataset parameters')
    group.add_argument('--data-dir', metavar='DIR', default=None, help='path to dataset (root dir); none for concepts')
    group.add_argument('--dataset', metavar='NAME', default=None,
                       help='concepts (generated; the default without --data-dir) | cub | cars | aircraft | imagenet | '
                            'folder (the default with --data-dir: a class-per-folder tree) | any timm dataset')
    group.add_argument('--dataset-args', type=yaml_mapping, default=None, metavar='YAML',
                       help='extra dataset kwargs, e.g. "{images_per_class: 100}" or "{crop_to_bbox: false}"')
    group.add_argument('--img-size', type=int, default=None, metavar='N',
                       help='input image size (default: the model\'s or the dataset\'s data config)')
    group.add_argument('--crop-pct', type=float, default=None, metavar='PCT', help='eval crop (default: the config\'s)')
    group.add_argument('--crop-mode', default=None, metavar='MODE', help='center | squash | border')
    group.add_argument('--interpolation', default=None, metavar='NAME', help='eval resize interpolation')
    group.add_argument('--mean', type=float, nargs=3, default=None, metavar='MEAN', help='default: the config\'s')
    group.add_argument('--std', type=float, nargs=3, default=None, metavar='STD', help='default: the config\'s')
    group.add_argument('--workers', '-j', type=int, default=4, metavar='N', help='data loading processes')
    return group


def add_model_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Which model: a QPM variant, ``qpm`` with a timm backbone, ``local-dir:``/``hf-hub:`` or any timm model."""
    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', '-m', default='qpm', metavar='NAME',
                       help='a QPM variant (qpm_resnet50_cub, ...), "qpm" with --backbone, "local-dir:PATH", '
                            '"hf-hub:org/repo" or (validate.py) any timm model')
    group.add_argument('--backbone', default=None, metavar='NAME',
                       help='timm backbone for --model qpm: a CNN (resnet18) or a ViT (vit_small_patch14_reg4_dinov2)')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=KeyValues,
                       help='backbone kwargs, e.g. stem_width=16 (YAML: model_kwargs: {stem_width: 16})')
    group.add_argument('--reduced-strides', action=argparse.BooleanOptionalAction, default=None,
                       help='ResNet layer3/layer4 with stride 1 (the recipe for fine-grained data)')
    group.add_argument('--num-classes', type=int, default=None, metavar='N', help='default: from the dataset')
    return group


def add_weights_args(group: argparse._ArgumentGroup) -> None:
    """The weights of a trained model to evaluate or explain (``validate.py``, ``explain.py``)."""
    group.add_argument('--n-features', type=int, default=None, metavar='N',
                       help='--model qpm / QPM variants: n_f* (default: from the checkpoint, else 50)')
    group.add_argument('--n-per-class', type=int, default=None, metavar='N',
                       help='--model qpm / QPM variants: n_wc (default: from the checkpoint, else 5)')
    group.add_argument('--pretrained', action='store_true', default=False,
                       help='load the model\'s own weights (timm pretrained; the weights of local-dir:/hf-hub:)')
    group.add_argument('--checkpoint', default='', metavar='PATH',
                       help='load these weights (.safetensors or timm checkpoint); the head state follows them')


def add_device_args(parser: argparse.ArgumentParser, batch_size: int) -> argparse._ArgumentGroup:
    """Device, precision (one policy: :mod:`qpm_timm.precision`), batch size and progress bars."""
    group = parser.add_argument_group('Device and precision')
    group.add_argument('-b', '--batch-size', type=int, default=batch_size, metavar='N')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--amp', action=argparse.BooleanOptionalAction, default=AUTO,
                       help='bfloat16 autocast in every pass (training, statistics, cache, validation, report); '
                            'default auto: bfloat16 where the device runs it natively, float32 elsewhere '
                            '(qpm_timm/precision.py); --no-amp: float32')
    group.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=False,
                       help='channels-last images and weights (faster convolutions with oneDNN and cuDNN)')
    group.add_argument('--no-progress', action='store_true', default=False, help='no progress bars')
    return group


def parse_args_with_config(parser: argparse.ArgumentParser,
                           argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, str]:
    """timm's ``-c/--config FILE``: a YAML mapping of flag defaults (unknown keys refused), then the command line;
    returns the arguments and their YAML text (``args.yaml``)."""
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE')
    args_config, remaining = config_parser.parse_known_args(argv)
    if args_config.config:
        if not os.path.isfile(args_config.config):
            raise UsageError(f'config file {args_config.config} does not exist.')
        with open(args_config.config) as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise UsageError(f'config file {args_config.config} is not valid YAML ({e}).') from e
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known) if isinstance(values, dict) else None
        if unknown is None or unknown:
            raise UsageError(f'config file {args_config.config}: ' + (
                f'unknown keys {unknown} (keys are flag names with "_", e.g. batch_size).' if unknown else
                'must be a YAML mapping of flag names to values.'))
        parser.set_defaults(**values)
    args = parser.parse_args(remaining)
    return args, yaml.safe_dump(args.__dict__, default_flow_style=False)


def resolve_args_precision(args, device, args_text: Optional[str] = None,
                           resumed: bool = False) -> Tuple[Precision, Optional[str]]:
    """``--amp auto|on|off`` resolved once for the run (:func:`qpm_timm.precision.resolve_precision`): sets
    ``args.amp`` to the resolved bool, prints the decision once (rank 0) and returns it with ``args_text`` (the
    run's ``args.yaml``) recording the resolved value, so that a run ``resumed`` from it keeps it."""
    try:
        precision = resolve_precision(args.amp, device, kept=resumed)  # a value not auto/true/false: ValueError
    except ValueError as e:
        raise UsageError(f'--amp / config key amp: {e} (auto: bfloat16 where the device runs it natively).') from e
    args.amp = precision.amp
    if getattr(args, 'rank', 0) == 0:
        print(precision.describe(), flush=True)
    if args_text is not None:
        saved = yaml.safe_load(args_text)
        saved['amp'] = precision.amp
        args_text = yaml.safe_dump(saved, default_flow_style=False)
    return precision, args_text
