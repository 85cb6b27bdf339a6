"""CHiQPM in train.py (docs/METHOD.md, "CHiQPM"): qpm_timm/configs/concepts_chiqpm.yaml from the embedded default's
dense model (statistics -> forced-pairs solve -> ReLU head -> rounds of fine-tuning with the FGL -> export)."""
import csv
import json

import numpy as np
import pytest
import timm
import yaml

from helpers.scripts import ROOT, refused, run_script
from qpm_timm.solver import closest_class_pairs, pair_shares
from qpm_timm.stats import QPMStatistics

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

CONFIG = ROOT / 'qpm_timm' / 'configs' / 'concepts_chiqpm.yaml'


@pytest.fixture(scope='module')
def chiqpm_run(embedded_default, tmp_path_factory):
    out = tmp_path_factory.mktemp('chiqpm')
    dense = embedded_default.folder / 'dense' / 'last.pth.tar'
    assert run_script('train.py', ['-c', CONFIG, '--initial-checkpoint', dense, '--skip-dense', '--no-report',
                                   '--no-progress', '--output', out]) == 0
    return out / yaml.safe_load(CONFIG.read_text())['experiment']


def test_chiqpm_on_the_embedded_default_keeps_accuracy_recovery_and_every_forced_pair(chiqpm_run):
    results = json.loads((chiqpm_run / 'results.json').read_text())
    assert results['top1'] >= 99 and results['concept_recovery'] >= 0.9
    chiqpm = results['chiqpm']
    pairs = np.array(chiqpm['forced_pairs'])
    # the pairs are the int(48 * 0.5) closest classes by the A that statistics.npz keeps
    statistics = QPMStatistics.load(chiqpm_run / 'statistics.npz')
    assert np.array_equal(pairs, closest_class_pairs(statistics.A, 0.5)) and len(pairs) == 24
    model = timm.create_model(f'local-dir:{chiqpm_run / "export"}', pretrained=True)
    assert model.relu_after_norm and model.head.relu
    W = model.class_weights.detach().numpy()
    assert np.all(pair_shares(W, pairs) == model.n_per_class - 1)
    assert chiqpm['forced_pairs_sharing'] == 24 <= chiqpm['class_pairs_sharing']


def test_chiqpm_flags_are_recorded_in_args_results_and_the_export(chiqpm_run):
    args = yaml.safe_load((chiqpm_run / 'args.yaml').read_text())
    wanted = dict(rho=0.5, idealize=False, relu_head=True, fgl_weight=3.0, fgl_epochs=1, finetune_rounds=[1, 1, 2],
                  finetune_round_lr_decay=0.9)
    assert {k: args[k] for k in wanted} == wanted
    recorded = json.loads((chiqpm_run / 'results.json').read_text())['chiqpm']
    exported = json.loads((chiqpm_run / 'export' / 'config.json').read_text())
    assert exported['training']['chiqpm'] == recorded and exported['model_args']['relu_after_norm'] is True
    assert {k: recorded[k] for k in wanted} == wanted
    # one folder per fine-tune round, each starting at 0.9x the previous round's learning rate
    first_lrs = []
    for folder in ('finetune', 'finetune_round2', 'finetune_round3'):
        with open(chiqpm_run / folder / 'summary.csv') as fh:
            first_lrs.append(float(next(csv.DictReader(fh))['lr']))
    assert first_lrs == pytest.approx([0.01, 0.009, 0.0081])


@pytest.mark.parametrize('args, message', [
    (['--rho', '0.5', '--pairs', '[[0, 1]]'], '--rho and --pairs'),
    (['--idealize'], '--idealize relaxes forced pairs'),
    (['--pairs', '[[0, 1, 2]]'], 'class index pairs'),
    (['--fgl-weight', '-1'], '--fgl-weight must be >= 0'),
    (['--finetune-rounds', '0'], '--finetune-rounds needs'),
])
def test_bad_chiqpm_flags_are_refused_with_the_reason(tmp_path, args, message):
    code, err = refused('train.py', ['-c', CONFIG, '--rho', '0', '--output', tmp_path, *args])
    assert code == 2 and message in err
