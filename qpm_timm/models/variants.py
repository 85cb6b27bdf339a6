""" The registered QPM variants: one row each.

Everything else a variant is written as comes from :data:`VARIANTS`: the architecture arguments
(:data:`VARIANT_ARGS`), timm's ``default_cfgs`` and the ``@register_model`` entry points (:mod:`qpm_timm.models.qpm`),
``hub_configs/`` and the README's Models table (``python -m qpm_timm.hub write-configs`` / ``python -m qpm_timm.models
write-models-table``).
The rows encode the recipes of docs/METHOD.md, "Recipe" (ResNets from torchvision's ImageNet weights, reduced
strides for fine-grained data) and "ViT backbones and the adapter" (frozen DINOv2 with a token-wise MLP adapter).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..data.configs import qpm_data_config, resolve_qpm_data_config
from .authors import releases_of

__all__ = ['DATASET_NAMES', 'HF_HUB_ORG', 'VARIANTS', 'VARIANT_ARGS', 'Variant', 'get_variant', 'models_table',
           'qpm_cfg', 'variant_dataset', 'MODELS_HEADING', 'with_models_table', 'write_models_table']

HF_HUB_ORG = 'qpm-timm'  # the Hugging Face organisation that publishes every registered variant
QPM_ORIGIN = 'https://github.com/ThomasNorr/QPM'
DINO_QPM_ORIGIN = 'https://github.com/RobertZimm/DINO-QPM'
CHIQPM_ORIGIN = 'https://github.com/ThomasNorr/CHiQPM'
CNN_INPUT_SIDE = 224
DATASET_NAMES = {'cub': 'CUB-200-2011', 'cars': 'Stanford Cars', 'aircraft': 'FGVC-Aircraft',
                 'imagenet': 'ImageNet-1k', 'concepts': 'qpm-timm concepts (generated)'}


def qpm_cfg(num_classes: int = 1000, **kwargs) -> Dict[str, Any]:
    """The pretrained config every QPM shares (a CNN at 224 px with standard strides), ``kwargs`` on top."""
    return {
        'num_classes': num_classes, 'input_size': (3, CNN_INPUT_SIDE, CNN_INPUT_SIDE), 'fixed_input_size': False,
        'pool_size': (7, 7), 'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD, 'first_conv': 'backbone.conv1', 'classifier': 'head.fc',
        'hf_hub_filename': 'model.safetensors', 'license': 'apache-2.0', 'paper_ids': 'arXiv:2502.20130',
        'paper_name': 'QPM: Discrete Optimization for Globally Interpretable Image Classification',
        'origin_url': QPM_ORIGIN, **kwargs,
    }


@dataclass(frozen=True)
class Variant:
    """One registered variant: its architecture, its dataset and the facts the README states about it."""
    name: str
    title: str  # the backbone as the README names it
    backbone: str  # timm model name and the pretrained tag its dense stage starts from (pretrained_backbone=True)
    dataset: str  # a qpm_timm.data dataset name: class count and evaluation transform
    reduced_strides: bool = False  # ResNet layer3/layer4 at stride 1 (a CNN row)
    img_size: Optional[int] = None  # a token backbone's fixed input side
    patch_size: Optional[int] = None  # a token backbone's pixels per map cell
    adapter_depth: int = 0  # the token-wise MLP adapter (0: none)
    adapter_hidden: int = 2048
    adapter_dim: int = 512
    frozen_backbone: bool = False  # its recipe trains only adapter and head (train.py --freeze-backbone)
    relu_after_norm: bool = False  # CHiQPM's head: a ReLU after the normalisation (docs/METHOD.md, "CHiQPM")
    crop_to_bbox: bool = True  # evaluated on CUB's box crops (squashed) rather than whole images
    origin_url: str = QPM_ORIGIN  # the method's code
    recipe: str = ''  # the qpm_timm/configs/ file that trains it ('' : train.py --model <name>)
    setting: str = ''  # whose setting it reproduces, for the README
    published: bool = False  # weights at its Hub repository

    @property
    def num_classes(self) -> int:
        return resolve_qpm_data_config(self.dataset).num_classes

    @property
    def hub_id(self) -> str:
        return f'{HF_HUB_ORG}/{self.name}'

    @property
    def token_backbone(self) -> bool:
        return self.patch_size is not None

    @property
    def input_side(self) -> int:
        return self.img_size or CNN_INPUT_SIDE

    @property
    def map_side(self) -> int:
        """Side of the feature map at :attr:`input_side`: one cell per patch, or a ResNet's reduction 8 or 32."""
        if self.token_backbone:
            return self.input_side // self.patch_size
        return self.input_side // (8 if self.reduced_strides else 32)

    def model_args(self) -> Dict[str, Any]:
        """The ``QPMModel`` arguments of the architecture (what the entry point passes)."""
        args: Dict[str, Any] = dict(backbone=self.backbone)
        if self.img_size:
            args['img_size'] = self.img_size
        if not self.token_backbone:
            args['reduced_strides'] = self.reduced_strides
        if self.adapter_depth:
            args.update(adapter_depth=self.adapter_depth, adapter_hidden=self.adapter_hidden,
                        adapter_dim=self.adapter_dim)
        if self.relu_after_norm:
            args['relu_after_norm'] = True
        return args

    def notes(self) -> str:
        """The backbone weights its dense stage starts from and what its recipe trains."""
        notes = f"dense stage initialised from timm's {self.backbone} (pretrained_backbone=True)"
        if self.frozen_backbone:
            notes += '; the backbone stays frozen (train.py --freeze-backbone), only adapter and head train'
        return notes

    def pretrained_cfg(self) -> Dict[str, Any]:
        """Its ``default_cfgs`` row: the evaluation transform of its dataset's recipe, map size, Hub id, notes."""
        data = {k: v for k, v in qpm_data_config(self.dataset, crop_to_bbox=self.crop_to_bbox).items()
                if k != 'input_size'}
        cfg = qpm_cfg(self.num_classes, pool_size=(self.map_side, self.map_side), hf_hub_id=self.hub_id,
                      notes=self.notes(), origin_url=self.origin_url, **data)
        if self.token_backbone:
            cfg.update(input_size=(3, self.input_side, self.input_side), fixed_input_size=True,
                       first_conv='backbone.patch_embed.proj')
        return cfg

    def describe_backbone(self) -> str:
        """The README's backbone column."""
        adapter = f' + {self.adapter_depth}-layer token MLP adapter → {self.adapter_dim}' \
            if self.adapter_depth else ''
        head = ", CHiQPM head (ReLU after the normalisation)" if self.relu_after_norm else ''
        return self.title + (' (frozen)' if self.frozen_backbone else '') + adapter + head

    def describe_maps(self) -> str:
        """The README's strides column: reduced or standard ResNet strides, or the patch size, and the map size."""
        kind = f'patch {self.patch_size}' if self.token_backbone else 'reduced' if self.reduced_strides else 'standard'
        return f'{kind} ({self.map_side}×{self.map_side} maps at {self.input_side})'

    def describe_weights(self) -> str:
        """Published or not, and the ways to weights: the authors' releases it fits, its training recipe."""
        train = f'train with `{self.recipe}`' if self.recipe else 'train with the recipe'
        releases = releases_of(self.name)
        source = f"no authors' release: {train}"
        if releases:
            source = (f"source: the authors' releases ({', '.join(r.name for r in releases)}), converted with "
                      f'`qpm_timm.convert` (docs/RELEASING.md), or {train}')
        status = '**published**' if self.published else '**not published**'
        return '; '.join(part for part in (status, self.setting, source) if part)

    def doc(self) -> str:
        """Docstring of its entry point."""
        return (f'QPM on {self.describe_backbone()} for {DATASET_NAMES.get(self.dataset, self.dataset)}: '
                f'{self.map_side}×{self.map_side} feature maps at {self.input_side} px.')


VARIANTS: Tuple[Variant, ...] = (
    Variant('qpm_resnet50_cub', 'ResNet-50', 'resnet50.tv_in1k', 'cub', reduced_strides=True, recipe='cub.yaml'),
    # CHiQPM's setting: forced class pairs, ReLU head, Feature Grounding Loss (the architecture differs by the ReLU)
    Variant('chiqpm_resnet50_cub', 'ResNet-50', 'resnet50.tv_in1k', 'cub', reduced_strides=True, relu_after_norm=True,
            origin_url=CHIQPM_ORIGIN, recipe='cub_chiqpm.yaml', setting="CHiQPM's setting"),
    Variant('qpm_resnet50_cars', 'ResNet-50', 'resnet50.tv_in1k', 'cars', reduced_strides=True, recipe='cars.yaml'),
    Variant('qpm_resnet50_imagenet', 'ResNet-50', 'resnet50.tv_in1k', 'imagenet', recipe='imagenet.yaml'),
    Variant('qpm_resnet34_cub', 'ResNet-34', 'resnet34.tv_in1k', 'cub', reduced_strides=True),
    Variant('qpm_resnet18_cub', 'ResNet-18', 'resnet18.tv_in1k', 'cub', reduced_strides=True),
    # DINO-QPM's setting: DINOv2 ViT-B/14 with 4 registers at 224 px (16 x 16 patch maps), frozen, with a 4-layer
    # token MLP adapter (2048 wide, 512 out), on whole CUB images
    Variant('qpm_vit_base_patch14_reg4_dinov2_cub', 'DINOv2 ViT-B/14 + registers',
            'vit_base_patch14_reg4_dinov2.lvd142m', 'cub', img_size=224, patch_size=14, adapter_depth=4,
            adapter_hidden=2048, adapter_dim=512, frozen_backbone=True, crop_to_bbox=False,
            origin_url=DINO_QPM_ORIGIN, recipe='cub_dinov2.yaml', setting="DINO-QPM's setting"),
    # a smaller one of ours for ViT-S/14 whose cached epochs stay cheap on a CPU
    Variant('qpm_vit_small_patch14_reg4_dinov2_cub', 'DINOv2 ViT-S/14 + registers',
            'vit_small_patch14_reg4_dinov2.lvd142m', 'cub', img_size=224, patch_size=14, adapter_depth=2,
            adapter_hidden=512, adapter_dim=256, frozen_backbone=True, crop_to_bbox=False,
            origin_url=DINO_QPM_ORIGIN, recipe='cub_dinov2_small.yaml'),
)
_BY_NAME = {v.name: v for v in VARIANTS}
VARIANT_ARGS: Dict[str, Dict[str, Any]] = {v.name: v.model_args() for v in VARIANTS}


def get_variant(name: str) -> Variant:
    """The row of registered variant ``name``."""
    if name not in _BY_NAME:
        raise ValueError(f'unknown variant {name!r}; one of {", ".join(_BY_NAME)}.')
    return _BY_NAME[name]


def variant_dataset(name: str) -> str:
    """The dataset registered variant ``name`` is trained and evaluated on."""
    return get_variant(name).dataset


def models_table(variants: Tuple[Variant, ...] = VARIANTS) -> str:
    """The README's Models table (Markdown)."""
    rows: List[str] = ['| name | backbone | classes | strides | Hub id | weights |', '|---|---|---|---|---|---|']
    rows += [f'| `{v.name}` | {v.describe_backbone()} | {v.num_classes} | {v.describe_maps()} | `{v.hub_id}` | '
             f'{v.describe_weights()} |' for v in variants]
    return '\n'.join(rows)


MODELS_HEADING = '## Models'


def with_models_table(readme: str) -> str:
    """``readme`` with the Markdown table under its Models heading replaced by the variant table's."""
    lines = readme.split('\n')
    if MODELS_HEADING not in lines:
        raise ValueError(f'no "{MODELS_HEADING}" heading to put the Models table under.')
    start = lines.index(MODELS_HEADING) + 1
    while start < len(lines) and not lines[start].startswith('|'):
        start += 1
    end = start
    while end < len(lines) and lines[end].startswith('|'):
        end += 1
    if start == end:
        raise ValueError(f'no table under "{MODELS_HEADING}".')
    return '\n'.join(lines[:start] + models_table().split('\n') + lines[end:])


def write_models_table(readme_path: str) -> None:
    """Regenerate the Models table of the README at ``readme_path``."""
    path = Path(readme_path)
    path.write_text(with_models_table(path.read_text(encoding='utf-8')), encoding='utf-8')
