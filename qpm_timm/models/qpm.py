""" QPM: Discrete Optimization for Globally Interpretable Image Classification (ICLR 2025)

Paper: https://arxiv.org/abs/2502.20130 (Norrenbrock, Kaiser, Biswas, Manuvinakurike, Rosenhahn).

A :class:`QPMModel` wraps a timm backbone (:mod:`qpm_timm.models.backbone`) that gives an ``N x C x H x W`` feature
map -- a CNN's ``forward_features``, or a Vision Transformer's last-layer patch tokens as a map (timm's
``forward_intermediates``, prefix and register tokens dropped) -- optionally followed by a token-wise MLP adapter
(:mod:`qpm_timm.models.adapter`, DINO-QPM), and carries one of two heads (:mod:`qpm_timm.models.head`): the
dense head of stage 1, or the QPM head whose binary class x feature assignment was found by :mod:`qpm_timm.solver`.

Loading rules (one place, :meth:`QPMModel.load_state_dict`, used by every timm loading path):

* the head state follows the checkpoint: a QPM checkpoint turns a dense model into a QPM and back;
* a checkpoint whose number of classes differs from the model's, loaded non-strictly (what timm
  does for ``pretrained=True, num_classes=N``), keeps the backbone and gives the model a fresh dense
  ``Linear(num_features, N)`` head: a new label set needs a new statistics pass and solve
  (``train.py --initial-checkpoint``). ``num_classes=0`` keeps the selected, normalised features.
"""
import logging
import re
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .adapter import TokenMLPAdapter, check_adapter_args
from .authors import filter_authors_weights
from .backbone import check_backbone, create_backbone, is_token_backbone, last_block_map, reduce_resnet_strides
from .head import (
    DENSE_DROP_RATE,
    QPM_DROP_RATE,
    DenseHead,
    QPMHead,
    check_assignment,
    check_qpm_sizes,
    check_selection,
    placeholder_assignment,
)
from .load_errors import explained_load_errors
from .sparse_head import SPARSE_HEADS, SparseHead, check_sparse_layer
from .variants import VARIANTS, Variant, qpm_cfg

__all__ = ['QPMModel', 'QPMOutput', 'create_qpm', 'default_cfgs', 'HEAD_KINDS']

_logger = logging.getLogger(__name__)

_POOL_TYPES = ('avg', 'max', 'avgmax', '')
LOAD_TIME_ARGS = ('pretrained_backbone', 'backbone_pretrained_cfg_overlay')  # not architecture: never exported


def _check_pool(global_pool: Any) -> None:
    if global_pool not in _POOL_TYPES:
        raise ValueError(f'global_pool must be one of {_POOL_TYPES}, got {global_pool!r}.')


HEAD_KINDS = ('dense', 'qpm', *SPARSE_HEADS)  # QPMModel's head argument, config.json's model_args.head


def _check_sparse_sizes(num_classes: int, n_features: int, n_per_class: int,
                        num_features: Optional[int] = None) -> None:
    """A sparse head reads ``1 <= k <= num_features`` channels; the QPM's binomial condition does not apply."""
    if n_features < 1 or n_per_class < 1:
        raise ValueError(f'n_features ({n_features}) and n_per_class ({n_per_class}) must be >= 1.')
    if num_features is not None and n_features > num_features:
        raise ValueError(f'n_features={n_features} > the backbone\'s {num_features} feature channels; '
                         f'keep at most {num_features}.')


class QPMOutput(NamedTuple):
    """Everything one forward pass hands to the loss, the statistics and the explanations."""
    logits: torch.Tensor  # (N, C)
    feature_maps: torch.Tensor  # (N, F', H, W): all channels (dense head) or the selected ones (QPM head)
    pooled: torch.Tensor  # (N, F'): pooled feature_maps, before normalisation and dropout


def _prefix_matcher(matcher: Any, prefix: str) -> Any:
    """Re-anchor a backbone's ``group_matcher`` regexes under ``prefix``."""
    if isinstance(matcher, str):
        return r'^' + re.escape(prefix) + r'(?:' + re.sub(r'(^|\||\()\^', r'\1', matcher) + r')'
    return [(_prefix_matcher(m, prefix), idx) for m, idx in matcher]


class QPMModel(nn.Module):
    """A timm backbone with a dense or a QPM head (module docstring)."""
    # Python-side head state only
    __jit_unused_properties__ = ['is_qpm', 'head_kind', 'head_hidden_size', 'class_weights']

    def __init__(
            self,
            backbone: str = 'resnet50',
            num_classes: int = 1000,
            n_features: int = 50,
            n_per_class: int = 5,
            head: str = 'qpm',
            reduced_strides: bool = False,
            global_pool: str = 'avg',
            drop_rate: Optional[float] = None,
            in_chans: int = 3,
            relu_after_norm: bool = False,
            adapter_depth: int = 0,
            adapter_hidden: int = 2048,
            adapter_dim: int = 512,
            pretrained_backbone: bool = False,
            backbone_pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
            **backbone_kwargs,
    ):
        """
        Args:
            backbone: name of a timm CNN whose ``forward_features`` returns ``N x C x H x W``, or of a timm model
                with ``forward_intermediates`` (Vision Transformers: DeiT, EVA, DINOv2, ...; its last block's
                normalised patch tokens become the map), optionally with its pretrained tag
                (``'resnet50.tv_in1k'``): the tag names the weights ``pretrained_backbone`` loads.
            num_classes: number of classes (0: no classifier, the model returns pre-logits).
            n_features: ``n_f*``, the number of kept features.
            n_per_class: ``n_wc``, features per class.
            head: ``'dense'`` (stage 1), ``'qpm'`` (an unsolved QPM head holds a valid placeholder) or a baseline's
                sparse head, ``'sldd'`` | ``'qsenn'`` | ``'glm'`` (:mod:`qpm_timm.models.sparse_head`; a placeholder
                of zero weights until :meth:`set_sparse_head`); ``n_features`` is then its number of channels.
            reduced_strides: ResNet layer3/layer4 with stride 1 (the recipe for fine-grained data).
            global_pool: pooling of the head ('avg' as in the method).
            drop_rate: feature dropout; None: 0.2 for the dense head, 0.1 for the QPM head.
            relu_after_norm: the QPM head applies a ReLU to the normalised features (CHiQPM's head).
            adapter_depth: layers of the token-wise MLP adapter between backbone and head (0: none; DINO-QPM: 4).
            adapter_hidden: width of its hidden layers (DINO-QPM: 2048).
            adapter_dim: its output channels, the features the head, the FDL and the statistics see (DINO-QPM: 512).
            pretrained_backbone: start the backbone from its timm pretrained weights (the initialisation of the
                dense stage, docs/METHOD.md "Recipe"), loaded by timm itself: Hub, cache, ``HF_HUB_OFFLINE``.
                When the pretrained classifier is a plain linear layer over the pooled features with
                ``num_classes`` outputs (a CNN's, with no adapter), it becomes the dense head (the ImageNet
                route: no dense training).
                Not recorded in exports: ``pretrained=True`` loads the whole QPM's weights instead.
            backbone_pretrained_cfg_overlay: timm's ``pretrained_cfg_overlay`` for the backbone, e.g.
                ``dict(file='resnet50.safetensors')`` for a local file of the backbone's weights.
            **backbone_kwargs: passed to ``timm.create_model(backbone, ...)``; unknown ones raise TypeError.
        """
        super().__init__()
        check_backbone(backbone)
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {head!r}.")
        _check_pool(global_pool)
        sizes = check_qpm_sizes if head in ('dense', 'qpm') else _check_sparse_sizes
        sizes(num_classes, n_features, n_per_class)  # before any weights are fetched
        check_adapter_args(adapter_depth, adapter_hidden, adapter_dim)
        self.backbone, classifier = create_backbone(
            backbone, pretrained_backbone, backbone_pretrained_cfg_overlay, in_chans=in_chans, device=device,
            dtype=dtype, **backbone_kwargs)
        if isinstance(getattr(self.backbone, 'head', None), nn.Module):
            self.backbone.head = nn.Identity()  # the backbone's own head (e.g. ConvNeXt's norm) is never used
        if reduced_strides:
            reduce_resnet_strides(self.backbone)
        self.backbone_name = backbone
        self.backbone_features = self.backbone.num_features  # channels of forward_backbone's map
        self.token_backbone = is_token_backbone(self.backbone, in_chans)
        self.num_prefix_tokens = int(getattr(self.backbone, 'num_prefix_tokens', 0))
        patch = getattr(getattr(self.backbone, 'patch_embed', None), 'patch_size', None) or (1, 1)
        self.patch_size: Tuple[int, int] = (int(patch[0]), int(patch[1]))
        self.adapter = nn.Identity() if adapter_depth == 0 else TokenMLPAdapter(
            self.backbone_features, adapter_depth, adapter_hidden, adapter_dim, device=device, dtype=dtype)
        self.adapter_depth, self.adapter_hidden, self.adapter_dim = adapter_depth, adapter_hidden, adapter_dim
        self.num_features = adapter_dim if adapter_depth else self.backbone_features
        sizes(num_classes, n_features, n_per_class, self.num_features)
        self.backbone_frozen = False
        self.input_is_backbone_maps = False  # set by reading_backbone_maps()
        self.in_chans = in_chans
        self.n_features = n_features
        self.n_per_class = n_per_class
        self.drop_rate = drop_rate
        self.relu_after_norm = relu_after_norm
        self.feature_info = [dict(i, module='backbone.' + i['module']) for i in self.backbone.feature_info]
        self.num_classes = num_classes
        self.head: Union[DenseHead, QPMHead, SparseHead]
        self.adopted_classifier = False  # True when the dense head holds the pretrained backbone's classifier
        if head == 'dense':
            self._set_dense_head(num_classes, global_pool)
            if classifier is not None and not self.token_backbone and not adapter_depth:
                # only a CNN's classifier reads the pooled map the dense head pools (a ViT's reads its class token)
                self._adopt_classifier(*classifier, source=f'{backbone} pretrained')
        elif head == 'qpm':
            placeholder = placeholder_assignment(num_classes, n_features, n_per_class) if num_classes else None
            self.head = self._qpm_head(
                torch.arange(n_features), placeholder, torch.zeros(n_features), torch.ones(n_features), global_pool)
        else:
            zeros = (torch.zeros(num_classes, n_features), torch.zeros(num_classes)) if num_classes else (None, None)
            self.head = self._sparse_head(head, torch.arange(n_features), *zeros, torch.zeros(n_features),
                                          torch.ones(n_features), global_pool)

    # --- head state -------------------------------------------------------------------------------------------
    @property
    def is_qpm(self) -> bool:
        """True once a compact head is set: the binary QPM head or a baseline's sparse head (:attr:`head_kind`
        says which; only ``'qpm'`` is binary)."""
        return isinstance(self.head, (QPMHead, SparseHead))

    @property
    def head_kind(self) -> str:
        """``'dense'``, ``'qpm'`` or the sparse head's kind (``'sldd'``, ``'qsenn'``, ``'glm'``): config.json's
        ``model_args.head``."""
        if isinstance(self.head, SparseHead):
            return self.head.kind
        return 'qpm' if isinstance(self.head, QPMHead) else 'dense'

    @property
    def head_hidden_size(self) -> int:
        """Width of ``forward_head(pre_logits=True)``: all channels (dense) or ``n_f*`` (QPM)."""
        return self.n_features if self.is_qpm else self.num_features

    @property
    def class_weights(self) -> torch.Tensor:
        """``C x F'`` class weights: the dense linear weight or the binary assignment ``W``."""
        if self.num_classes == 0:
            raise ValueError('this model has no classifier (num_classes=0), so no class weights.')
        return self.head.class_weights

    def _device_dtype(self) -> Dict[str, Any]:
        p = next(self.backbone.parameters())
        return dict(device=p.device, dtype=p.dtype)

    def _set_dense_head(self, num_classes: int, global_pool: str) -> None:
        drop = DENSE_DROP_RATE if self.drop_rate is None else self.drop_rate
        self.head = DenseHead(self.num_features, num_classes, global_pool, drop, **self._device_dtype())
        self.head.train(self.training)
        self.num_classes = num_classes

    def _adopt_classifier(self, weight: torch.Tensor, bias: Optional[torch.Tensor], source: str) -> bool:
        """Copy a trained ``Linear(num_features, C)`` into the dense head when ``C`` is this model's class count;
        otherwise keep the fresh head and say why. Returns whether it was adopted."""
        if self.is_qpm or tuple(weight.shape) != (self.num_classes, self.num_features):
            _logger.info(f'{source}: its classifier ({tuple(weight.shape)[0]} classes) does not fit this '
                         f'{self.num_classes}-class dense head; the head starts freshly initialised.')
            return False
        with torch.no_grad():
            self.head.fc.weight.copy_(weight)
            if bias is None:
                self.head.fc.bias.zero_()
            else:
                self.head.fc.bias.copy_(bias)
        self.adopted_classifier = True
        return True

    def _qpm_head(self, selection, assignment, mean, std, global_pool: str) -> QPMHead:
        dd = self._device_dtype()
        drop = QPM_DROP_RATE if self.drop_rate is None else self.drop_rate
        head = QPMHead(
            selection.to(dd['device']),
            None if assignment is None else assignment.to(**dd),
            mean.to(**dd), std.to(**dd), global_pool, drop, self.relu_after_norm)
        return head.train(self.training)

    def _sparse_head(self, kind, selection, weight, bias, mean, std, global_pool: str) -> SparseHead:
        dd = self._device_dtype()
        drop = QPM_DROP_RATE if self.drop_rate is None else self.drop_rate
        head = SparseHead(kind, selection.to(dd['device']), None if weight is None else weight.to(**dd),
                          None if bias is None else bias.to(**dd), mean.to(**dd), std.to(**dd), global_pool, drop)
        return head.train(self.training)

    def set_sparse_head(
            self,
            kind: str,
            selection: torch.Tensor,
            weight: Optional[torch.Tensor],
            bias: Optional[torch.Tensor],
            mean: torch.Tensor,
            std: torch.Tensor,
    ) -> None:
        """Switch to a baseline's sparse head (docs/METHOD.md, "Baselines"); ``n_features`` becomes its number of
        channels (``n_per_class`` stays the target the sparsification aimed at).

        Args:
            kind: ``'sldd'``, ``'qsenn'`` or ``'glm'`` (:data:`~qpm_timm.models.sparse_head.SPARSE_HEADS`).
            selection: ``(k,)`` distinct channel indices the layer reads.
            weight, bias: ``(C, k)`` real-valued sparse weights and ``(C,)`` bias; None only without classifier.
            mean, std: ``(k,)`` (or ``(num_features,)``, indexed with ``selection``) normalisation of the features.
        """
        selection = torch.as_tensor(selection)
        _check_sparse_sizes(self.num_classes, int(selection.numel()), self.n_per_class, self.num_features)
        selection = check_selection(selection, int(selection.numel()), self.num_features)
        self.n_features = int(selection.numel())
        if weight is None or bias is None:
            if self.num_classes:
                raise ValueError(f'weight and bias are required for a model with {self.num_classes} classes.')
        else:
            weight, bias = torch.as_tensor(weight).detach().float().cpu(), torch.as_tensor(bias).detach().float().cpu()
            check_sparse_layer(weight, bias, self.num_classes, self.n_features)
        mean, std = (self._select_stat(name, v, selection) for name, v in (('mean', mean), ('std', std)))
        self.head = self._sparse_head(kind, selection, weight, bias, mean, std, self.head.global_pool.pool_type)

    def set_qpm_head(
            self,
            selection: torch.Tensor,
            assignment: Optional[torch.Tensor],
            mean: torch.Tensor,
            std: torch.Tensor,
    ) -> None:
        """Switch to the QPM head (docs/METHOD.md, "Pipeline", stage 4).

        Args:
            selection: ``(n_f*,)`` distinct channel indices (solution.selected).
            assignment: ``(C, n_f*)`` binary ``W``, ``n_per_class`` ones per row, rows distinct
                (solution.assignment); None only for a model without classifier.
            mean, std: per-feature statistics of the dense model, for the ``n_f*`` selected features or for
                all ``num_features`` channels (then indexed with ``selection``).
        """
        selection = check_selection(selection, self.n_features, self.num_features)
        if assignment is None:
            if self.num_classes:
                raise ValueError(f'assignment is required for a model with {self.num_classes} classes.')
            weights = None
        else:
            weights = check_assignment(assignment, self.num_classes, self.n_features, self.n_per_class)
        mean, std = (self._select_stat(name, v, selection) for name, v in (('mean', mean), ('std', std)))
        if not torch.all(std > 0):
            raise ValueError('std must be > 0 for every selected feature (a constant feature cannot be normalised).')
        pool = self.head.global_pool.pool_type
        self.head = self._qpm_head(selection, weights, mean, std, pool)

    def _select_stat(self, name: str, value: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(value).detach().float().cpu()
        if value.shape == (self.num_features,) and self.num_features != self.n_features:
            value = value[selection.cpu()]
        if value.shape != (self.n_features,):
            raise ValueError(f'{name} must have shape ({self.n_features},) or ({self.num_features},), '
                             f'got {tuple(value.shape)}.')
        if not torch.isfinite(value).all():
            raise ValueError(f'{name} contains NaN or inf.')
        return value

    # --- timm contract ----------------------------------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return {k: _prefix_matcher(v, 'backbone.') for k, v in self.backbone.group_matcher(coarse).items()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """``num_classes=0`` removes the classifier and keeps the head state; ``num_classes > 0`` gives a fresh
        dense ``Linear(num_features, num_classes)``: a new label set needs a new statistics pass and solve."""
        pool = self.head.global_pool.pool_type if global_pool is None else global_pool
        _check_pool(pool)
        if num_classes == 0 and self.is_qpm:
            h = self.head
            mean, std = h.mean.detach(), h.std.detach()
            self.head = self._qpm_head(h.selection, None, mean, std, pool) if isinstance(h, QPMHead) else \
                self._sparse_head(h.kind, h.selection, None, None, mean, std, pool)
            self.num_classes = 0
        else:
            self._set_dense_head(num_classes, pool)

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, **kwargs):
        """Delegates to the backbone (used by ``features_only=True``)."""
        return self.backbone.forward_intermediates(x, **kwargs)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take = self.backbone.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=True)
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's ``N x backbone_features x H x W`` map: a CNN's ``forward_features``, or a token model's
        last-block patch tokens through its final norm (timm's ``forward_intermediates``; prefix and register
        tokens dropped, ``H x W`` the patch grid of this input). What the feature cache stores."""
        if self.token_backbone:
            if torch.jit.is_scripting():  # TorchScript cannot call forward_intermediates: the same map, by hand
                return self._scripted_token_map(x)
            return self._token_map(x)
        return self.backbone.forward_features(x)

    def _scripted_token_map(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_intermediates``' map from ``forward_features`` (tokens after the final norm, or NHWC)."""
        out = self.backbone.forward_features(x)
        if out.dim() == 4:  # NHWC (Swin-like)
            return out.permute(0, 3, 1, 2)
        tokens = out[:, self.num_prefix_tokens:]
        h, w = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)

    @torch.jit.ignore
    def _token_map(self, x: torch.Tensor) -> torch.Tensor:
        return last_block_map(self.backbone, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Un-pooled features, all ``num_features`` channels: the backbone's map through the adapter. Inside
        :meth:`reading_backbone_maps`, ``x`` is already the backbone's map (read from the feature cache)."""
        if not self.input_is_backbone_maps:
            x = self.forward_backbone(x)
        return self.adapter(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_with_features(self, x: torch.Tensor) -> QPMOutput:
        """One pass giving logits, the head's feature maps and their pooled values (loss, statistics, explanations)."""
        maps = self.head.select(self.forward_features(x))
        pooled = self.head.global_pool(maps)
        if pooled.dim() != 2:
            raise ValueError("forward_with_features needs a pooling head; this one has global_pool=''.")
        return QPMOutput(self.head.forward_pooled(pooled), maps, pooled)

    # --- frozen backbone ------------------------------------------------------------------------------------------
    def freeze_backbone(self) -> None:
        """Train only the adapter and the head (DINO-QPM): the backbone's parameters stop requiring gradients and
        the backbone stays in eval mode (its BatchNorm statistics and dropout frozen) whatever ``train()`` is
        called with. A training-time choice, not recorded in exports."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone.eval()

    def train(self, mode: bool = True) -> 'QPMModel':
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    @contextmanager
    def reading_backbone_maps(self) -> Iterator['QPMModel']:
        """Inside, every forward takes :meth:`forward_backbone` outputs as input instead of images (the feature
        cache of a frozen backbone), so training steps, the statistics and :func:`qpm_timm.fit.fit_qpm` run on
        cached maps unchanged."""
        previous, self.input_is_backbone_maps = self.input_is_backbone_maps, True
        try:
            yield self
        finally:
            self.input_is_backbone_maps = previous

    # --- loading ----------------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load weights; the head state follows the checkpoint (module docstring, "Loading rules")."""
        sd = dict(state_dict)
        fc = sd.get('head.fc.weight')
        ckpt_classes = 0 if fc is None else fc.shape[0]
        if self.num_classes and ckpt_classes != self.num_classes:
            if strict:
                raise ValueError(
                    f'checkpoint has {ckpt_classes} classes, this model {self.num_classes}: create the model with '
                    f'num_classes={ckpt_classes}, or load non-strictly (pretrained=True) to keep only the backbone.')
            found = f'a {ckpt_classes}-class classifier' if ckpt_classes else 'no classifier (timm drops one of ' \
                                                                             'another class count)'
            warnings.warn(f'checkpoint has {found}, the model {self.num_classes} classes: loaded the backbone; '
                          f'the head is a fresh dense {self.num_classes}-class layer (train it, then re-solve).')
            sd = {k: v for k, v in sd.items() if not k.startswith('head.')}
            self.reset_classifier(self.num_classes)
        elif 'head.selection' in sd and ('head.fc.bias' in sd or (not self.num_classes and
                                                                   isinstance(self.head, SparseHead))):
            if not isinstance(self.head, SparseHead):
                raise ValueError('these weights hold a baseline\'s sparse head (a bias beside the selection), this '
                                 f'model a {self.head_kind!r} head: create it with head=\'sldd\' | \'qsenn\' | '
                                 '\'glm\' (an export\'s config.json records it in model_args.head).')
            self.set_sparse_head(self.head.kind, sd['head.selection'], fc if self.num_classes else None,
                                 sd.get('head.fc.bias') if self.num_classes else None, sd['head.mean'], sd['head.std'])
            if not self.num_classes:
                sd.pop('head.fc.weight', None)
                sd.pop('head.fc.bias', None)
        elif 'head.selection' in sd:
            if isinstance(self.head, SparseHead):  # a QPM checkpoint into a sparse-head model: a QPM again
                self.n_features = int(sd['head.selection'].numel())
            self.set_qpm_head(sd['head.selection'], fc if self.num_classes else None, sd['head.mean'], sd['head.std'])
            if not self.num_classes:
                sd.pop('head.fc.weight', None)
        elif self.is_qpm and any(k.startswith('head.') for k in sd):
            self._set_dense_head(self.num_classes, self.head.global_pool.pool_type)
        try:
            return super().load_state_dict(sd, strict=strict, assign=assign)
        except RuntimeError as e:
            raise ValueError(f'these weights do not fit a {self.backbone_name} QPM with n_features='
                             f'{self.n_features} (does config.json match the weights?): {e}') from e


def _create_qpm(variant: str, pretrained: bool = False, **kwargs) -> QPMModel:
    if pretrained:  # the QPM's own weights replace the backbone's: do not fetch those first
        kwargs.pop('pretrained_backbone', None)
        kwargs.pop('backbone_pretrained_cfg_overlay', None)
    with explained_load_errors(variant, kwargs):
        return build_model_with_cfg(QPMModel, variant, pretrained, feature_cfg=dict(feature_cls='getter'),
                                    pretrained_filter_fn=filter_authors_weights, **kwargs)


def _entrypoint(variant: Variant) -> Callable[..., QPMModel]:
    """The ``@register_model`` function of a table row; timm registers it under its ``__name__``."""
    def create(pretrained: bool = False, **kwargs) -> QPMModel:
        return _create_qpm(variant.name, pretrained, **dict(variant.model_args(), **kwargs))

    create.__name__ = create.__qualname__ = variant.name
    create.__doc__ = variant.doc()
    return create


# timm's registry reads this module's default_cfgs: one row per variant of the table, and the generic ``qpm``
default_cfgs = generate_default_cfgs({
    **{v.name: v.pretrained_cfg() for v in VARIANTS},
    'qpm': {**qpm_cfg(), 'hf_hub_filename': None},
})
for _row in VARIANTS:
    globals()[_row.name] = register_model(_entrypoint(_row))
del _row


@register_model
def qpm(pretrained: bool = False, backbone: str = 'resnet50', **kwargs) -> QPMModel:
    """A QPM on any timm CNN or ViT: ``timm.create_model('qpm', backbone='convnext_tiny', num_classes=...)``.

    Input size, normalisation and first conv come from the backbone's own pretrained config; a ViT's input size is
    the one it was built for (``img_size=...``), fixed unless ``dynamic_img_size=True``.
    """
    check_backbone(backbone)
    overlay = {}
    if not kwargs.get('pretrained_cfg'):  # an exported config (local-dir:, hf-hub:) keeps its own values
        bcfg = timm.models.get_pretrained_cfg(backbone)
        overlay = {k: getattr(bcfg, k) for k in ('input_size', 'crop_pct', 'interpolation', 'mean', 'std')}
        overlay['first_conv'] = 'backbone.' + bcfg.first_conv if isinstance(bcfg.first_conv, str) else None
        overlay['num_classes'] = kwargs.get('num_classes', 1000)  # weights of a generic QPM fit its class count
    overlay.update(kwargs.pop('pretrained_cfg_overlay', None) or {})
    exported = bool(kwargs.get('pretrained_cfg'))
    model = _create_qpm('qpm', pretrained, backbone=backbone, pretrained_cfg_overlay=overlay, **kwargs)
    cfg = model.pretrained_cfg
    net = model if isinstance(model, QPMModel) else model.model  # features_only: timm's FeatureGetterNet wraps it
    img_size = getattr(getattr(net.backbone, 'patch_embed', None), 'img_size', None)
    if img_size is not None and not exported:
        cfg['input_size'] = (net.in_chans, *img_size)
        cfg['fixed_input_size'] = not getattr(net.backbone, 'dynamic_img_size', False)
    reduction = net.feature_info[-1]['reduction']
    grid = (lambda s: s // reduction) if net.token_backbone else (lambda s: -(-s // reduction))
    cfg['pool_size'] = tuple(grid(s) for s in cfg['input_size'][-2:])
    return model


def create_qpm(
        backbone: str,
        num_classes: int,
        n_features: int = 50,
        n_per_class: int = 5,
        **timm_kwargs,
) -> QPMModel:
    """A QPM on any timm CNN backbone, made through ``timm.create_model('qpm', ...)`` so that its config exports.

    Args:
        backbone: timm model name (``resnet50``, ``convnext_tiny``, ``efficientnet_b0``, ...).
        num_classes: number of classes.
        n_features: ``n_f*`` kept features (50 in the paper).
        n_per_class: ``n_wc`` features per class (5 in the paper).
        **timm_kwargs: ``head='dense'|'qpm'``, ``reduced_strides``, ``drop_rate``, ``device``, backbone kwargs...
    """
    return timm.create_model(
        'qpm', backbone=backbone, num_classes=num_classes, n_features=n_features, n_per_class=n_per_class,
        **timm_kwargs)
