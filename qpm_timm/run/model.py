"""The model of a run: the dense model a training run starts from, or a trained model to evaluate or explain."""
import logging
import os
from typing import Any, Dict, Optional, Tuple

import timm
import torch
from torch import nn

from .. import hub
from ..models import VARIANT_ARGS, QPMModel, load_weights
from .cli import UsageError, unexpected_keywords
from .methods import method_rounds

__all__ = ['create_train_model', 'check_trainable', 'check_input_size', 'feature_map_size', 'smallest_input_size',
           'check_eval_args', 'create_eval_model', 'check_eval_model', 'qpm_sizes_from_state_dict',
           'checkpoint_classes', 'read_checkpoint']

NOT_QPM = 'is not a QPM (solve and fine-tune it with train.py first)'
MIN_MAP = 2  # the smallest feature map side a QPM is trained on (docs/METHOD.md, "Input size")
FAR_BELOW = 0.5  # a pretrained backbone fed less than this fraction of its pretrained input side gets a warning

_logger = logging.getLogger('train')


def _timm_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model``; an unknown name or backbone keyword is bad input, named with the flag to fix."""
    try:
        with unexpected_keywords(lambda e: f'--model {name} does not take these arguments ({e}); check '
                                           f'--model-kwargs.'):
            return timm.create_model(name, **kwargs)
    except RuntimeError as e:  # timm: unknown model, no pretrained weights, ...
        raise UsageError(f'cannot create --model {name}: {e}') from e


# --- training --------------------------------------------------------------------------------------------------
def create_train_model(args, num_classes: int, img_size: int) -> QPMModel:
    """The dense model of stage 1, with ``--pretrained`` backbone weights or the ``--initial-checkpoint``; a backbone
    built for one input size (a ViT) is built for the run's ``img_size`` (timm resamples pretrained position
    embeddings)."""
    kwargs = dict(num_classes=num_classes, n_features=args.n_features, n_per_class=args.n_per_class, head='dense',
                  **args.model_kwargs)
    for name in ('reduced_strides', 'adapter_depth', 'adapter_hidden', 'adapter_dim'):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.relu_head:
        kwargs['relu_after_norm'] = True  # CHiQPM's head (docs/METHOD.md, "CHiQPM: the ReLU head")
    if args.pretrained or args.pretrained_path:
        kwargs['pretrained_backbone'] = True
        if args.pretrained_path:
            kwargs['backbone_pretrained_cfg_overlay'] = dict(file=args.pretrained_path)
    if args.model == 'qpm':
        if not args.backbone:
            raise UsageError('--model qpm needs --backbone (a timm CNN such as resnet18 or resnet50.tv_in1k).')
        kwargs['backbone'] = args.backbone
    elif args.model not in VARIANT_ARGS:
        raise UsageError(f'--model {args.model} is not a QPM architecture; use one of {sorted(VARIANT_ARGS)} or '
                         f'"--model qpm --backbone {args.model}".')
    backbone = kwargs.get('backbone') or VARIANT_ARGS[args.model]['backbone']
    arch = backbone.split('.')[0]  # a bad tag or name is the model's to refuse, with its own message
    if timm.is_model(arch) and getattr(timm.models.get_pretrained_cfg(arch), 'fixed_input_size', False):
        kwargs['img_size'] = img_size
    model = _timm_model(args.model, **kwargs)
    if args.initial_checkpoint:
        load_weights(model, hub.read_weights(args.initial_checkpoint), source=args.initial_checkpoint)
    if args.freeze_backbone:
        model.freeze_backbone()
    check_trainable(model, args)
    if args.skip_dense and not (args.initial_checkpoint or model.adopted_classifier):
        why = (f'the pretrained classifier of {model.backbone_name} does not fit the {num_classes} classes'
               if kwargs.get('pretrained_backbone') else 'neither --initial-checkpoint nor --pretrained is given')
        raise UsageError(f'--skip-dense needs a trained dense model ({why}): give --initial-checkpoint FILE, or '
                         f'--pretrained weights whose classifier fits the classes (the ImageNet route), or train '
                         f'the dense stage.')
    return model


def check_trainable(model: QPMModel, args) -> None:
    """Refuse a stage that would run epochs with nothing to train (e.g. a frozen backbone without an adapter in
    the fine-tune, where the QPM head's assignment is fixed)."""
    frozen = ' (--freeze-backbone)' if model.backbone_frozen else ''
    dense = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tuned = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith('head.'))
    if args.epochs > 0 and not args.skip_dense and dense == 0:
        raise UsageError(f'the dense stage would train nothing: no parameter of the model requires a gradient'
                         f'{frozen}; use --skip-dense or unfreeze the backbone.')
    if sum(method_rounds(args)) > 0 and tuned == 0:
        raise UsageError(f'the fine-tune stage would train nothing: the QPM head is fixed and the backbone is '
                         f'frozen{frozen} with no adapter; add an adapter (--adapter-depth N) or set '
                         f'--finetune-epochs 0.')
    if args.feature_cache and not model.backbone_frozen:
        raise UsageError('--feature-cache needs --freeze-backbone: the maps of a backbone that trains change '
                         'every step, so they cannot be cached.')


def feature_map_size(model: QPMModel, size: Tuple[int, int]) -> Tuple[int, int]:
    """``H x W`` of the backbone's map on a ``size`` input: one probe in eval mode; ``(0, 0)`` when the input is
    smaller than a kernel or a patch (no map at all)."""
    p = next(model.parameters())
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval().forward_backbone(torch.zeros(1, model.in_chans, *size, device=p.device, dtype=p.dtype))
    except RuntimeError:  # "Kernel size can't be greater than actual input size", an empty patch grid
        return 0, 0
    finally:
        model.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])


def smallest_input_size(model: QPMModel) -> int:
    """The smallest square input whose maps are at least ``MIN_MAP x MIN_MAP``: a token backbone's ``MIN_MAP`` patches;
    for a CNN a bisection by probes from its reduction (its maps only grow with the input)."""
    reduction = int(model.feature_info[-1]['reduction'])
    if model.token_backbone:
        return MIN_MAP * reduction

    def fits(side: int) -> bool:
        return min(feature_map_size(model, (side, side))) >= MIN_MAP

    low, high = 1, MIN_MAP * reduction
    while not fits(high):
        low, high = high, 2 * high
    while high - low > 1:  # fits(high), not fits(low) (or low = 1)
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def check_input_size(model: QPMModel, size: Tuple[int, int], pretrained: bool) -> Tuple[int, int]:
    """Refuse an input size whose backbone maps are smaller than ``MIN_MAP x MIN_MAP`` (docs/METHOD.md, "Input size"),
    naming the smallest size that works; warn when a pretrained backbone gets less than half its pretrained input
    side. Returns the map size."""
    h, w = feature_map_size(model, size)
    if min(h, w) < MIN_MAP:
        smallest = smallest_input_size(model)
        given = f'--img-size {size[0]}' if size[0] == size[1] else f'the input size {size[0]} x {size[1]}'
        raise UsageError(f'{given} is too small for the {model.backbone_name} backbone: its feature maps would be '
                         f'{h} x {w}, fewer than {MIN_MAP} x {MIN_MAP} cells (no locality, '
                         f'no heatmaps, no Feature Diversity Loss). The smallest size that works is --img-size '
                         f'{smallest}.')
    native = model.backbone.pretrained_cfg.get('input_size', (0, 0, 0))[-1]
    if pretrained and min(size) < FAR_BELOW * native:
        _logger.warning(f'WARNING: --img-size {min(size)} is far below the {native} px the pretrained '
                        f'{model.backbone_name} weights were trained at (maps of {h} x {w}); objects appear at a '
                        f'fraction of the scale its features learned, which usually costs accuracy.')
    return h, w


# --- evaluation and explanations -------------------------------------------------------------------------------
def _is_file_model(name: str) -> bool:
    return name.startswith(('local-dir:', 'hf-hub:', 'hf_hub:'))


def _is_qpm_arch(name: str) -> bool:
    return name == 'qpm' or name in VARIANT_ARGS


def qpm_sizes_from_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """``n_features`` / ``n_per_class`` of a QPM checkpoint (its selection and binary assignment); {} if dense."""
    selection, weight = state_dict.get('head.selection'), state_dict.get('head.fc.weight')
    if selection is None:
        return {}
    sizes = dict(n_features=int(selection.numel()))
    if weight is not None and weight.dim() == 2 and weight.shape[0]:
        sizes['n_per_class'] = int(weight[0].sum().round())
    return sizes


def check_eval_args(args) -> None:
    """The flags of a trained model's evaluation (``validate.py``, ``explain.py``), refused before any work."""
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise UsageError(f'--checkpoint {args.checkpoint} does not exist.')
    if args.batch_size < 1:
        raise UsageError(f'-b/--batch-size must be >= 1, got {args.batch_size}.')


def checkpoint_classes(state_dict: Optional[Dict[str, torch.Tensor]]) -> Optional[int]:
    """The number of classes of a QPM checkpoint's head (None without one)."""
    weight = state_dict.get('head.fc.weight') if state_dict is not None else None
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def read_checkpoint(args) -> Optional[Dict[str, torch.Tensor]]:
    """The ``--checkpoint`` state dict, or None."""
    if not args.checkpoint:
        return None
    return hub.read_weights(args.checkpoint)


def create_eval_model(args, num_classes: int, state_dict: Optional[Dict[str, torch.Tensor]]) -> nn.Module:
    """The model of ``--model`` with ``--pretrained`` weights or the ``--checkpoint`` state dict loaded."""
    name = args.model
    if args.backbone and name != 'qpm':
        raise UsageError(f'--backbone applies to --model qpm only (got --model {name}).')
    kwargs: Dict[str, Any] = dict(args.model_kwargs)
    if _is_file_model(name):
        if args.num_classes:
            kwargs['num_classes'] = args.num_classes
        for key in ('n_features', 'n_per_class', 'reduced_strides'):
            if getattr(args, key) is not None:
                kwargs[key] = getattr(args, key)
    elif _is_qpm_arch(name):
        if name == 'qpm':
            if not args.backbone:
                raise UsageError('--model qpm needs --backbone (the timm CNN it was trained on, e.g. resnet18).')
            kwargs['backbone'] = args.backbone
        sizes = qpm_sizes_from_state_dict(state_dict) if state_dict is not None else {}
        kwargs['n_features'] = args.n_features or sizes.get('n_features')
        kwargs['n_per_class'] = args.n_per_class or sizes.get('n_per_class')
        kwargs['reduced_strides'] = args.reduced_strides
        if num_classes:  # else the variant's own (sizes are checked by the model: check_qpm_sizes, ValueError)
            kwargs['num_classes'] = num_classes
    else:
        extra = [f'--{k.replace("_", "-")}' for k in ('n_features', 'n_per_class', 'reduced_strides')
                 if getattr(args, k) is not None]
        if extra:
            raise UsageError(f'{", ".join(extra)} apply to QPM models only, not to --model {name}.')
        kwargs['num_classes'] = num_classes
    model = _timm_model(name, pretrained=args.pretrained, **kwargs)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as e:  # plain timm models; a QPMModel raises ValueError itself
            raise UsageError(f'--checkpoint {args.checkpoint} does not fit --model {name}: {e}') from e
    return model


def check_eval_model(model: nn.Module, args, num_classes: int, need_qpm: bool) -> None:
    """The model's classes match the dataset's; a QPM where the interpretability metrics need one."""
    model_classes = getattr(model, 'num_classes', None)
    if model_classes is not None and model_classes != num_classes:
        raise UsageError(f'--model {args.model} has {model_classes} classes but the {args.dataset} dataset has '
                         f'{num_classes}; evaluate it on its own dataset (or pass matching --num-classes / '
                         f'--dataset-args).')
    if need_qpm and not getattr(model, 'is_qpm', False):
        kind = 'a dense QPMModel' if hasattr(model, 'is_qpm') else f'a plain {type(model).__name__}'
        raise UsageError(f'--model {args.model} ({kind}) {NOT_QPM}; pass --no-interpretability to get its '
                         f'top-1/top-5 only.')
