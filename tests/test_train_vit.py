"""train.py with a ViT backbone, a frozen backbone, the adapter and the feature cache.

docs/METHOD.md, "ViT backbones and the adapter", and docs/FEATURE_CACHE.md.
"""
import json

import numpy as np
import pytest
import timm
import torch
from test_train import TINY, _kill_when, _solution, _train

import qpm_timm  # noqa: F401  (registers the qpm models)
from helpers.scripts import refused
from qpm_timm.explain import FeatureGallery

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

VIT = ['--backbone', 'vit_small_patch14_reg4_dinov2', '--model-kwargs', 'embed_dim=64', 'depth=2', 'num_heads=2',
       '--img-size', '56', '--adapter-depth', '1', '--adapter-dim', '16', '--freeze-backbone', '--epochs', '2']


def _statistics(exp):
    with np.load(exp / 'statistics.npz') as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope='module')
def cached(tmp_path_factory):
    out = tmp_path_factory.mktemp('vit')
    _train(*VIT, '--feature-cache', '--output', str(out), '--experiment', 'cached')
    return out / 'cached'


def test_frozen_vit_with_adapter_trains_from_the_cache_and_exports_a_loadable_qpm(cached):
    for name in ('feature_cache/train_eval/maps.npy', 'feature_cache/val/cache.json', 'dense/last.pth.tar',
                 'statistics.npz', 'solution.json', 'finetune/last.pth.tar', 'export/model.safetensors',
                 'report/index.html'):
        assert (cached / name).is_file(), name
    gallery = FeatureGallery.load(cached / 'gallery.npz')  # collected from cached maps, framed on the images
    assert gallery.image_size.tolist() == [56, 56] and gallery.map_size.tolist() == [4, 4]
    assert gallery.num_images == 6 * 8
    meta = json.loads((cached / 'feature_cache' / 'train_eval' / 'cache.json').read_text())
    assert meta['shape'][2:] == [64, 4, 4]  # the backbone's map (before the adapter): 64 channels, 4 x 4 patches
    model = timm.create_model(f'local-dir:{cached / "export"}', pretrained=True).eval()
    assert model.is_qpm and model.token_backbone and model.num_features == 16
    assert model(torch.randn(2, 3, 56, 56)).shape == (2, 6)
    torch.manual_seed(42)  # train.py seeds the initial weights from --seed (42) before it builds the model
    init = timm.create_model('qpm', backbone='vit_small_patch14_reg4_dinov2', embed_dim=64, depth=2, num_heads=2,
                             img_size=56, num_classes=6, n_features=6, n_per_class=2, adapter_depth=1, adapter_dim=16,
                             head='dense')
    for key, value in init.backbone.state_dict().items():  # the frozen backbone left training untouched
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_cached_and_uncached_runs_give_the_same_statistics_and_solution(tmp_path):
    common = [*VIT, '--epochs', '0', '--finetune-epochs', '0', '--no-report', '--output', str(tmp_path)]
    _train(*common, '--feature-cache', '--experiment', 'cached')
    _train(*common, '--experiment', 'images')
    got, want = _statistics(tmp_path / 'cached'), _statistics(tmp_path / 'images')
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert _solution(tmp_path / 'cached') == _solution(tmp_path / 'images')


def test_a_cached_run_killed_mid_training_resumes_to_the_same_assignment(cached, tmp_path):
    exp = tmp_path / 'killed'
    args = [*VIT, '--feature-cache', '--no-report', '--output', str(tmp_path), '--experiment', 'killed']
    _kill_when(args, exp / 'dense' / 'checkpoint-0.pth.tar')  # during the second dense epoch, cache built
    _train(*args, '--resume')
    assert _solution(exp) == _solution(cached)
    assert json.loads((exp / 'results.json').read_text())['top1'] == \
        json.loads((cached / 'results.json').read_text())['top1']


@pytest.mark.parametrize('args, message', [
    (['--adapter-depth', '0'], 'the fine-tune stage would train nothing'),
    (['--no-freeze-backbone', '--feature-cache'], '--feature-cache needs --freeze-backbone'),
    (['--cache-views', '-1'], '--cache-views must be >= 0'),
    (['--finetune-l1-maps', '-1'], '--finetune-l1-maps must be >= 0'),
])
def test_bad_frozen_backbone_settings_exit_2_before_writing(tmp_path, args, message):
    code, err = refused('train.py', [*TINY, *VIT, '--no-report', '--output', tmp_path, *args])
    assert code == 2 and message in err, err[-2000:]
    assert not any(tmp_path.iterdir())
