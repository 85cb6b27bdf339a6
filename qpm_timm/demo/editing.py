""" The demo's edit action, "switch this feature off": a re-solve by :mod:`qpm_timm.edit` (docs/METHOD.md,
"Editing"; docs/EXPLANATIONS.md, "The demo").

Editing needs the statistics of the run that made the model (``statistics.npz``): beside the export in a train.py
experiment folder (``<experiment>/export`` + ``<experiment>/statistics.npz``), inside an export written with
``python -m qpm_timm.edit ... --with-statistics``, or in an ``hf-hub:`` repository that carries it. The features
switched off in a session are all forbidden in one edit of the exported model (with the constraints of an earlier
edit that made it), so the table diff always compares with the exported model; the last few edited models are
kept, so going back and forth costs no second solve.
"""
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from ..edit import Edit, EditResult, EditSource, edit_model, read_source
from ..stats import QPMStatistics
from .analysis import DemoModel

__all__ = ['Editor', 'find_edit_source', 'KEPT_EDITS']

KEPT_EDITS = 4  # edited models kept (each is a copy of the model)
_RUN_FILES = ('statistics.npz', 'args.yaml', 'edit.json', 'config.json')


def _candidates(name: str) -> Sequence[Path]:
    """Folders that may hold the statistics of the model ``name``: its experiment folder, the export itself, or the
    Hub repository's snapshot (only its small run files are downloaded)."""
    if name.startswith('local-dir:'):
        export = Path(name[len('local-dir:'):])
        return [export.parent, export] if export.name == 'export' else [export]
    if name.startswith(('hf-hub:', 'hf_hub:')):
        from huggingface_hub import snapshot_download
        repo, _, revision = name.split(':', 1)[1].partition('@')
        try:
            # the weights are in the same snapshot already: timm downloaded them to load the model
            return [Path(snapshot_download(repo, revision=revision or None, allow_patterns=list(_RUN_FILES)))]
        except Exception:  # noqa: BLE001  offline with nothing cached: no editing, the rest of the demo runs
            return []
    return []


def find_edit_source(demo: DemoModel) -> Optional[EditSource]:
    """Where the statistics of the demo's model are (:func:`qpm_timm.edit.read_source`), or None; None for a
    baseline's sparse head too, whose real-valued layer no re-solve edits (docs/METHOD.md, "Baselines")."""
    if getattr(demo.model, 'head_kind', 'qpm') != 'qpm':
        return None
    for folder in _candidates(demo.name):
        if (folder / 'statistics.npz').is_file():
            return read_source(str(folder))
    return None


class Editor:
    """Switches features of the exported model off by re-solving its assignment (module docstring)."""

    def __init__(self, demo: DemoModel, source: EditSource):
        self.demo, self.locality, self.earlier = demo, source.locality, source.earlier  # not source.model: a copy
        self.statistics = QPMStatistics.load(source.statistics)
        self._kept: 'OrderedDict[Tuple[int, ...], EditResult]' = OrderedDict()
        self._lock = threading.Lock()

    def switch_off(self, channels: Sequence[int]) -> EditResult:
        """The exported model with the backbone ``channels`` forbidden; :class:`qpm_timm.edit.EditImpossible`
        (a ValueError) says why when no QPM is left."""
        key = tuple(sorted({int(c) for c in channels}))
        with self._lock:
            if key not in self._kept:
                edit = self.earlier + Edit(forbid_channels=key)
                self._kept[key] = edit_model(self.demo.model, self.statistics, edit, locality=self.locality)
                while len(self._kept) > KEPT_EDITS:
                    self._kept.popitem(last=False)
            self._kept.move_to_end(key)
            return self._kept[key]

    def channel_names(self, result: EditResult) -> Dict[int, str]:
        """The name of every channel before and after ``result``: the report's, ``ch <k> (new)`` for added ones."""
        before = self.demo.report.features(result.before_selection).labels
        after = self.demo.report.features(result.selection.tolist()).labels
        return {**dict(zip(result.selection.tolist(), after)), **dict(zip(result.before_selection, before))}
