"""benchmarks/compare.py on a tiny dense run: every method's row comes from the one dense checkpoint and its one
statistics pass, every method's export reloads through timm to its row's accuracy, the ablation and the trade-off
picture are made, and a run without a dense stage is refused naming the stage to rerun."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from helpers.scripts import read_results, refused, run_script
from qpm_timm.baselines import PooledFeatures, SparseLayer
from qpm_timm.fit import problem_from_statistics
from qpm_timm.solver import QPMSolution
from qpm_timm.stats import QPMStatistics

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
DATA = ['--dataset-args', '{num_classes: 6, num_concepts: 6, images_per_class: 8}', '--img-size', '40',
        '--workers', '0', '--no-progress']
TINY = ['--model', 'qpm', '--backbone', 'test_resnet', '--n-features', '6', '--n-per-class', '2', '--epochs', '2',
        '--finetune-epochs', '1', '-b', '16', '--lr', '0.05', '--no-report', *DATA]
METHODS = ('qpm', 'chiqpm', 'sldd', 'qsenn', 'glm')
ABLATION = {'qpm: Z_A': 'qpm-Z_A', 'qpm: Z_A + Z_R': 'qpm-Z_A+Z_R', 'qpm: Z_A + Z_B': 'qpm-Z_A+Z_B'}


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp('compare')
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), *TINY, '--output', str(out), '--experiment', 'run'],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1',
                                                                  PYTHONPATH=str(ROOT)), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = out / 'table.txt'
    code = run_script('benchmarks/compare.py', ['--runs', out / 'run', '--output', out / 'cmp', '--ablation',
                                                '--path-points', '10', '--path-max-epochs', '5',
                                                '--faithfulness-images', '8', '--results', results])
    assert code == 0
    return out, out / 'cmp' / f'{out.name}-run', results.read_text()


def test_every_row_is_made_from_the_one_dense_checkpoint_and_statistics_pass(compared):
    out, folder, _ = compared
    statistics = QPMStatistics.load(folder / 'statistics.npz')
    features = PooledFeatures.load(folder / 'features.npz')
    dense = torch.load(out / 'run' / 'dense' / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
    mean, std = features.mean_std()
    assert np.allclose(mean, statistics.mean) and np.allclose(std, statistics.std)  # one pass, both results
    for name in ('qpm', 'qpm-Z_A'):
        locality = name == 'qpm'
        problem, _ = problem_from_statistics(statistics, 6, 2, locality=locality, redundancy=locality)
        QPMSolution.load(folder / name / 'solution.json', problem)  # refused unless solved on these statistics
    for name, layer_file in (('sldd', 'layer.npz'), ('glm', 'layer.npz'), ('qsenn', 'layer_round1.npz')):
        layer = SparseLayer.load(folder / name / layer_file)
        assert np.allclose(layer.mean, mean[layer.channels]) and np.allclose(layer.std, std[layer.channels])
    glm = timm.create_model(f'local-dir:{folder / "glm" / "export"}', pretrained=True)
    assert all(torch.equal(glm.state_dict()[k], v) for k, v in dense.items() if k.startswith('backbone.'))


@pytest.mark.parametrize('name', [*METHODS, *ABLATION.values()])
def test_every_methods_export_reloads_to_its_rows_accuracy(compared, name, tmp_path):
    _, folder, _ = compared
    row = json.loads((folder / name / 'metrics.json').read_text())
    rf = tmp_path / 'val.json'
    assert run_script('validate.py', ['--model', f'local-dir:{folder / name / "export"}', '--pretrained', *DATA,
                                      '--no-interpretability', '--results-file', rf]) == 0
    assert float(read_results(rf)['top1']) == pytest.approx(row['top1'], abs=1e-4)  # validate.py rounds to 4 digits
    model = timm.create_model(f'local-dir:{folder / name / "export"}', pretrained=True)
    weights = model.class_weights
    assert row['features_used'] == int((weights != 0).any(0).sum())
    assert row['nonzeros_per_class'] == pytest.approx(float((weights != 0).sum(1).float().mean()))
    expected = {'sldd': 'sldd', 'qsenn': 'qsenn', 'glm': 'glm'}.get(name, 'qpm')
    assert model.head_kind == expected
    assert model.relu_after_norm == (name == 'chiqpm')


def test_the_table_has_the_dense_row_every_method_and_the_ablation(compared):
    _, _, text = compared
    for name in ('dense', *METHODS, *ABLATION):
        assert re.search(rf'^\| {re.escape(name)} \| [\d.]+ \| ', text, re.MULTILINE), (name, text)
    header = text.splitlines()[2]
    for column in ('top-1 %', 'features', 'nonzeros / class', 'SID@k %', 'Class-Indep. %', 'Contrast. %',
                   'Correlation %', 'recovery', 'Plausibility %', 'feature grounding %', 'deletion', 'fit s'):
        assert column in header


def test_the_tradeoff_draws_top1_and_recovery_over_the_grid(compared, tmp_path):
    out, _, _ = compared
    png = tmp_path / 'tradeoff.png'
    code = run_script('benchmarks/compare.py', ['--runs', out / 'run', '--output', out / 'cmp', '--tradeoff',
                                                '--grid-features', '3', '6', '--grid-per-class', '2',
                                                '--tradeoff-png', png, '--results', tmp_path / 'grid.txt'])
    assert code == 0 and png.stat().st_size > 1000
    text = (tmp_path / 'grid.txt').read_text()
    assert re.search(r'^\| 6 \| 2 \| [\d.]+ \| [\d.]+ \|$', text, re.MULTILINE), text
    assert '| 3 | 2 |' not in text  # binomial(3, 2) = 3 feature sets for 6 classes: no QPM, no point


def test_a_run_without_a_dense_stage_is_refused_naming_the_stage(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'args.yaml').write_text('seed: 0\n')
    code, err = refused('benchmarks/compare.py', ['--runs', tmp_path / 'run', '--output', tmp_path / 'o'])
    assert code == 2 and 'no dense checkpoint (dense/last.pth.tar): rerun its dense stage' in err
