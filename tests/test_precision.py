"""``--amp`` means one precision, bfloat16 autocast, in every pass over data: a training step, the statistics,
the feature cache, validation and the report's scan (qpm_timm/precision.py). Left to its default,
``torch.autocast`` picks float16 on CUDA, so a pass that called it without a dtype computed on a GPU in another
precision than training; every autocast a pass enters is recorded here and must name bfloat16."""
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

import qpm_timm
from qpm_timm.data.feature_cache import build_feature_cache
from qpm_timm.data.loader import create_qpm_loader
from qpm_timm.explain import scan_dataset
from qpm_timm.losses import ActivationL1, FeatureDiversityLoss
from qpm_timm.models.head import placeholder_assignment
from qpm_timm.precision import AMP_DTYPE
from qpm_timm.run import evaluate
from qpm_timm.run.training import WithFeatures, train_one_epoch
from qpm_timm.stats import collect_statistics

CLASSES, FEATURES, PER_CLASS = 4, 4, 2


@pytest.fixture
def autocasts(monkeypatch):
    """Every ``torch.autocast`` entered, as (device type, dtype asked for, enabled)."""
    calls, real = [], torch.autocast

    def recording(device_type, dtype=None, enabled=True, **kwargs):
        calls.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch, 'autocast', recording)
    return calls


def _data():
    torch.manual_seed(0)
    return TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % CLASSES)


def _model(qpm: bool = False):
    torch.manual_seed(0)
    model = qpm_timm.create_qpm('test_resnet', num_classes=CLASSES, n_features=FEATURES, n_per_class=PER_CLASS,
                                head='dense')
    if qpm:
        model.set_qpm_head(torch.arange(FEATURES), placeholder_assignment(CLASSES, FEATURES, PER_CLASS),
                           torch.zeros(FEATURES), torch.ones(FEATURES))
    return model


def _training_step(model, loader):
    args = SimpleNamespace(no_progress=True, rank=0, channels_last=False, amp=True, clip_grad=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train_one_epoch(0, model, WithFeatures(model), loader, optimizer, None,
                    (FeatureDiversityLoss(), ActivationL1(0.0, 0.0), None), args, 'cpu')


def _feature_cache(model, loader, tmp_path):
    model.freeze_backbone()
    build_feature_cache(model, loader.dataset, tmp_path / 'cache', key='k', batch_size=4, amp=True)


PASSES = {
    'training step': lambda model, loader, tmp_path: _training_step(model, loader),
    'statistics': lambda model, loader, tmp_path: collect_statistics(model, loader, CLASSES, amp=True),
    'feature cache': _feature_cache,
    'validation': lambda model, loader, tmp_path: evaluate(model, loader, 'cpu', amp=True),
}


@pytest.mark.parametrize('name', list(PASSES))
def test_every_pass_with_amp_autocasts_to_bfloat16(autocasts, tmp_path, name):
    loader = create_qpm_loader(_data(), batch_size=4)
    PASSES[name](_model(), loader, tmp_path)
    assert autocasts and all(call == ('cpu', AMP_DTYPE, True) for call in autocasts), autocasts


def test_the_report_scan_with_amp_autocasts_to_bfloat16(autocasts):
    scan_dataset(_model(qpm=True), _data(), batch_size=4, amp=True)
    assert autocasts and all(call == ('cpu', AMP_DTYPE, True) for call in autocasts), autocasts


def test_without_amp_no_pass_autocasts(autocasts):
    loader = create_qpm_loader(_data(), batch_size=4)
    collect_statistics(_model(), loader, CLASSES)
    evaluate(_model(), loader, 'cpu')
    assert autocasts == []
