"""The paper's comparison from one command: QPM, CHiQPM, SLDD-Model, Q-SENN and glm-saga made from one dense model,
one table (docs/METHOD.md, "Baselines"; the README's table is this script's output on the embedded default).

For every seed: one dense model (a finished train.py run's ``dense/last.pth.tar``, ``--runs``; or trained here by
``train.py -c <config> --seed S``), one statistics pass over its un-augmented training images (the QPM statistics and
the baselines' pooled features, :func:`qpm_timm.fit.collect_fit_inputs`), then every method on a copy of it:

    qpm     the solve (qpm_timm.solver) + the run's fine-tune
    chiqpm  the solve with CHiQPM's forced pairs (rho 0.5), the ReLU head and the FGL (weight 3) + the same fine-tune
    sldd    SLDD-Model: group-sparse selection, elastic-net path point, cut to n_wc * C, bias + the same fine-tune
    qsenn   Q-SENN: four rounds of path -> {-a, 0, +a} -> count bias -> fine-tune (e/4, e/4, e/4, e epochs, lr x 0.9^r)
    glm     glm-saga alone on all features, about n_wc per class, no fine-tune

Each row: validation top-1 (and the dense model's), features used, mean nonzero weights per class (measured), SID@k,
Class-Independence, Contrastiveness, Correlation, Structural Grounding (CUB), concept recovery, Plausibility and
feature grounding (datasets with masks: the concepts dataset, CUB), the deletion test (faithfulness: peak-window drop
over random-window drop of a feature's activation), and the seconds of each method's sparsification or solve.
Over seeds: mean +- sample standard deviation. ``--ablation`` adds the QPM objective with Z_A only, Z_A + Z_R and
Z_A + Z_B (all three is the qpm row); ``--tradeoff`` solves and fine-tunes QPMs over a grid of n_f* x n_wc and draws
their top-1 and concept recovery (``--tradeoff-png``).

The embedded default (CPU, the three finished dense runs of ``train.py -c qpm_timm/configs/concepts.yaml``):

    OMP_NUM_THREADS=1 python benchmarks/compare.py --runs RUN_SEED0 RUN_SEED1 RUN_SEED42 --ablation \\
        --results benchmarks/results/compare.txt

``--path-max-epochs`` (default 20 here; the authors' 2000 in train.py and the CUB recipes), ``--qsenn-path-points``
(30; the authors' 100) and ``--finetune-epochs`` keep it within minutes on CPU (docs/METHOD.md, "Baselines: the
comparison"). An ablation row whose solve gives the same selection and assignment as an earlier row is that row's
model (the same head on the same dense model, fine-tuned with the same seeds): its numbers are copied, not recomputed.
Everything each method makes stays in ``--output``: its fitted layer or solution, fine-tune checkpoints, its export
(``timm.create_model("local-dir:<output>/seed<S>/<method>/export", pretrained=True)``) and its metrics, so a rerun
continues where it stopped. ``--tiny`` is a smoke test (one dense epoch at 32 px on 6 classes; numbers meaningless).
"""
import argparse
import copy
import json
import math
import runpy
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qpm_timm import hub  # noqa: E402  (the repository root first)
from qpm_timm.baselines import (  # noqa: E402
    GROUP_SELECTION,
    PooledFeatures,
    SparseLayer,
    fit_glm,
    fit_qsenn_round,
    fit_sldd,
    select_from_features,
)
from qpm_timm.data.loader import create_qpm_loader  # noqa: E402
from qpm_timm.explain.grounding import ExplanationCollector  # noqa: E402
from qpm_timm.fit import (  # noqa: E402
    apply_solution,
    apply_sparse_layer,
    collect_fit_inputs,
    head_features,
    problem_from_statistics,
)
from qpm_timm.metrics import (  # noqa: E402
    class_independence,
    contrastiveness,
    feature_correlation,
    structural_grounding,
)
from qpm_timm.run.args import parse_args_with_config  # noqa: E402
from qpm_timm.run.cli import UsageError, exit_code  # noqa: E402
from qpm_timm.run.data import build_train_data, eval_data_config, resolve_dataset  # noqa: E402
from qpm_timm.run.evaluate import evaluate, recovery_of  # noqa: E402
from qpm_timm.run.methods import method_rounds, path_settings, round_lr_decay  # noqa: E402
from qpm_timm.run.model import create_train_model  # noqa: E402
from qpm_timm.run.training import finetune  # noqa: E402
from qpm_timm.solver import QPMSolution, solve_qpm  # noqa: E402
from qpm_timm.stats import QPMStatistics  # noqa: E402

CONFIG = ROOT / 'qpm_timm' / 'configs' / 'concepts.yaml'
METHODS = ('qpm', 'chiqpm', 'sldd', 'qsenn', 'glm')
TINY_TRAIN = ['--epochs', '1', '--finetune-epochs', '1', '--img-size', '32', '--n-features', '6', '--n-per-class', '2',
              '--solver-effort', '1', '--solver-time-limit', '30', '--no-report', '--workers', '0',
              '--dataset-args', '{num_classes: 6, num_concepts: 6, images_per_class: 8}']


@dataclass(frozen=True)
class Variant:
    """One row: a method, and for QPM which terms of its objective the solve keeps (the ablation)."""
    name: str
    method: str
    locality: bool = True  # Z_B
    redundancy: bool = True  # Z_R


ABLATION = (Variant('qpm: Z_A', 'qpm', locality=False, redundancy=False),
            Variant('qpm: Z_A + Z_R', 'qpm', locality=False),
            Variant('qpm: Z_A + Z_B', 'qpm', redundancy=False))

COLUMNS = (  # (key, header, scale, digits)
    ('top1', 'top-1 %', 1, 2), ('features_used', 'features', 1, 1), ('nonzeros_per_class', 'nonzeros / class', 1, 2),
    ('sid', 'SID@k %', 100, 1), ('class_independence', 'Class-Indep. %', 100, 1),
    ('contrastiveness', 'Contrast. %', 100, 1), ('correlation', 'Correlation %', 100, 1),
    ('structural_grounding', 'Struct. Grounding %', 100, 1), ('concept_recovery', 'recovery', 1, 3),
    ('plausibility', 'Plausibility %', 100, 1), ('feature_grounding', 'feature grounding %', 100, 1),
    ('faithfulness', 'deletion (peak / random)', 1, 2), ('fit_seconds', 'fit s', 1, 1))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', nargs='+', default=None, metavar='DIR',
                   help='train.py experiment folders with a finished dense stage, one per seed (their args.yaml is the '
                        'recipe); default: train one per --seeds with -c')
    p.add_argument('-c', '--config', default=str(CONFIG), help='train.py recipe of the dense runs made here')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 42], help='seeds of the dense runs made here')
    p.add_argument('--methods', default=','.join(METHODS), help=f'comma-separated, of {",".join(METHODS)}')
    p.add_argument('--ablation', action='store_true', help='add the QPM objective\'s ablation rows')
    p.add_argument('--tradeoff', action='store_true', help='solve and fine-tune QPMs over --grid-* instead')
    p.add_argument('--grid-features', type=int, nargs='+', default=[8, 12, 24], metavar='N', help='n_f* of the grid')
    p.add_argument('--grid-per-class', type=int, nargs='+', default=[2, 3, 5], metavar='N', help='n_wc of the grid')
    p.add_argument('--tradeoff-png', default=None, metavar='FILE', help='the trade-off picture (default: in --output)')
    p.add_argument('--path-points', type=int, default=100, help='glm-saga path points k (the authors\': 100)')
    p.add_argument('--qsenn-path-points', type=int, default=30,
                   help='path points of Q-SENN\'s rounds, which walk the whole path to its last (smallest) penalty: '
                        'fewer points reach the same penalty with coarser warm starts (the authors\': 100)')
    p.add_argument('--path-max-epochs', type=int, default=20, help='SAGA epochs per point (the authors\': 2000)')
    p.add_argument('--finetune-epochs', type=int, default=None,
                   help='epochs of every method\'s fine-tune (default: the run\'s; Q-SENN: e/4, e/4, e/4, e)')
    p.add_argument('--faithfulness-images', type=int, default=64, help='images of the deletion test')
    p.add_argument('--img-size', type=int, default=None, help='override the runs\' input size')
    p.add_argument('--data-dir', default=None, help='the dataset of the dense runs made here (with -c)')
    p.add_argument('--output', default=None, help='folder of everything made (default: a temporary folder)')
    p.add_argument('--results', default=None, metavar='FILE', help='also write the table(s) to this file')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: as OMP_NUM_THREADS)')
    p.add_argument('--tiny', action='store_true', help='a tiny dense run per seed (smoke test)')
    p.add_argument('train_args', nargs='*', help='extra train.py arguments of the dense runs made here, after --')
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(',') if m.strip()]
    bad = sorted(set(args.methods) - set(METHODS))
    if bad:
        raise UsageError(f'--methods: unknown {bad}; choose from {",".join(METHODS)}.')
    return args


def _train_flags():
    """train.py's parser (the flags every recipe and args.yaml are made of)."""
    return runpy.run_path(str(ROOT / 'train.py'), run_name='train_flags')['parser']


def _script(name: str, argv: List[str]) -> None:
    """``python <name> argv`` in this process; a non-zero exit is an error."""
    saved = sys.argv
    sys.argv = [str(ROOT / name), *argv]
    try:
        runpy.run_path(str(ROOT / name), run_name='__main__')
    except SystemExit as e:
        if e.code not in (None, 0):
            raise RuntimeError(f'{name} {" ".join(argv)} exited with {e.code}') from None
    finally:
        sys.argv = saved


def dense_runs(args, out: Path) -> List[Path]:
    """The dense runs: ``--runs``, or one ``train.py -c <config> --seed S`` per seed (reused when finished)."""
    if args.runs:
        return [Path(r) for r in args.runs]
    runs = []
    for seed in args.seeds:
        run = out / 'runs' / f'seed{seed}'
        if not (run / 'results.json').is_file():
            extra = TINY_TRAIN if args.tiny else ['--no-report']
            _script('train.py', ['-c', args.config, '--seed', str(seed), '--output', str(out / 'runs'),
                                 '--experiment', f'seed{seed}', '--no-progress',
                                 *(['--data-dir', args.data_dir] if args.data_dir else []), *extra, *args.train_args])
        runs.append(run)
    return runs


def run_args(run: Path, args) -> argparse.Namespace:
    """The run's own arguments (its args.yaml through train.py's parser), with this script's overrides."""
    if not (run / 'args.yaml').is_file():
        raise UsageError(f'{run} is not a train.py experiment folder (no args.yaml).')
    if not (run / 'dense' / 'last.pth.tar').is_file():
        raise UsageError(f'{run} has no dense checkpoint (dense/last.pth.tar): rerun its dense stage (train.py with '
                         f'its args.yaml, --resume) before comparing.')
    overrides = ['--path-points', str(args.path_points), '--path-max-epochs', str(args.path_max_epochs),
                 '--no-progress', '--workers', '0']
    if args.img_size:
        overrides += ['--img-size', str(args.img_size)]
    if args.finetune_epochs is not None:
        overrides += ['--finetune-epochs', str(args.finetune_epochs)]
    ra, _ = parse_args_with_config(_train_flags(), ['-c', str(run / 'args.yaml'), *overrides])
    ra.rank, ra.distributed, ra.world_size = 0, False, 1
    ra.finetune_rounds, ra.finetune_round_lr_decay = None, None  # every method's own schedule (method_rounds)
    ra.rho, ra.pairs, ra.idealize, ra.relu_head, ra.fgl_weight = 0.0, None, False, False, 0.0
    resolve_dataset(ra)
    return ra


# --- one seed --------------------------------------------------------------------------------------------------
class Seed:
    """The shared dense model, data and statistics pass of one run, and every method made from them."""

    def __init__(self, run: Path, args, out: Path):
        self.run, self.args, self.out = run, args, out
        self.ra = run_args(run, args)
        self.device = torch.device(self.ra.device)
        self.data_config = eval_data_config(self.ra)
        train_set, self.train_eval, self.val_set, self.class_names = build_train_data(self.ra, self.data_config)
        self.num_classes = len(self.class_names)
        dense = create_train_model(self.ra, self.num_classes, self.data_config['input_size'][-1])
        dense.load_state_dict(hub.read_weights(str(run / 'dense' / 'last.pth.tar')))
        self.dense = dense.to(self.device)
        if self.ra.channels_last:
            self.dense.to(memory_format=torch.channels_last)
        vb = self.ra.validation_batch_size or self.ra.batch_size
        self.loaders = (create_qpm_loader(train_set, self.ra.batch_size, True, 0),
                        create_qpm_loader(self.val_set, vb))
        self.stats_loader = create_qpm_loader(self.train_eval, vb)
        out.mkdir(parents=True, exist_ok=True)
        self.statistics, self.features = self._fit_inputs()

    def _fit_inputs(self):
        """The one statistics pass every method is fitted on (read back on a rerun)."""
        stats_file, features_file = self.out / 'statistics.npz', self.out / 'features.npz'
        if stats_file.is_file() and features_file.is_file():
            return QPMStatistics.load(stats_file), PooledFeatures.load(features_file)
        statistics, features = collect_fit_inputs(self.dense, self.stats_loader, self.device, self.ra.amp)
        statistics.save(stats_file)
        features.save(features_file)
        return statistics, features

    def method_args(self, method: str) -> argparse.Namespace:
        ra = copy.copy(self.ra)
        ra.method = method
        if method == 'chiqpm':  # docs/METHOD.md, "CHiQPM": pairs, ReLU head, FGL
            ra.rho, ra.relu_head, ra.fgl_weight = 0.5, True, 3.0
        return ra

    def _finetune(self, model, ra, folder: Path, rounds: Sequence[int], refit=None) -> None:
        for r, epochs in enumerate(rounds):
            if refit is not None and r > 0:
                refit(r)
            if epochs > 0:
                finetune(model, self.loaders, ra, self.device, folder / f'finetune{r + 1}', epochs,
                         ra.finetune_lr * round_lr_decay(ra) ** r)

    def make(self, variant: Variant, n_features: Optional[int] = None, n_per_class: Optional[int] = None):
        """A copy of the dense model with ``variant``'s head, fine-tuned; returns (model, fit seconds)."""
        folder = self.out / folder_name(variant.name)
        folder.mkdir(parents=True, exist_ok=True)
        ra = self.method_args(variant.method)
        n_f, n_wc = n_features or ra.n_features, n_per_class or ra.n_per_class
        model = copy.deepcopy(self.dense)
        model.n_features, model.n_per_class = n_f, n_wc
        rounds = method_rounds(ra)
        refit = None
        if variant.method in ('qpm', 'chiqpm'):
            seconds = self._solve(model, ra, variant, folder, n_f, n_wc)
        elif variant.method == 'qsenn':
            layers = [self._qsenn_layer(model, ra, folder, 0, None, n_f, n_wc)]

            def refit(r: int) -> None:
                layers.append(self._qsenn_layer(model, ra, folder, r, layers[0].channels, n_f, n_wc))
            seconds = None
        else:
            layer = self._layer(folder / 'layer.npz', lambda: fit_sldd(
                self.features, self.num_classes, n_f, n_wc, ra.seed, path_settings(ra, GROUP_SELECTION),
                path_settings(ra)) if variant.method == 'sldd' else fit_glm(
                self.features, self.num_classes, n_wc, ra.seed, path_settings(ra)))
            apply_sparse_layer(model, layer)
            seconds = layer.info['seconds']
        self._finetune(model, ra, folder, rounds, refit)
        if variant.method == 'qsenn':
            seconds = sum(layer.info['seconds'] for layer in layers)
        return model.eval(), seconds

    @staticmethod
    def _layer(path: Path, fit) -> SparseLayer:
        if path.is_file():
            return SparseLayer.load(path)
        layer = fit()
        layer.save(path)
        return layer

    def _qsenn_layer(self, model, ra, folder: Path, r: int, channels, n_f: int, n_wc: int) -> SparseLayer:
        def fit() -> SparseLayer:
            start = time.perf_counter()
            if r == 0:
                chosen, _ = select_from_features(self.features, self.num_classes, n_f, ra.seed,
                                                 path_settings(ra, GROUP_SELECTION))
                feats, selection = self.features.restricted(chosen), time.perf_counter() - start
            else:
                chosen, feats, selection = channels, head_features(model, self.stats_loader, self.device, ra.amp), 0.0
            layer = fit_qsenn_round(feats, chosen, self.num_classes, n_wc, ra.seed,
                                    path_settings(ra).replace(k=self.args.qsenn_path_points), r)
            layer.info['seconds'] += selection
            return layer
        layer = self._layer(folder / f'layer_round{r + 1}.npz', fit)
        apply_sparse_layer(model, layer)
        return layer

    def _solve(self, model, ra, variant: Variant, folder: Path, n_f: int, n_wc: int) -> float:
        solution = self.solution(ra, variant, folder, n_f, n_wc)
        model.relu_after_norm = ra.relu_head
        apply_solution(model, self.statistics, solution, self.channels)
        return solution.wall_time

    def solution(self, ra, variant: Variant, folder: Path, n_f: int, n_wc: int) -> QPMSolution:
        """The variant's solve (read back on a rerun)."""
        problem, self.channels = problem_from_statistics(self.statistics, n_f, n_wc, locality=variant.locality,
                                                         rho=ra.rho, redundancy=variant.redundancy)
        path = folder / 'solution.json'
        if path.is_file():
            return QPMSolution.load(path, problem)
        solution = solve_qpm(problem, effort=ra.solver_effort, time_limit=ra.solver_time_limit, seed=ra.seed)
        solution.save(path)
        return solution

    def measure(self, model, seconds: Optional[float], full: bool = True) -> Dict[str, float]:
        """The row of one model (module docstring); ``full=False``: top-1 and recovery only (the trade-off)."""
        weights = model.class_weights.detach().float().cpu()
        compact = model.is_qpm
        k = min(5, self.ra.n_per_class)
        run = dict(device=self.device, amp=self.ra.amp, channels_last=self.ra.channels_last)
        collector = ExplanationCollector(model, self.val_set, faithfulness=compact,
                                         max_images=self.args.faithfulness_images) if full else None
        val = evaluate(model, self.loaders[1], sid_k=k if full else None, keep_features=True,
                       observers=[collector] if collector else (), **run)
        row = dict(top1=val.top1, features_used=int((weights != 0).any(0).sum()),
                   nonzeros_per_class=float((weights != 0).sum(1).float().mean()))
        recovery = recovery_of(model, val, self.val_set)
        if recovery is not None:
            row['concept_recovery'] = recovery.score
        if seconds is not None:
            row['fit_seconds'] = seconds
        if not full:
            return row
        train = evaluate(model, self.stats_loader, keep_features=True, **run)
        norm = dict(mean=model.head.mean.detach().cpu(), std=model.head.std.detach().cpu()) if compact else {}
        row.update(sid=val.sid, class_independence=class_independence(train.pooled, train.labels.numpy(),
                                                                      self.num_classes),
                   contrastiveness=contrastiveness(train.pooled), correlation=feature_correlation(train.pooled, **norm))
        attributes = getattr(self.val_set, 'class_attributes', None)
        if attributes is not None:
            c = weights.shape[0]
            row['structural_grounding'] = structural_grounding(weights, attributes, top=min(50, c * (c - 1)))
        row.update(collector.result().summary())
        return row

    def export(self, model, name: str) -> None:
        hub.save_pretrained(model, self.out / name / 'export', label_names=self.class_names,
                            data_config=self.data_config)


def folder_name(name: str) -> str:
    """A row's folder: ``qpm: Z_A + Z_R`` -> ``qpm-Z_A+Z_R``."""
    return name.replace(': ', '-').replace(' + ', '+').replace(' ', '-')


def _cached_row(path: Path, make) -> Dict[str, float]:
    if path.is_file():
        return json.loads(path.read_text())
    row = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def compare_seed(seed: Seed, variants: Sequence[Variant]) -> Dict[str, Dict[str, float]]:
    """Every row of one seed, the dense model's first."""
    rows = {'dense': _cached_row(seed.out / 'dense' / 'metrics.json', lambda: seed.measure(seed.dense.eval(), None))}
    made = {}  # (method, selection, assignment) of every QPM row so far -> its name
    for v in variants:
        folder = seed.out / folder_name(v.name)
        twin = None
        if v.method in ('qpm', 'chiqpm'):  # an ablation whose solve equals an earlier row's makes the same model
            folder.mkdir(parents=True, exist_ok=True)
            ra = seed.method_args(v.method)
            solution = seed.solution(ra, v, folder, ra.n_features, ra.n_per_class)
            key = (v.method, solution.selected.tobytes(), solution.assignment.tobytes())
            twin = made.get(key)
            made.setdefault(key, v.name)

        def make(v=v, folder=folder, twin=twin):
            start = time.perf_counter()
            if twin is not None:  # the same head on the same dense model, fine-tuned with the same seeds
                seconds = QPMSolution.load(folder / 'solution.json').wall_time
                shutil.copytree(seed.out / folder_name(twin) / 'export', folder / 'export', dirs_exist_ok=True)
                return dict(rows[twin], fit_seconds=seconds, same_model_as=twin,
                            wall_seconds=time.perf_counter() - start)
            model, seconds = seed.make(v)
            seed.export(model, folder.name)
            row = seed.measure(model, seconds)
            row['wall_seconds'] = time.perf_counter() - start
            return row
        rows[v.name] = _cached_row(folder / 'metrics.json', make)
        print(f'  {v.name}: ' + ', '.join(f'{k} {val:.4g}' if isinstance(val, (int, float)) else f'{k} {val}'
                                         for k, val in rows[v.name].items()), flush=True)
    return rows


# --- the tables ------------------------------------------------------------------------------------------------
def _cell(values: List[float], scale: float, digits: int) -> str:
    values = [v * scale for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return '–'
    mean = statistics.mean(values)
    return f'{mean:.{digits}f}' if len(values) == 1 else f'{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}'


def table(rows_by_seed: List[Dict[str, Dict[str, float]]], names: Sequence[str]) -> str:
    """The paper's form: a row per method, mean +- std over seeds; columns no row has are left out."""
    cols = [c for c in COLUMNS if any(c[0] in rows.get(n, {}) for rows in rows_by_seed for n in names)]
    lines = ['| method | ' + ' | '.join(c[1] for c in cols) + ' |', '|---|' + '---|' * len(cols)]
    for n in names:
        cells = [_cell([rows[n].get(key) for rows in rows_by_seed if n in rows], scale, digits)
                 for key, _, scale, digits in cols]
        lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def tradeoff(seeds: List[Seed], args, out: Path) -> str:
    """QPMs over the grid n_f* x n_wc: top-1 and recovery per point (mean over seeds), and the picture."""
    grid = {}
    for nf in args.grid_features:
        for nwc in args.grid_per_class:
            if nwc > nf or seeds[0].num_classes > math.comb(nf, nwc) or nf > seeds[0].dense.num_features:
                continue  # no QPM of these sizes (docs/METHOD.md, "The optimisation problem")
            rows = []
            for s in seeds:
                v = Variant(f'grid nf{nf} nwc{nwc}', 'qpm')

                def make(v=v, s=s, nf=nf, nwc=nwc):
                    model, seconds = s.make(v, nf, nwc)
                    return s.measure(model, seconds, full=False)
                rows.append(_cached_row(s.out / folder_name(v.name) / 'metrics.json', make))
            grid[(nf, nwc)] = rows
    lines = ['| n_f* | n_wc | top-1 % | recovery |', '|---|---|---|---|']
    for (nf, nwc), rows in grid.items():
        lines.append(f'| {nf} | {nwc} | {_cell([r["top1"] for r in rows], 1, 2)} | '
                     f'{_cell([r.get("concept_recovery") for r in rows], 1, 3)} |')
    png = Path(args.tradeoff_png) if args.tradeoff_png else out / 'tradeoff.png'
    draw_tradeoff(grid, png)
    return '\n'.join(lines) + f'\n\npicture: {png}'


def draw_tradeoff(grid: Dict, png: Path) -> None:
    """Top-1 and recovery against n_f*, a line per n_wc, error bars over seeds."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.6), layout='constrained')
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], 'top1', 'validation top-1 %'), (axes[1], 'concept_recovery', 'concept recovery')):
        for nwc in sorted({k[1] for k in grid}):
            pts = sorted((nf, [r.get(key) for r in rows]) for (nf, w), rows in grid.items() if w == nwc)
            pts = [(nf, [v for v in vals if v is not None]) for nf, vals in pts]
            pts = [(nf, vals) for nf, vals in pts if vals]
            if not pts:
                continue
            xs = [nf for nf, _ in pts]
            means = [float(np.mean(v)) for _, v in pts]
            errs = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for _, v in pts]
            ax.errorbar(xs, means, yerr=errs, marker='o', capsize=3, label=f'n_wc = {nwc}')
        ax.set_xlabel('n_f* (features kept)')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle('QPM: accuracy and concept recovery over n_f* x n_wc (mean ± std over seeds)', fontsize=10)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def hardware() -> str:
    import platform
    model = ''
    try:
        model = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if 'model name' in line)
    except (OSError, StopIteration):
        pass
    return f'{model or platform.processor()}, {torch.get_num_threads()} torch thread(s)'


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output or tempfile.mkdtemp(prefix='compare_'))
    start = time.perf_counter()
    runs = dense_runs(args, out)
    variants = [Variant(m, m) for m in args.methods] + (list(ABLATION) if args.ablation else [])
    rows_by_seed, seeds = [], []
    for run in runs:
        print(f'{run}:', flush=True)
        seed = Seed(run, args, out / (f'{run.resolve().parent.name}-{run.name}' if args.runs else run.name))
        seeds.append(seed)
        if not args.tradeoff:
            rows_by_seed.append(compare_seed(seed, variants))
    dense_line = ''
    if args.tradeoff:
        text = tradeoff(seeds, args, out)
    else:
        names = ['dense'] + [v.name for v in variants]
        text = table(rows_by_seed, names)
        dense_line = '\n'.join(f'{run}: {json.dumps({k: round(v, 4) for k, v in rows["dense"].items()})}'
                               for run, rows in zip(runs, rows_by_seed))
    header = (f'# python benchmarks/compare.py {" ".join(sys.argv[1:] if argv is None else argv)}\n'
              f'# {hardware()}; {len(runs)} dense run(s); mean ± sample std over them; wall '
              f'{time.perf_counter() - start:.0f} s')
    print(header)
    print(text)
    if args.results:
        Path(args.results).write_text(header + '\n' + text + '\n' + (f'\ndense rows per run:\n{dense_line}\n'
                                                                     if dense_line else ''))


if __name__ == '__main__':
    sys.exit(exit_code(main))
