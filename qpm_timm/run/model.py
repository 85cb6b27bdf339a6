"""The model of a run: the dense model a training run starts from, or a trained model to evaluate or explain."""
import os
from typing import Any, Dict, Optional

import timm
import torch
from torch import nn

from .. import hub
from ..models import QPMModel, VARIANT_ARGS, load_weights
from .cli import UsageError, unexpected_keywords

__all__ = ['create_train_model', 'check_trainable', 'check_eval_args', 'create_eval_model', 'check_eval_model',
           'qpm_sizes_from_state_dict', 'read_checkpoint']

NOT_QPM = 'is not a QPM (solve and fine-tune it with train.py first)'


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
    if args.finetune_epochs > 0 and tuned == 0:
        raise UsageError(f'the fine-tune stage would train nothing: the QPM head is fixed and the backbone is '
                         f'frozen{frozen} with no adapter; add an adapter (--adapter-depth N) or set '
                         f'--finetune-epochs 0.')
    if args.feature_cache and not model.backbone_frozen:
        raise UsageError('--feature-cache needs --freeze-backbone: the maps of a backbone that trains change '
                         'every step, so they cannot be cached.')


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
        kwargs['num_classes'] = num_classes  # sizes are checked by the model (check_qpm_sizes: ValueError)
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
