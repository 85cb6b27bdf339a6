"""train.py end to end on a tiny concepts dataset: stages, resume after a kill, torchrun, bad input."""
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import qpm_timm
from helpers.folder_tree import make_folder_tree
from helpers.scripts import read_results, refused, run_script
from qpm_timm.run.model import check_input_size

pytestmark = pytest.mark.end_to_end  # runs scripts, trainings or solves end to end (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--model', 'qpm', '--backbone', 'test_resnet', '--img-size', '40', '--n-features', '6', '--n-per-class', '2',
        '--epochs', '3', '--finetune-epochs', '1', '--solver-time-limit', '30', '--workers', '0', '-b', '16',
        '--lr', '0.05', '--no-progress', '--calibration-per-class', '4',  # 24 of 48 val images calibrate the sets
        '--dataset-args', '{num_classes: 6, num_concepts: 6, images_per_class: 8, img_size: 40}']  # drawn at 40 px


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))


def _train(*args) -> str:
    """``python train.py TINY args`` in a new process (a run whose seeding, threads and kill points are its own);
    returns what it printed."""
    proc = subprocess.run([sys.executable, str(ROOT / 'train.py'), *TINY, *args], capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _solution(exp: Path):
    data = json.loads((exp / 'solution.json').read_text())
    return data['selected'], data['assignment']


def _kill_when(args, exists: Path):
    """Start train.py and SIGKILL it as soon as ``exists`` appears."""
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *TINY, *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not exists.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert exists.exists(), 'the run ended before the kill point'


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp('ref')
    (out / 'stdout.txt').write_text(_train('--output', str(out), '--experiment', 'ref'))
    return out / 'ref'


def test_every_stage_leaves_its_result_and_the_export_validates_to_the_runs_numbers(reference, tmp_path):
    for name in ('args.yaml', 'dense/last.pth.tar', 'dense/summary.csv', 'statistics.npz', 'solution.json',
                 'finetune/last.pth.tar', 'finetune/summary.csv', 'export/model.safetensors', 'export/config.json',
                 'export/README.md', 'results.json', 'gallery.npz', 'report/index.html', 'export/report/global.png',
                 'export/prediction_sets.json', 'report/trees/example_local.json'):
        assert (reference / name).is_file(), name
    results = json.loads((reference / 'results.json').read_text())
    validated = tmp_path / 'validate.json'  # validate.py on the export gives the run's own numbers
    assert run_script('validate.py', ['--model', f'local-dir:{reference / "export"}', '--pretrained',
                                      '--dataset-args', TINY[TINY.index('--dataset-args') + 1], '--workers', '0',
                                      '--prediction-sets', '--calibration-per-class', '4',
                                      '--results-file', validated]) == 0
    validated = read_results(validated)
    for key in ('coverage@0.9', 'set_size@0.9', 'aps_coverage@0.9', 'lac_set_size@0.95'):  # the same split and sets
        assert validated[key] == results[key], key
    assert validated['top1'] == pytest.approx(results['top1'], abs=1e-4)  # validate.py rounds to 4 digits
    assert validated['concept_recovery'] == pytest.approx(results['concept_recovery'])
    assert results['solver_bound'] >= results['objective'] and not results['solver_cut_by_wall_clock']
    card = (reference / 'export' / 'README.md').read_text()
    assert 'report/global.png' in card and f"| solver_gap | {results['solver_gap']} |" in card
    assert (reference / 'dense/summary.csv').read_text().count('\n') == 4  # header + 3 epochs
    code = ('import timm, torch, qpm_timm; m = timm.create_model("local-dir:%s", pretrained=True).eval();'
            'print(m.is_qpm, tuple(m(torch.randn(1, 3, 40, 40)).shape))' % (reference / 'export'))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=_env())
    assert out.stdout.strip() == 'True (1, 6)', out.stderr[-2000:]


def test_val_interval_skips_validations_but_trains_the_same_model(reference, tmp_path):
    """--val-interval 2 validates epochs 1 and 2 (the last) of the dense stage and the fine-tune's last epoch: the
    same weights as validating every epoch (each epoch draws from its own seed), blank eval columns where skipped."""
    _train('--val-interval', '2', '--no-report', '--output', str(tmp_path), '--experiment', 'run')

    def table(exp):
        with open(exp / 'dense/summary.csv', newline='') as f:
            return [row['eval_top1'] for row in csv.DictReader(f)]
    every, some = table(reference), table(tmp_path / 'run')
    assert some == ['', every[1], every[2]]
    for stage in ('dense', 'finetune'):
        ours = torch.load(tmp_path / 'run' / stage / 'last.pth.tar', weights_only=False)['state_dict']
        theirs = torch.load(reference / stage / 'last.pth.tar', weights_only=False)['state_dict']
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), stage
    results = json.loads((tmp_path / 'run' / 'results.json').read_text())
    best = max((1, 2), key=lambda e: float(every[e]))
    assert (results['dense_top1'], results['dense_best_epoch']) == (float(every[2]), best)


def test_the_dense_models_own_validation_accuracy_is_in_the_results_summary_card_and_report(reference):
    with open(reference / 'dense/summary.csv', newline='') as f:
        top1 = [float(row['eval_top1']) for row in csv.DictReader(f)]
    results = json.loads((reference / 'results.json').read_text())
    best = max(range(len(top1)), key=top1.__getitem__)
    assert (results['dense_top1'], results['dense_best_top1'], results['dense_best_epoch']) == (top1[-1], top1[best],
                                                                                                best)
    printed = (reference.parent / 'stdout.txt').read_text()
    assert (f'validation top-1 {results["top1"]:.2f} % (dense model before the QPM: {top1[-1]:.2f} % at its last '
            f'epoch, best {top1[best]:.2f} % at epoch {best})') in printed
    card = (reference / 'export' / 'README.md').read_text()
    assert (f'Validation top-1: {results["top1"]:.2f} % for the QPM, {top1[-1]:.2f} % for the dense model it was '
            f'made from (last dense epoch; best {top1[best]:.2f} %).') in card
    assert f'| dense_top1 | {top1[-1]} |' in card
    (entry,) = yaml.safe_load(card.split('---')[1])['model-index'][0]['results']  # one dataset and split
    assert '*id' not in card  # the entry spells its dataset out (no YAML alias)
    metrics = entry['metrics']
    assert [m['value'] for m in metrics] == [results['top1'], results['top5'], top1[-1], top1[best]]
    assert ['dense model' in m['name'] for m in metrics] == [False, False, True, True]  # each metric says whose
    report = (reference / 'report' / 'index.html').read_text()
    assert f'of the dense model it was made from: {top1[-1]:.2f} % (last dense epoch; best {top1[best]:.2f} %' in report


def test_a_run_killed_mid_epoch_and_before_the_solve_resumes_to_the_same_assignment(reference, tmp_path):
    exp = tmp_path / 'killed'
    args = ['--output', str(tmp_path), '--experiment', 'killed']
    _kill_when(args, exp / 'dense' / 'checkpoint-0.pth.tar')  # during the second dense epoch
    _kill_when([*args, '--resume'], exp / 'statistics.npz')  # right after the statistics, during the solve
    assert not (exp / 'finetune').exists()
    _train(*args, '--resume')
    assert _solution(exp) == _solution(reference)
    ref, got = (json.loads((e / 'results.json').read_text()) for e in (reference, exp))
    assert got['top1'] == ref['top1'] and got['objective'] == ref['objective']
    # the dense accuracy of a resumed run comes from its dense stage's summary, epochs before the kill included
    assert (got['dense_top1'], got['dense_best_top1']) == (ref['dense_top1'], ref['dense_best_top1'])


def test_torchrun_with_two_processes_gives_the_assignment_of_one_process(reference, tmp_path):
    dense = str(reference / 'dense' / 'last.pth.tar')
    # the solve is compared
    common = ['--skip-dense', '--initial-checkpoint', dense, '--no-report', '--output', str(tmp_path)]
    _train(*common, '--experiment', 'one')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29517',
           str(ROOT / 'train.py'), *TINY, *common, '--experiment', 'two']
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _solution(tmp_path / 'two') == _solution(tmp_path / 'one')


@pytest.mark.parametrize('args, message', [
    (['--n-per-class', '7'], 'n_per_class=7 > n_features=6'),
    (['--dataset', 'cub', '--data-dir', '/nonexistent/cub'], '/nonexistent/cub'),
    (['--model', 'resnet18'], 'not a QPM architecture'),
    (['--skip-dense'], '--skip-dense needs a trained dense model (neither --initial-checkpoint nor --pretrained'),
    (['--dataset-args', '[1, 2]'], 'must be a YAML mapping such as "{images_per_class: 10}"'),
    (['--dataset-args', '{no_such_arg: 1}'], "do not fit the concepts dataset"),
    (['--model-kwargs', '{drop_rate: 0.5}'], "--model-kwargs takes key=value pairs"),
    (['--val-interval', '0'], '--val-interval must be >= 1'),
    (['-c', 'CONFIG:batch_sise: 8'], "unknown keys ['batch_sise']"),
])
def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path, args, message):
    if args[0] == '-c':  # a config file holding the YAML after "CONFIG:"
        config = tmp_path / 'config.yaml'
        config.write_text(args[1].split(':', 1)[1])
        args = ['-c', str(config)]
    code, err = refused('train.py', [*TINY, '--output', tmp_path, *args])
    assert code == 2 and message in err
    assert not any(tmp_path.rglob('*.pth.tar'))


def test_checkpoint_of_another_architecture_and_unwritable_output_are_refused(reference, tmp_path):
    code, err = refused('train.py', [*TINY, '--output', tmp_path, '--backbone', 'resnet18', '--initial-checkpoint',
                                     reference / 'export' / 'model.safetensors'])
    assert code == 2 and 'do not fit' in err
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    code, err = refused('train.py', [*TINY, '--output', blocker])
    assert code == 2 and 'cannot write to the output folder' in err


def test_an_earlier_run_is_never_overwritten_without_resume(reference):
    before = (reference / 'solution.json').read_bytes()
    code, err = refused('train.py', [*TINY, '--output', reference.parent, '--experiment', 'ref'])
    assert code == 2 and '--resume' in err
    assert (reference / 'solution.json').read_bytes() == before


def test_a_schedule_stepped_per_update_and_another_clip_mode_train_like_timm(tmp_path):
    _train('--output', str(tmp_path), '--experiment', 'updates', '--sched', 'cosine', '--sched-on-updates',
           '--clip-grad', '0.5', '--clip-mode', 'agc', '--finetune-epochs', '0')
    rows = (tmp_path / 'updates' / 'dense' / 'summary.csv').read_text().splitlines()[1:]
    lrs = [float(row.split(',')[-1]) for row in rows]
    # cosine over 3 epochs of updates from lr 0.05: after epoch e the last update set 0.025 (1 + cos(pi (e+1) / 3))
    assert lrs[:2] == pytest.approx([0.0375, 0.0125], rel=1e-6)


def test_an_input_size_with_maps_below_2x2_is_refused_before_anything_is_written(tmp_path):
    tree = make_folder_tree(tmp_path / 'digits', classes=4, per_class=1)
    out = tmp_path / 'out'
    out.mkdir()
    code, err = refused('train.py', ['--model', 'qpm', '--backbone', 'test_resnet', '--data-dir', tree, '--img-size',
                                     '4', '--n-features', '4', '--n-per-class', '2', '--workers', '0', '--output', out])
    assert code == 2 and 'feature maps would be 1 x 1' in err and 'smallest size that works is --img-size 33' in err
    assert not any(out.iterdir())


def test_a_size_far_below_the_pretrained_one_warns_and_the_smallest_working_size_passes(caplog):
    model = qpm_timm.create_qpm('test_resnet', num_classes=4, n_features=4, n_per_class=2, head='dense')
    with caplog.at_level(logging.WARNING, logger='train'):
        assert check_input_size(model, (33, 33), pretrained=False) == (2, 2)
        assert check_input_size(model, (96, 96), pretrained=True) == (3, 3)
        assert not caplog.records
        check_input_size(model, (40, 40), pretrained=True)  # test_resnet's weights are trained at 160 px
    assert 'far below the 160 px' in caplog.text
