"""train.py --method sldd|qsenn|glm end to end on a tiny concepts dataset: each stage's file, the head recorded in
config.json, the export reloading through timm to the run's numbers, validate.py and explain.py on it, Q-SENN resumed
after a kill, and the sizes a method cannot meet refused with exit code 2 before anything is written."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from helpers.scripts import read_results, refused, run_script
from qpm_timm.baselines import PooledFeatures, SparseLayer
from qpm_timm.run.methods import method_rounds, resolve_method

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model', 'qpm', '--backbone', 'test_resnet', '--img-size', '40', '--n-features', '6', '--n-per-class', '2',
        '--epochs', '2', '--finetune-epochs', '1', '--workers', '0', '-b', '16', '--lr', '0.05', '--no-progress',
        '--dataset-args', '{num_classes: 6, num_concepts: 6, images_per_class: 8}', '--path-points', '12',
        '--path-max-epochs', '10', '--no-report']
DATA = ['--dataset-args', '{num_classes: 6, num_concepts: 6, images_per_class: 8}', '--img-size', '40',
        '--workers', '0', '--no-progress']


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))


def _train(*args) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), *TINY, *args], capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp('methods')
    for method in ('sldd', 'qsenn', 'glm'):
        (out / f'{method}.txt').write_text(_train('--output', str(out), '--experiment', method, '--method', method))
    return out


@pytest.mark.parametrize('method', ['sldd', 'qsenn', 'glm'])
def test_every_baseline_leaves_its_stages_and_an_export_that_reloads_to_the_runs_accuracy(runs, method, tmp_path):
    exp = runs / method
    assert (exp / 'statistics.npz').is_file() and (exp / 'features.npz').is_file()
    layers = sorted(exp.glob('sparse_*.npz'))
    assert [p.name for p in layers] == (
        [f'sparse_qsenn_round{r}.npz' for r in (1, 2, 3, 4)] if method == 'qsenn' else [f'sparse_{method}.npz'])
    results = json.loads((exp / 'results.json').read_text())
    assert results['method'] == method and results['sparsification']['kind'] == method
    config = json.loads((exp / 'export' / 'config.json').read_text())
    assert config['model_args']['head'] == method and config['training']['method'] == method
    model = timm.create_model(f'local-dir:{exp / "export"}', pretrained=True).eval()
    last = SparseLayer.load(layers[-1])
    assert model.head_kind == method and model.head.selection.tolist() == last.channels.tolist()
    assert torch.equal(model.class_weights, torch.as_tensor(last.weight))  # the layer is frozen in the fine-tune
    assert results['sparsification']['nonzeros_per_class'] == pytest.approx(last.nonzeros_per_class)
    assert f'{last.nonzeros_per_class:.2f} nonzero weights per class (measured)' in (runs / f'{method}.txt').read_text()
    if method == 'glm':  # no fine-tune: the backbone is the dense model's
        assert not (exp / 'finetune').exists()
        dense = torch.load(exp / 'dense' / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
        assert all(torch.equal(model.state_dict()[k], v) for k, v in dense.items() if k.startswith('backbone.'))
    else:
        assert not torch.equal(model.head.mean, torch.as_tensor(last.mean).float())  # mean and std trained
    rf = tmp_path / 'val.json'
    code = run_script('validate.py', ['--model', f'local-dir:{exp / "export"}', '--pretrained', *DATA,
                                      '--results-file', rf])
    assert code == 0
    row = read_results(rf)
    assert float(row['top1']) == pytest.approx(results['top1'], abs=1e-4)  # validate.py rounds to 4 digits
    assert 0 <= float(row['concept_recovery']) <= 1 and 'class_independence' in row


def test_qsenn_fits_every_round_on_the_same_channels_with_three_weight_values(runs):
    layers = [SparseLayer.load(runs / 'qsenn' / f'sparse_qsenn_round{r}.npz') for r in (1, 2, 3, 4)]
    assert all(np.array_equal(layer.channels, layers[0].channels) for layer in layers)
    for layer in layers:
        assert np.unique(layer.weight[layer.weight != 0]).size == 2 and np.unique(np.abs(layer.weight)).size == 2
    # round 0 on the dense model's features; later rounds on the fine-tuned model's (their own mean and std)
    features = PooledFeatures.load(runs / 'qsenn' / 'features.npz').restricted(layers[0].channels)
    assert np.allclose(layers[0].mean, features.mean_std()[0])
    assert not np.allclose(layers[1].mean, layers[0].mean)
    assert [p.name for p in sorted((runs / 'qsenn').glob('finetune*'))] == [
        'finetune', 'finetune_round2', 'finetune_round3', 'finetune_round4']


def test_explain_writes_a_report_for_a_baseline_export(runs, tmp_path):
    code = run_script('explain.py', ['--model', f'local-dir:{runs / "sldd" / "export"}', '--pretrained', *DATA,
                                     '--output', tmp_path / 'report'])
    assert code == 0 and (tmp_path / 'report' / 'index.html').is_file()


def test_a_qsenn_run_killed_after_its_second_round_resumes_to_the_uninterrupted_layers(runs, tmp_path):
    args = ['--output', str(tmp_path), '--experiment', 'q', '--method', 'qsenn']
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *TINY, *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker, deadline = tmp_path / 'q' / 'sparse_qsenn_round2.npz', time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (tmp_path / 'q' / 'results.json').exists()
    _train('--resume', str(tmp_path / 'q'))
    for r in (1, 2, 3, 4):
        a = SparseLayer.load(tmp_path / 'q' / f'sparse_qsenn_round{r}.npz')
        b = SparseLayer.load(runs / 'qsenn' / f'sparse_qsenn_round{r}.npz')
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)


@pytest.mark.parametrize('args, message', [
    (['--method', 'sldd', '--n-features', '99'], "n_features=99 > the backbone's 96 feature channels"),
    (['--method', 'qsenn', '--rho', '0.5'], 'fits a sparse layer, not a QPM'),
    (['--method', 'glm', '--path-points', '0'], '--path-points must be >= 1'),
])
def test_sizes_or_flags_a_method_cannot_meet_exit_2_before_anything_is_written(tmp_path, args, message):
    code, err = refused('train.py', [*TINY, '--output', tmp_path, *args])
    assert code == 2 and message in err, err
    assert not any(tmp_path.rglob('*.pth.tar')) and not any(tmp_path.rglob('*.npz'))


def test_method_chiqpm_records_chiqpms_settings_and_qsenn_gets_the_authors_rounds():
    import argparse
    args = argparse.Namespace(method='chiqpm', rho=0.0, pairs=None, relu_head=False, fgl_weight=0.0)
    text = resolve_method(args, yaml.safe_dump(dict(method='chiqpm', rho=0.0)))
    assert yaml.safe_load(text) == dict(method='chiqpm', rho=0.5, relu_head=True, fgl_weight=3.0)
    rounds = argparse.Namespace(method='qsenn', finetune_rounds=None, finetune_epochs=40)
    assert method_rounds(rounds) == [10, 10, 10, 40]
    rounds.method = 'glm'
    assert method_rounds(rounds) == []
