"""``--amp auto`` picks bfloat16 where the device runs it natively and float32 elsewhere (the rule, tested with the
hardware mocked), and ``--amp`` means one precision, bfloat16 autocast, in every pass over data: a training step,
the statistics, the feature cache, validation and the report's scan (qpm_timm/precision.py). Left to its default,
``torch.autocast`` picks float16 on CUDA, so a pass that called it without a dtype computed on a GPU in another
precision than training; every autocast a pass enters is recorded here and must name bfloat16."""
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch.utils.data import TensorDataset

import qpm_timm
from helpers.scripts import refused
from qpm_timm import precision
from qpm_timm.data.feature_cache import build_feature_cache
from qpm_timm.data.loader import create_qpm_loader
from qpm_timm.explain import scan_dataset
from qpm_timm.losses import ActivationL1, FeatureDiversityLoss
from qpm_timm.models.head import placeholder_assignment
from qpm_timm.precision import AMP_DTYPE, autocast, resolve_precision
from qpm_timm.run import evaluate
from qpm_timm.run.args import resolve_args_precision
from qpm_timm.run.experiment import restore_args
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


# --- the rule of --amp auto, with the hardware mocked (never the machine the suite runs on) ------------------------
@pytest.fixture
def cpu_with(monkeypatch):
    """Make the CPU report bf16 units or not (x86: AVX512-BF16 / AMX), without an ISA cap unless a test sets one."""
    monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    monkeypatch.delenv('DNNL_MAX_CPU_ISA', raising=False)
    monkeypatch.setattr(precision.platform, 'machine', lambda: 'x86_64')

    def set_units(avx512_bf16: bool, amx: bool = False):
        monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx)
    return set_units


@pytest.mark.parametrize('avx512_bf16, amx', [(True, False), (False, True), (True, True)])
def test_auto_picks_bfloat16_on_a_cpu_with_native_bf16_units(cpu_with, avx512_bf16, amx):
    cpu_with(avx512_bf16, amx)
    chosen = resolve_precision('auto', 'cpu')
    assert chosen.amp and chosen.name == 'bfloat16' and chosen.requested == 'auto'
    assert 'native bf16 kernels' in chosen.reason and ('AMX' if amx else 'AVX512-BF16') in chosen.hardware


def test_auto_picks_float32_on_a_cpu_without_bf16_units(cpu_with):
    cpu_with(False)
    chosen = resolve_precision('auto', 'cpu')
    assert not chosen.amp and chosen.name == 'float32' and 'no native bf16' in chosen.reason
    assert 'no bf16 units' in chosen.hardware


@pytest.mark.parametrize('cap, amp', [('AVX2', False), ('avx512_core', False), ('AVX512_CORE_VNNI', False),
                                      ('AVX512_CORE_BF16', True), ('AVX512_CORE_AMX', True), ('ALL', True)])
def test_onednn_isa_cap_below_bf16_makes_a_bf16_cpu_pick_float32(cpu_with, monkeypatch, cap, amp):
    cpu_with(True, True)
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', cap)
    chosen = resolve_precision('auto', 'cpu')
    assert chosen.amp is amp and f'ONEDNN_MAX_CPU_ISA={cap.upper()}' in chosen.hardware


def test_the_older_dnnl_name_of_the_isa_cap_counts_too(cpu_with, monkeypatch):
    cpu_with(True)
    monkeypatch.setenv('DNNL_MAX_CPU_ISA', 'AVX2')
    assert not resolve_precision('auto', 'cpu').amp


@pytest.mark.parametrize('units', [True, False])
def test_forced_flags_win_over_the_rule(cpu_with, units):
    cpu_with(units)
    on, off = resolve_precision(True, 'cpu'), resolve_precision(False, 'cpu')
    assert on.amp and on.requested == 'on' and 'forced by --amp' in on.reason
    assert not off.amp and off.requested == 'off' and 'forced by --no-amp' in off.reason
    # forcing against the hardware says what the rule would have said
    assert ('no native bf16' in on.reason) is (not units) and ('native bf16 kernels' in off.reason) is units


@pytest.mark.parametrize('capability, supported, amp', [((8, 0), True, True), ((9, 0), True, True),
                                                         ((7, 5), True, False), ((8, 6), False, False)])
def test_auto_on_cuda_needs_bf16_tensor_cores(monkeypatch, capability, supported, amp):
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: supported)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'a GPU')
    chosen = resolve_precision('auto', 'cuda')
    assert chosen.amp is amp and chosen.device == 'cuda'
    assert f'compute capability {capability[0]}.{capability[1]}' in chosen.hardware


def test_auto_on_another_device_is_float32():
    assert not resolve_precision('auto', 'meta').amp


def test_an_unresolved_auto_cannot_enter_a_pass():
    with pytest.raises(ValueError, match='resolve'):
        autocast('cpu', 'auto')


def test_a_config_amp_that_is_not_auto_true_or_false_is_refused(tmp_path):
    config = tmp_path / 'bad.yaml'
    config.write_text('amp: sometimes\n')
    code, err = refused('train.py', ['-c', config, '--output', tmp_path / 'out'])
    assert code == 2 and 'amp must be auto, true or false' in err and 'sometimes' in err
    assert not (tmp_path / 'out').exists()


def test_the_resolved_precision_is_recorded_and_a_resumed_run_keeps_it(cpu_with, tmp_path, capsys):
    cpu_with(True)  # a machine with bf16 units resumes a run that started in float32 on one without
    args = SimpleNamespace(amp='auto', rank=0)
    saved = SimpleNamespace(amp=False, rank=0)
    chosen, text = resolve_args_precision(args, 'cpu', 'amp: auto\nseed: 0\n')
    assert chosen.amp and args.amp is True and yaml.safe_load(text) == dict(amp=True, seed=0)
    assert capsys.readouterr().out.count('precision: bfloat16') == 1
    (tmp_path / 'args.yaml').write_text(yaml.safe_dump(dict(amp=False, seed=0)))
    restore_args(saved, tmp_path)
    kept, _ = resolve_args_precision(saved, 'cpu', resumed=True)
    assert not kept.amp and 'kept from the resumed run' in kept.reason
