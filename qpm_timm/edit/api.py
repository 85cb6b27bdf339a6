"""The edit API of :mod:`qpm_timm.edit` (its docstring): constraints, the edited model, reading a run, exporting."""
import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import yaml

from .. import hub
from ..explain import feature_names
from ..explain.contrastive import resolve_class
from ..fit import apply_solution, problem_from_statistics
from ..models import QPMModel
from ..solver import DEFAULT_TIME_LIMIT, QPMSolution
from ..solver.edit import EDIT_EFFORT, EditImpossible, solve_edit
from ..stats import QPMStatistics

__all__ = ['Edit', 'EditChanges', 'EditResult', 'EditImpossible', 'EDIT_EFFORT', 'edit_from_features', 'edit_model',
           'kept_pairs', 'solve_edit', 'EditSource', 'read_source', 'resolve_feature', 'parse_edit', 'result_labels',
           'export_edit']

@dataclass(frozen=True)
class Edit:
    """Constraints on the class -> feature table, in backbone channels (docs/METHOD.md, "Editing").

    ``forbid_channels``: no class may use these channels (they leave the selection); ``forbid_pairs``:
    ``(class, channel)``, that class may not use that channel; ``require_pairs``: ``(class, channel)``, the channel
    is kept and that class uses it."""
    forbid_channels: Tuple[int, ...] = ()
    forbid_pairs: Tuple[Tuple[int, int], ...] = ()
    require_pairs: Tuple[Tuple[int, int], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, 'forbid_channels', tuple(sorted({int(c) for c in self.forbid_channels})))
        for name in ('forbid_pairs', 'require_pairs'):
            object.__setattr__(self, name, tuple(sorted({(int(c), int(f)) for c, f in getattr(self, name)})))

    @property
    def empty(self) -> bool:
        return not (self.forbid_channels or self.forbid_pairs or self.require_pairs)

    def describe(self, class_names: Optional[Sequence[str]] = None) -> List[str]:
        """One line per constraint, e.g. ``class 3 must not use ch 12``."""
        cls = (lambda c: class_names[c]) if class_names else (lambda c: f'class {c}')
        return ([f'no class uses ch {f}' for f in self.forbid_channels]
                + [f'{cls(c)} must not use ch {f}' for c, f in self.forbid_pairs]
                + [f'{cls(c)} uses ch {f}' for c, f in self.require_pairs])

    def to_dict(self) -> Dict[str, Any]:
        return dict(forbid_channels=list(self.forbid_channels), forbid_pairs=[list(p) for p in self.forbid_pairs],
                    require_pairs=[list(p) for p in self.require_pairs])

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'Edit':
        return cls(tuple(d.get('forbid_channels', ())), tuple(map(tuple, d.get('forbid_pairs', ()))),
                   tuple(map(tuple, d.get('require_pairs', ()))))

    def __add__(self, other: 'Edit') -> 'Edit':
        """Both edits' constraints (an edit of an edited model keeps the earlier constraints)."""
        return Edit(self.forbid_channels + other.forbid_channels, self.forbid_pairs + other.forbid_pairs,
                    self.require_pairs + other.require_pairs)


def edit_from_features(model: QPMModel, forbid_features: Sequence[int] = (),
                       forbid: Sequence[Tuple[int, int]] = (), require: Sequence[Tuple[int, int]] = ()) -> Edit:
    """An :class:`Edit` from the model's own feature numbering (``f<j>``: the j-th kept feature) and class indices."""
    selection = model.head.selection.tolist()
    n = len(selection)

    def channel(j: int) -> int:
        if not 0 <= int(j) < n:
            raise ValueError(f'feature {j} does not exist: the model keeps {n} features (0..{n - 1}).')
        return int(selection[int(j)])
    return Edit(tuple(channel(j) for j in forbid_features), tuple((c, channel(j)) for c, j in forbid),
                tuple((c, channel(j)) for c, j in require))


@dataclass
class EditChanges:
    """What an edit changed: every class whose channel set changed (before, after), channels dropped and added."""
    classes: List[Tuple[int, List[int], List[int]]]
    dropped: List[int]
    added: List[int]

    def to_dict(self) -> Dict[str, Any]:
        return dict(classes=[dict(index=c, before=b, after=a) for c, b, a in self.classes], dropped=self.dropped,
                    added=self.added)


@dataclass
class EditResult:
    """What :func:`edit_model` returns (module docstring)."""
    model: QPMModel
    edit: Edit
    solution: QPMSolution  # over the features of the statistics' problem (``channels[solution.selected]``)
    channels: np.ndarray
    before_objective: float
    changes: EditChanges
    before_selection: List[int] = field(default_factory=list)

    @property
    def selection(self) -> np.ndarray:
        return self.channels[self.solution.selected]

    @property
    def assignment(self) -> np.ndarray:
        return np.asarray(self.solution.assignment, dtype=bool)

    @property
    def objective(self) -> float:
        return self.solution.objective

    @property
    def bound(self) -> Optional[float]:
        return self.solution.bound

    @property
    def gap(self) -> Optional[float]:
        return self.solution.gap

    @property
    def status(self) -> str:
        return self.solution.status

    def table(self, class_names: Optional[Sequence[str]] = None, names: Optional[Dict[int, str]] = None) -> str:
        """Markdown table of the classes whose features changed (before -> after), then the channels dropped and
        added; ``names``: a label per channel (default ``ch <k>``)."""
        def label(ch: int) -> str:
            return (names or {}).get(ch, f'ch {ch}')
        cls = (lambda c: class_names[c]) if class_names else (lambda c: f'class {c}')
        lines = ['| class | before | after |', '|---|---|---|']
        lines += [f'| {cls(c)} | {", ".join(map(label, b))} | {", ".join(map(label, a))} |'
                  for c, b, a in self.changes.classes]
        if not self.changes.classes:
            lines.append('| (none) | | |')
        lines += ['', 'features dropped: ' + (', '.join(map(label, self.changes.dropped)) or 'none'),
                  'features added: ' + (', '.join(map(label, self.changes.added)) or 'none')]
        return '\n'.join(lines)

    def summary(self) -> str:
        return (f'Z before {self.before_objective:.4f}, after: {self.solution.summary()}; '
                f'{len(self.changes.classes)} classes changed, {len(self.changes.dropped)} features dropped, '
                f'{len(self.changes.added)} added')

    def to_dict(self) -> Dict[str, Any]:
        return dict(edit=self.edit.to_dict(), before_objective=self.before_objective, objective=self.objective,
                    bound=self.bound, gap=self.gap, status=self.status, selection=self.selection.tolist(),
                    before_selection=self.before_selection, changes=self.changes.to_dict(),
                    solver=self.solution.to_dict())


def _changes(before_sel: Sequence[int], before_W: np.ndarray, after_sel: Sequence[int],
             after_W: np.ndarray) -> EditChanges:
    before = [sorted(int(before_sel[j]) for j in np.flatnonzero(row)) for row in before_W]
    after = [sorted(int(after_sel[j]) for j in np.flatnonzero(row)) for row in after_W]
    classes = [(c, b, a) for c, (b, a) in enumerate(zip(before, after)) if b != a]
    return EditChanges(classes, sorted(set(map(int, before_sel)) - set(map(int, after_sel))),
                       sorted(set(map(int, after_sel)) - set(map(int, before_sel))))


def kept_pairs(selection: Sequence[int], assignment: np.ndarray, edit: Edit) -> List[Tuple[int, int]]:
    """``(class, channel)`` of every class the edit leaves alone: none of its channels forbidden and no forbid/require
    pair naming it (docs/METHOD.md, "Editing": a local edit changes only the classes it touches)."""
    forbidden = set(edit.forbid_channels)
    named = {c for c, _ in edit.forbid_pairs + edit.require_pairs}
    kept = []
    for c, row in enumerate(assignment):
        channels = [int(selection[j]) for j in np.flatnonzero(row)]
        if c not in named and not forbidden.intersection(channels):
            kept += [(c, ch) for ch in channels]
    return kept


def edit_model(model: QPMModel, statistics: QPMStatistics, edit: Edit, *, effort: float = EDIT_EFFORT, seed: int = 0,
               locality: bool = True, time_limit: float = DEFAULT_TIME_LIMIT, workers: Optional[int] = None,
               log: bool = False, keep_others: bool = True) -> EditResult:
    """Re-solve the assignment of the QPM ``model`` on the ``statistics`` of its dense model (``statistics.npz``
    of its run) with the constraints of ``edit`` (docs/METHOD.md, "Editing"); returns an :class:`EditResult` whose
    ``model`` is a copy of ``model`` with the edited head. ``locality``: as the run solved (False for DINO-QPM's
    solve); ``effort``, ``seed``: decide the answer (``time_limit`` only caps the wall clock). ``keep_others``: the
    classes the edit does not touch (none of their channels forbidden, no constraint naming them) keep their features,
    so only the touched classes change (:func:`kept_pairs`); False re-solves every class."""
    if not isinstance(model, QPMModel) or not model.is_qpm or not model.num_classes:
        raise ValueError('edit_model needs a QPM with its binary head and classes (a dense model has no assignment '
                         'to edit: solve it first with qpm_timm.fit_qpm or train.py).')
    if model.head_kind != 'qpm':
        raise ValueError(f'edit_model re-solves a binary QPM assignment; this model has a {model.head_kind!r} '
                         f'baseline head (real-valued weights, no QPM problem): train a QPM (train.py --method qpm).')
    if statistics.num_classes != model.num_classes or statistics.num_features != model.num_features:
        raise ValueError(f'the statistics ({statistics.num_features} features x {statistics.num_classes} classes) '
                         f'are not of this model ({model.num_features} x {model.num_classes}); pass the '
                         f'statistics.npz of the run that made it.')
    problem, channels = problem_from_statistics(statistics, model.n_features, model.n_per_class, locality)
    index = {int(ch): i for i, ch in enumerate(channels)}
    selection = model.head.selection.tolist()
    W0 = model.class_weights.detach().cpu().numpy() > 0
    missing = [ch for ch in selection if ch not in index]
    if missing:
        raise ValueError(f'the model keeps channel {missing[0]}, constant in these statistics: they are not the '
                         f'statistics of its run.')
    order = np.argsort([index[ch] for ch in selection], kind='stable')
    current = np.asarray([index[ch] for ch in selection], dtype=np.int64)[order]
    before_Z = problem.objective(current, W0[:, order])

    C = model.num_classes
    for c, ch in edit.forbid_pairs + edit.require_pairs:
        if not 0 <= c < C:
            raise ValueError(f'class {c} does not exist: the model has {C} classes (0..{C - 1}).')
        if not 0 <= ch < model.num_features:
            raise ValueError(f'channel {ch} does not exist: the model has {model.num_features} (0..'
                             f'{model.num_features - 1}).')
    for c, ch in edit.require_pairs:
        if ch not in index:
            raise EditImpossible(f'class {c} cannot be required to use ch {ch}: that channel is constant in the '
                                 f'statistics, so the QPM head cannot normalise it.')
    solution = solve_edit(
        problem, current, [index[ch] for ch in edit.forbid_channels if ch in index],
        [(c, index[ch]) for c, ch in edit.forbid_pairs if ch in index],
        [(c, index[ch]) for c, ch in [*edit.require_pairs, *(kept_pairs(selection, W0, edit) if keep_others else [])]],
        effort=effort, seed=seed, time_limit=time_limit,
        workers=workers, log=log, label=lambda f: f'ch {channels[f]}')
    edited = apply_solution(copy.deepcopy(model), statistics, solution, channels)
    changes = _changes(selection, W0, channels[solution.selected].tolist(), solution.assignment)
    return EditResult(edited, edit, solution, channels, float(before_Z), changes, [int(s) for s in selection])


# --- the command line -----------------------------------------------------------------------------------------
EDIT_RECORD, STATISTICS = 'edit.json', 'statistics.npz'


@dataclass
class EditSource:
    """What editing reads from an experiment folder (``statistics.npz`` + ``export/``) or from an export that carries
    its statistics (``--with-statistics``): the model, the statistics, how the run solved, the feature names."""
    model: QPMModel
    export: Path
    statistics: Path
    locality: bool
    run: Optional[Path]  # the experiment folder (its args.yaml), None for an export
    labels: List[str]  # per kept feature j, the report's label (else 'f<j> (ch c)')
    annotations: List[Optional[str]]
    earlier: Edit  # the constraints of the edit that made this export (kept by a new edit)


def _feature_labels(export: Path, selection: Sequence[int]) -> Tuple[List[str], List[Optional[str]]]:
    """The names of the kept features: the export's report (report/report.json) or an earlier edit's record."""
    for path in (export / 'report' / 'report.json', export / EDIT_RECORD):
        if path.is_file():
            features = json.loads(path.read_text()).get('features') or []
            if len(features) == len(selection):
                return [f['label'] for f in features], [f.get('annotation') for f in features]
    return feature_names(selection), [None] * len(selection)


def read_source(folder: str) -> EditSource:
    """Locate the export and the statistics in ``folder`` (module docstring) and load the model."""
    root = Path(folder)
    if (root / STATISTICS).is_file() and (root / 'export' / 'config.json').is_file():
        args = yaml.safe_load((root / 'args.yaml').read_text()) if (root / 'args.yaml').is_file() else {}
        export, run, locality = root / 'export', root, bool((args or {}).get('locality', True))
        earlier = Edit()
    elif (root / STATISTICS).is_file() and (root / 'config.json').is_file():
        record = json.loads((root / EDIT_RECORD).read_text()) if (root / EDIT_RECORD).is_file() else {}
        export, run, locality = root, None, bool(record.get('locality', True))
        earlier = Edit.from_dict(record.get('edit', {}))
    else:
        raise ValueError(f'{folder} holds no model with its statistics: give a train.py experiment folder '
                         f'(statistics.npz and export/) or an export written with --with-statistics.')
    model = timm.create_model(f'local-dir:{export}', pretrained=True).eval()
    labels, annotations = _feature_labels(export, model.head.selection.tolist())
    return EditSource(model, export, root / STATISTICS, locality, run, labels, annotations, earlier)


def resolve_feature(spec: str, selection: Sequence[int], labels: Sequence[str],
                    annotations: Sequence[Optional[str]], num_channels: int) -> int:
    """A backbone channel from a feature spec: ``j`` or ``f<j>`` (the j-th kept feature), ``ch<k>`` (channel k), or a
    feature's name (its label or its annotation, case-insensitive)."""
    text = str(spec).strip()
    low = text.lower()
    n = len(selection)
    if low.startswith('ch') and low[2:].strip().isdigit():
        k = int(low[2:])
        if not 0 <= k < num_channels:
            raise ValueError(f'channel {k} does not exist: the backbone has {num_channels} '
                             f'(ch0..ch{num_channels - 1}).')
        return k
    digits = low[1:] if low.startswith('f') else low
    if digits.isdigit():
        if not 0 <= int(digits) < n:
            raise ValueError(f'feature {text} does not exist: the model keeps {n} features (0..{n - 1}).')
        return int(selection[int(digits)])
    hits = [j for j in range(n) if labels[j].lower() == low or (annotations[j] or '').lower() == low]
    if len(hits) == 1:
        return int(selection[hits[0]])
    what = 'names several features' if hits else 'is no feature'
    raise ValueError(f'{text!r} {what}; give an index 0..{n - 1}, f<j>, ch<k> or a name such as '
                     f'{", ".join(repr(x) for x in labels[:3])}.')


def parse_edit(forbid_features: Sequence[str], forbid: Sequence[str], require: Sequence[str], class_names,
               feature) -> Edit:
    """An :class:`Edit` from the command line's specs (``feature(spec)`` resolves a feature to its channel)."""
    def pair(spec: str) -> Tuple[int, int]:
        if ':' not in spec:
            raise ValueError(f'{spec!r} is not CLASS:FEATURE (e.g. 3:f2 or "{class_names[0]}:ch17").')
        cls, feat = spec.rsplit(':', 1)
        return resolve_class(cls, class_names), feature(feat)
    return Edit(tuple(feature(f) for f in forbid_features), tuple(pair(p) for p in forbid),
                tuple(pair(p) for p in require))


def result_labels(result: EditResult, source: EditSource) -> Tuple[Dict[int, str], List[Dict[str, Any]]]:
    """Labels of every channel before and after (the old label for a kept channel, ``ch <k> (new)`` for an added
    one) and the new features' records (label, annotation) for the export."""
    old = {int(ch): (label, ann) for ch, label, ann in zip(result.before_selection, source.labels, source.annotations)}
    labels = {ch: label for ch, (label, _) in old.items()}
    labels.update({int(ch): f'ch {ch} (new)' for ch in result.changes.added})
    features = []
    for j, ch in enumerate(result.selection.tolist()):
        ann = old.get(ch, (None, None))[1]
        features.append(dict(channel=ch, annotation=ann,
                             label=f'f{j} ≈ {ann} (ch {ch})' if ann else f'f{j} (ch {ch})'))
    return labels, features


def _card_section(result: EditResult, class_names, labels: Dict[int, str], source: EditSource,
                  statistics_size: Optional[int]) -> str:
    lines = ['## Edit', '', f'This model is an edit of `{source.export}`: its class -> feature assignment was '
             're-solved on the run\'s statistics (no new pass over the data) with these constraints:', '']
    lines += [f'- {line}' for line in result.edit.describe(class_names)]
    lines += ['', f'Solver: {result.solution.summary()}; Z of the model before the edit: '
                  f'{result.before_objective:.4f}.', '', result.table(class_names, labels), '']
    if statistics_size is not None:
        lines += [f'`statistics.npz` ({statistics_size / 1e6:.2f} MB) rides along, so this export can be edited '
                  f'again: `python -m qpm_timm.edit <this folder> ...`.', '']
    return '\n'.join(lines)


def export_edit(result: EditResult, source: EditSource, output: Path, class_names, with_statistics: bool,
                extra: Dict[str, Any]) -> Optional[int]:
    """Write the edited model as an export (:func:`qpm_timm.hub.save_pretrained`) whose card and ``edit.json``
    record the edit; ``with_statistics`` copies ``statistics.npz`` in. Returns the statistics' size in bytes."""
    labels, features = result_labels(result, source)
    size = source.statistics.stat().st_size if with_statistics else None
    config = json.loads((source.export / 'config.json').read_text())
    record = dict(result.to_dict(), source=str(source.export), locality=source.locality, features=features,
                  statistics_bytes=size, **extra)
    with tempfile.TemporaryDirectory() as tmp:
        record_path = Path(tmp) / EDIT_RECORD
        record_path.write_text(json.dumps(record, indent=1, ensure_ascii=False))
        files = {EDIT_RECORD: record_path, **({STATISTICS: source.statistics} if with_statistics else {})}
        hub.save_pretrained(result.model.eval(), str(output), label_names=config.get('label_names'),
                            feature_names=[f['label'] for f in features],
                            card_sections=[_card_section(result, class_names, labels, source, size)],
                            extra_files=files)
    return size
