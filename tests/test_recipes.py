"""Every recipe in qpm_timm/configs/ runs all stages for one short step on small generated data, so no config rots.

The recipes' own values are kept (model, pretrained backbone, strides, n_f* = 50, n_wc = 5, optimiser, batch size);
only what makes the run short is cut on the command line (epochs, image size, solver cap), and the backbone's
pretrained weights come from a local file instead of the Hub.
"""
import json
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from test_data_cub import make_cub_tree

from helpers.folder_tree import make_folder_tree
from helpers.scripts import ROOT, run_script

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

CONFIGS = ROOT / 'qpm_timm' / 'configs'
# concepts: tests/test_readme.py; concepts_chiqpm: tests/test_chiqpm_train.py
RECIPES = sorted(p.stem for p in CONFIGS.glob('*.yaml') if p.stem not in ('concepts', 'concepts_chiqpm'))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A CUB folder, a class-per-folder tree with train/val (4 classes), a ResNet-50 weights file whose
    classifier fits those 4 classes (the ImageNet route adopts it as the dense head) and a DINOv2 ViT-B/14
    and ViT-S/14 file (their 518 px position embeddings, which timm resamples to the run's grid)."""
    root = tmp_path_factory.mktemp('recipes')
    make_cub_tree(root)
    make_folder_tree(root / 'tree', classes=4, per_class=2)
    torch.manual_seed(0)
    save_file(timm.create_model('resnet50', num_classes=4).state_dict(), str(root / 'resnet50.safetensors'))
    for size in ('base', 'small'):
        vit = timm.create_model(f'vit_{size}_patch14_reg4_dinov2', num_classes=0, device='meta').to_empty(device='cpu')
        save_file({k: 0.02 * torch.randn_like(v) for k, v in vit.state_dict().items()},
                  str(root / f'vit_{size}.safetensors'))
    return root


def _data_args(recipe: str, root: Path):
    if recipe.startswith('cub'):
        return ['--data-dir', str(root)]
    if recipe == 'imagenet':
        return ['--data-dir', str(root / 'tree')]
    return ['--dataset', 'folder', '--data-dir', str(root / 'tree')]  # cars / aircraft layouts are tested in data tests


def test_the_models_page_names_exactly_the_recipes_in_the_configs_folder():
    readme = (ROOT / 'docs' / 'MODELS.md').read_text()
    section = readme.split("## The paper's recipes")[1].split('\n## ')[0]
    assert set(re.findall(r'`(\w+)\.yaml`', section)) == set(RECIPES)


@pytest.mark.parametrize('recipe', RECIPES)
def test_every_recipe_shows_the_command_that_runs_it(recipe):
    assert f'python train.py -c qpm_timm/configs/{recipe}.yaml' in (CONFIGS / f'{recipe}.yaml').read_text()


@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_runs_every_stage_with_its_own_values(tmp_path, data, recipe):
    config = yaml.safe_load((CONFIGS / f'{recipe}.yaml').read_text())
    assert (config['n_features'], config['n_per_class'], config['pretrained']) == (50, 5, True)
    vit = 'dinov2' in recipe  # 56 px: 4 x 4 patches of 14 px
    short = ['--epochs', '1', '--finetune-epochs', '1', '--finetune-rounds', '1', '--img-size', '56' if vit else '64',
             '--solver-effort', '1',
             '--solver-time-limit', '30', '--workers', '0', '--no-progress', '--no-report',
             '--pretrained-path', str(data / (f'vit_{"small" if "small" in recipe else "base"}.safetensors' if vit else
                                              'resnet50.safetensors'))]
    if config.get('method') in ('sldd', 'qsenn'):  # glm-saga's paths short too (the recipe: 100 points, 2000 epochs)
        short += ['--path-points', '8', '--path-max-epochs', '5']
    assert run_script('train.py', ['-c', CONFIGS / f'{recipe}.yaml', *short, *_data_args(recipe, data),
                                   '--output', tmp_path]) == 0
    exp = tmp_path / config['experiment']
    recorded = yaml.safe_load((exp / 'args.yaml').read_text())
    for key in ('model', 'lr', 'batch_size', 'reduced_strides', 'finetune_lr', 'skip_dense', 'dataset_args',
                'freeze_backbone', 'feature_cache', 'cache_dtype', 'locality', 'finetune_l1_maps', 'rho', 'idealize',
                'relu_head', 'fgl_weight', 'fgl_epochs'):
        if key in config:
            assert recorded[key] == config[key], key
    assert (exp / 'dense' / 'last.pth.tar').is_file() != bool(config.get('skip_dense'))
    results = json.loads((exp / 'results.json').read_text())
    assert results['top5'] == 100  # at most 5 classes: every label is among the top 5
    correct = results['top1'] / 100 * (3 if recipe.startswith('cub') else 8)  # of the 3 CUB test / 8 val images
    assert correct == pytest.approx(round(correct), abs=1e-6)
    exported = json.loads((exp / 'export' / 'config.json').read_text())
    assert exported['model_args']['n_features'] == 50 and exported['model_args']['head'] == config.get('method', 'qpm')
    assert (exp / 'feature_cache').is_dir() == bool(config.get('feature_cache'))
