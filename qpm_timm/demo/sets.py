""" The demo's prediction set and tree of an image, when the model carries a calibration (docs/METHOD.md, "CHiQPM
prediction sets and trees"; docs/EXPLANATIONS.md, "The demo").

The calibration is the one exported beside the weights (``prediction_sets.json``,
:func:`qpm_timm.conformal.load_calibration`; train.py writes it), at the calibrated coverage target nearest 0.9
(:func:`qpm_timm.explain.tree.tree_sets`); the set is :meth:`~qpm_timm.explain.tree.TreeSets.prediction_set` and
the picture the report's local tree (:func:`qpm_timm.conformal.prediction_tree`,
:func:`qpm_timm.explain.tree.tree_figure`). A calibration holds for the assignment it was made on, so an edited
model has no set.
"""
import io
from dataclasses import dataclass
from typing import List, Optional

import torch
from PIL import Image

from ..conformal import load_calibration, prediction_tree
from ..explain.figures import DPI
from ..explain.tree import TreeSets, tree_figure, tree_sets
from ..models.assignment import assignment_digest
from .analysis import Analysis, DemoModel

__all__ = ['PredictionSet', 'load_sets', 'prediction_set']


@dataclass
class PredictionSet:
    """The calibrated set of one image and its local tree."""
    target: float  # the coverage 1 - alpha the set holds the true class with
    classes: List[int]
    tree: Image.Image


def load_sets(demo: DemoModel) -> Optional[TreeSets]:
    """The exported model's calibrated sets, or None when its export carries no calibration."""
    calibration = load_calibration(demo.model)
    return None if calibration is None else tree_sets(demo.model, calibration, None, None)


def prediction_set(sets: TreeSets, demo: DemoModel, analysis: Analysis, model) -> Optional[PredictionSet]:
    """The set and local tree of the analysed image, or None for a model the calibration was not made for (an
    edited one: another assignment, or the same assignment over other channels, when a re-solve gave a switched-off
    feature's classes to its replacement)."""
    weights = model.class_weights.detach().cpu()
    if assignment_digest(weights) != sets.calibration.assignment or not torch.equal(
            model.head.selection.cpu(), sets.model.head.selection.cpu()):
        return None
    inputs = sets.inputs(torch.as_tensor(analysis.pooled)[None])
    classes = sets.prediction_set(inputs)
    graph = prediction_tree(inputs.features[0], weights.numpy(), analysis.predicted, classes, local=True,
                            class_names=demo.class_names)
    figure = tree_figure(graph, f'local tree; the set at coverage {sets.target:g} in green', analysis.view.colours,
                         analysis.view.labels)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=DPI)
    return PredictionSet(sets.target, classes, Image.open(buffer))
