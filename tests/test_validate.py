"""validate.py: timm's result fields, the QPM metrics wired to the right splits and features, and bad input.

A tiny ResNet-18 QPM (6 classes, 8 features, 2 per class) with a hand-set QPM head is exported with
``qpm_timm.hub.save_pretrained`` and validated on a small generated concepts dataset.
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import qpm_timm
from helpers.scripts import ROOT, read_results, run_script
from qpm_timm import hub, metrics
from qpm_timm.data import create_qpm_dataset, create_qpm_loader, create_qpm_transform, qpm_data_config
from qpm_timm.data.masks import dataset_masks as masks
from qpm_timm.explain.grounding import ExplanationCollector
from qpm_timm.forward import forward_pass
from qpm_timm.models.head import placeholder_assignment

NUM_CLASSES, N_FEATURES, N_PER_CLASS, IMG = 6, 8, 2, 48
DATA_ARGS = {'images_per_class': 3, 'num_classes': NUM_CLASSES, 'img_size': IMG}
DATA = ['--dataset-args', json.dumps(DATA_ARGS), '--img-size', str(IMG), '--workers', '0', '-b', '16']
# timm's fields, then the precision the run resolved (qpm_timm/precision.py)
TIMM_FIELDS = ['model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct', 'interpolation',
               'precision']
BASE_FIELDS = [f'sid@{N_PER_CLASS}', 'class_independence', 'contrastiveness', 'feature_correlation']
QPM_FIELDS = BASE_FIELDS + ['concept_recovery', 'plausibility', 'feature_grounding']
NOT_QPM = 'is not a QPM (solve and fine-tune it with train.py first)'


def _qpm_model(backbone: str = 'resnet18') -> qpm_timm.QPMModel:
    torch.manual_seed(0)
    model = qpm_timm.create_qpm(backbone, num_classes=NUM_CLASSES, n_features=N_FEATURES, n_per_class=N_PER_CLASS,
                                head='dense')
    # Channels 0, 9, 18, ...; a valid assignment; a mean/std far from 0/1 so the correlation sees them.
    model.set_qpm_head(torch.arange(N_FEATURES) * 9, placeholder_assignment(NUM_CLASSES, N_FEATURES, N_PER_CLASS),
                       torch.linspace(0.1, 0.8, N_FEATURES), torch.linspace(0.2, 2.0, N_FEATURES))
    return model.eval()


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """QPM and dense exports (local-dir folders) and the QPM's weights as a timm checkpoint."""
    root = tmp_path_factory.mktemp('validate')
    model = _qpm_model()
    hub.save_pretrained(model, root / 'qpm', data_config=qpm_data_config('concepts', IMG))  # as train.py exports
    torch.save({'epoch': 3, 'state_dict': model.state_dict()}, root / 'qpm.pth.tar')
    dense = qpm_timm.create_qpm('resnet18', num_classes=NUM_CLASSES, n_features=N_FEATURES, n_per_class=N_PER_CLASS,
                                head='dense')
    hub.save_pretrained(dense, root / 'dense', data_config=qpm_data_config('concepts', IMG))
    return root


def _validate(argv, results_file: Path) -> dict:
    """``python validate.py argv --results-file results_file``: must succeed; its results."""
    assert run_script('validate.py', [*argv, '--results-file', results_file]) == 0
    return read_results(results_file)


@pytest.fixture(scope='module')
def local_dir_run(exported):
    """One validation of the exported QPM through ``local-dir:`` with a json results file."""
    out = exported / 'results.json'
    return _validate(['--model', f'local-dir:{exported / "qpm"}', '--pretrained', *DATA], out), out


def _direct_features(model, split: str):
    """Logits, feature maps, pooled features and labels of a whole concepts split, computed here."""
    transform = create_qpm_transform('concepts', is_training=False, img_size=IMG)
    dataset = create_qpm_dataset('concepts', split=split, transform=transform, **DATA_ARGS)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        out = model.forward_with_features(x)
    return out, np.asarray(dataset.targets), dataset


def test_local_dir_qpm_reports_timms_fields_for_the_exported_model_and_config(local_dir_run):
    results, _ = local_dir_run
    for top in ('top1', 'top5'):
        assert results[top] + results[f'{top}_err'] == pytest.approx(100)
    assert results['top5'] >= results['top1']
    assert results['param_count'] == pytest.approx(sum(p.numel() for p in _qpm_model().parameters()) / 1e6, abs=0.01)
    assert (results['img_size'], results['crop_pct'], results['interpolation']) == (IMG, 1.0, 'bilinear')


def test_metrics_equal_direct_calls_on_the_same_features_and_splits(local_dir_run, exported):
    results, _ = local_dir_run
    model = timm.create_model(f'local-dir:{exported / "qpm"}', pretrained=True).eval()
    val, val_labels, val_set = _direct_features(model, 'val')
    train, train_labels, _ = _direct_features(model, 'train')
    weights = model.class_weights
    top1 = 100 * (val.logits.argmax(1).numpy() == val_labels).mean()
    assert results['top1'] == pytest.approx(top1, abs=1e-3)
    sid = torch.nanmean(metrics.sid_at_k(val.feature_maps, weights, val.logits.argmax(1), k=N_PER_CLASS)).item()
    grid = val.feature_maps.shape[-2:]
    expected = {
        f'sid@{N_PER_CLASS}': sid,
        'class_independence': metrics.class_independence(train.pooled, train_labels, NUM_CLASSES),
        'contrastiveness': metrics.contrastiveness(train.pooled),
        'feature_correlation': metrics.feature_correlation(train.pooled, model.head.mean, model.head.std),
        'concept_recovery': metrics.concept_recovery(val.pooled, val_set.concept_presence, weights,
                                                     val_set.class_concepts).score,
        'plausibility': metrics.plausibility(val.feature_maps, weights, val.logits.argmax(1),
                                             masks(val_set, range(len(val_set)), grid, 'object')).mean().item(),
        'feature_grounding': np.nanmean(metrics.feature_grounding(
            *metrics.grounding_sums(val.feature_maps, masks(val_set, range(len(val_set)), grid, 'concept')),
            metrics.match_features(val.pooled, val_set.concept_presence)[0])[0]),
    }
    for name, value in expected.items():
        assert results[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    # The wiring matters: the training split and the head's normalisation change these values.
    assert expected['class_independence'] != pytest.approx(
        metrics.class_independence(val.pooled, val_labels, NUM_CLASSES), abs=1e-6)
    assert expected['feature_correlation'] != pytest.approx(metrics.feature_correlation(train.pooled), abs=1e-6)


def test_json_results_file_lists_timms_fields_then_the_qpm_metrics(local_dir_run, exported):
    results, path = local_dir_run
    assert list(results) == TIMM_FIELDS + QPM_FIELDS
    assert results['model'] == f'local-dir:{exported / "qpm"}' and results['top1_err'] == 100 - results['top1']


def test_safetensors_checkpoint_into_qpm_backbone_gives_the_local_dir_results_as_csv(exported, local_dir_run):
    # --model qpm takes n_features / n_per_class from the checkpoint's head; results as csv.
    out = exported / 'results.csv'
    results = _validate(['--model', 'qpm', '--backbone', 'resnet18', '--checkpoint',
                         str(exported / 'qpm' / 'model.safetensors'), *DATA], out)
    expected, _ = local_dir_run
    for name in TIMM_FIELDS[1:] + QPM_FIELDS:
        assert results[name] == (pytest.approx(expected[name]) if isinstance(expected[name], float)
                                 else expected[name]), name
    with open(out, newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and list(rows[0]) == TIMM_FIELDS + QPM_FIELDS
    assert float(rows[0]['top1']) == results['top1']
    assert float(rows[0]['concept_recovery']) == pytest.approx(results['concept_recovery'])


def test_timm_checkpoint_file_loads_the_same_weights(exported, local_dir_run):
    results = _validate(['--model', 'qpm', '--backbone', 'resnet18', '--checkpoint',
                         str(exported / 'qpm.pth.tar'), '--no-interpretability', *DATA], exported / 'timm.json')
    expected, _ = local_dir_run
    assert list(results) == TIMM_FIELDS
    assert (results['top1'], results['top5']) == (expected['top1'], expected['top5'])


def test_sid_is_one_over_k_when_the_feature_maps_have_a_single_location(exported):
    # 32 px into a ResNet-18 (stride 32) gives 1 x 1 maps: every softmaxed map is 1 there, so SID@k = 1/k
    # exactly, in bfloat16 autocast and channels-last too.
    small = json.dumps(dict(DATA_ARGS, images_per_class=2))
    results = _validate(['--model', f'local-dir:{exported / "qpm"}', '--pretrained', '--amp', '--channels-last',
                         '--dataset-args', small, '--img-size', '32', '--workers', '0'], exported / 'sid.json')
    assert list(results) == TIMM_FIELDS + QPM_FIELDS and results['img_size'] == 32
    assert results[f'sid@{N_PER_CLASS}'] == pytest.approx(1 / N_PER_CLASS, abs=1e-6)


def _fake_cub(root: Path, class_attributes: np.ndarray) -> Path:
    """A CUB_200_2011 folder in the official layout: 2 train and 1 test image per class, full-image boxes."""
    folder = root / 'CUB_200_2011'
    rng = np.random.default_rng(0)
    classes, images, labels, split, boxes = [], [], [], [], []
    image_id = 0
    for c in range(len(class_attributes)):
        name = f'{c + 1:03d}.Bird_{c}'
        classes.append(f'{c + 1} {name}')
        (folder / 'images' / name).mkdir(parents=True)
        for i in range(3):
            image_id += 1
            image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
            image.save(folder / 'images' / name / f'{i}.png')
            images.append(f'{image_id} {name}/{i}.png')
            labels.append(f'{image_id} {c + 1}')
            split.append(f'{image_id} {int(i < 2)}')
            boxes.append(f'{image_id} 0 0 40 40')
    for filename, rows in (('classes.txt', classes), ('images.txt', images), ('image_class_labels.txt', labels),
                           ('train_test_split.txt', split), ('bounding_boxes.txt', boxes)):
        (folder / filename).write_text('\n'.join(rows) + '\n')
    (folder / 'attributes').mkdir()
    np.savetxt(folder / 'attributes' / 'class_attribute_labels_continuous.txt', class_attributes)
    return root


def test_structural_grounding_on_cub_is_one_when_the_attributes_are_the_assignment(exported):
    # Structural Grounding compares the class similarities of W with those of the attribute matrix: equal
    # matrices give exactly 1. The concepts-only concept recovery is absent.
    weights = placeholder_assignment(NUM_CLASSES, N_FEATURES, N_PER_CLASS).numpy()
    root = _fake_cub(exported / 'cub', 100 * weights)
    results = _validate(['--model', f'local-dir:{exported / "qpm"}', '--pretrained', '--dataset', 'cub',
                         '--data-dir', str(root), '--img-size', '32', '--workers', '0'], exported / 'cub.json')
    assert list(results) == TIMM_FIELDS + BASE_FIELDS + ['structural_grounding']
    assert results['structural_grounding'] == pytest.approx(1.0, abs=1e-9)


def test_plausibility_on_cub_reads_the_segmentations_folder(exported):
    # CUB's segmentations/<class folder>/<image>.png: a bird covering the whole image holds all of the evidence
    # (plausibility 1); a bird in one corner of a 4 x 4 grid, grown by the 3 x 3 dilation, holds what lies there.
    weights = placeholder_assignment(NUM_CLASSES, N_FEATURES, N_PER_CLASS).numpy()
    root = _fake_cub(exported / 'cub_seg', 100 * weights)
    folder = root / 'CUB_200_2011'
    for line in (folder / 'images.txt').read_text().split('\n'):
        if line:
            seg = root / 'segmentations' / line.split()[1]
            seg.parent.mkdir(parents=True, exist_ok=True)
            Image.new('L', (40, 40), 255).save(seg)
    argv = ['--model', f'local-dir:{exported / "qpm"}', '--pretrained', '--dataset', 'cub', '--data-dir', str(root),
            '--img-size', '128', '--workers', '0',
            '--dataset-args', json.dumps({'segmentations': str(root / 'segmentations')})]
    results = _validate(argv, exported / 'cub_seg.json')
    assert list(results) == TIMM_FIELDS + BASE_FIELDS + ['structural_grounding', 'plausibility']
    assert results['plausibility'] == pytest.approx(1.0)
    assert run_script('validate.py', argv[:-1] + [json.dumps({'segmentations': str(root / 'missing')})]) == 2


def test_faithfulness_is_computed_on_request_on_the_chosen_images(exported, local_dir_run):
    # 48 px into a ResNet-18 gives 2 x 2 maps, smaller than the 3 x 3 window: the peak and the random window are
    # both the whole grid, so every drop ratio is exactly 1. The other metrics do not change; the deletion numbers
    # equal the collector's on the same images.
    results = _validate(['--model', f'local-dir:{exported / "qpm"}', '--pretrained', *DATA, '--faithfulness',
                         '--faithfulness-images', '4'], exported / 'faithful.json')
    assert list(results) == TIMM_FIELDS + QPM_FIELDS + ['faithfulness', 'faithfulness_logit']
    expected, _ = local_dir_run
    assert all(results[k] == pytest.approx(expected[k]) for k in QPM_FIELDS)
    model = timm.create_model(f'local-dir:{exported / "qpm"}', pretrained=True).eval()
    transform = create_qpm_transform('concepts', is_training=False, img_size=IMG)
    dataset = create_qpm_dataset('concepts', split='val', transform=transform, **DATA_ARGS)
    collector = ExplanationCollector(model, dataset, faithfulness=True, max_images=4)
    forward_pass(model, create_qpm_loader(dataset, 16), [collector])
    deletion = collector.result().deletion
    assert deletion.images.sum() == 4 * N_PER_CLASS
    for name, ratios in (('faithfulness', deletion.activation_ratio), ('faithfulness_logit', deletion.logit_ratio)):
        assert results[name] == pytest.approx(np.nanmean(ratios), nan_ok=True)
        assert np.allclose(ratios[np.isfinite(ratios)], 1.0, atol=1e-4)
    assert run_script('validate.py', ['--model', f'local-dir:{exported / "qpm"}', '--pretrained', *DATA,
                                      '--faithfulness-images', '0']) == 2


def test_dense_model_is_refused_with_exit_2_unless_no_interpretability(exported, capsys):
    old = exported / 'old.json'
    old.write_text('{"top1": 99.0}')
    code = run_script('validate.py', ['--model', f'local-dir:{exported / "dense"}', '--pretrained', *DATA,
                         '--results-file', str(old)])
    assert code == 2
    assert NOT_QPM in capsys.readouterr().err
    assert old.read_text() == '{"top1": 99.0}'

    results = _validate(['--model', f'local-dir:{exported / "dense"}', '--pretrained', '--no-interpretability',
                         *DATA], old)
    assert list(results) == TIMM_FIELDS and results['model'] == f'local-dir:{exported / "dense"}'


def _bad_inputs(root: Path):
    qpm = ['--model', f'local-dir:{root / "qpm"}', '--pretrained']
    return {
        'missing data folder': (qpm + ['--dataset', 'cub', '--data-dir', str(root / 'no_such_folder')],
                                'does not exist'),
        'checkpoint of another architecture': (
            ['--model', 'qpm', '--backbone', 'resnet10t', '--checkpoint', str(root / 'qpm' / 'model.safetensors')],
            'do not fit a resnet10t QPM'),
        'checkpoint of another class count': (
            ['--model', 'qpm', '--backbone', 'resnet18', '--num-classes', '7',
             '--checkpoint', str(root / 'qpm.pth.tar')], 'checkpoint has 6 classes'),
        'n_per_class above n_features': (['--model', 'qpm', '--backbone', 'resnet18', '--n-features', '2',
                                          '--n-per-class', '3'], 'n_per_class=3 > n_features=2'),
        'missing checkpoint': (qpm + ['--checkpoint', str(root / 'missing.safetensors')], 'does not exist'),
        'plain timm model with QPM flags': (['--model', 'resnet18', '--n-features', '8'], 'apply to QPM models only'),
    }


@pytest.mark.parametrize('case', list(_bad_inputs(Path('.'))))
def test_bad_input_exits_2_with_a_message_and_keeps_the_results_file(exported, capsys, case):
    argv, message = _bad_inputs(exported)[case]
    old = exported / 'kept.csv'
    old.write_text('model,top1\nearlier,50.0\n')
    code = run_script('validate.py', argv + DATA + ['--results-file', str(old)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert old.read_text() == 'model,top1\nearlier,50.0\n'


def test_unwritable_results_location_exits_2_before_any_work(exported, capsys):
    blocker = exported / 'a_file'
    blocker.write_text('x')
    code = run_script('validate.py', ['--model', f'local-dir:{exported / "qpm"}', '--pretrained', *DATA,
                         '--results-file', str(blocker / 'results.csv')])
    assert code == 2
    assert 'cannot write --results-file' in capsys.readouterr().err
    assert blocker.read_text() == 'x' and not list(exported.glob('.validate.*'))


def test_script_refuses_a_plain_timm_model_with_exit_2_and_keeps_the_results_file(exported):
    old = exported / 'script.csv'
    old.write_text('model,top1\nearlier,50.0\n')
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'validate.py'), '--model', 'resnet18', *DATA, '--results-file', str(old)],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert NOT_QPM in proc.stderr and '--no-interpretability' in proc.stderr
    assert old.read_text() == 'model,top1\nearlier,50.0\n'
