""" The picture of a prediction's tree (docs/METHOD.md, "CHiQPM prediction sets and trees"; the tree itself:
:func:`qpm_timm.conformal.prediction_tree`), drawn with networkx on matplotlib in a layered layout computed here
(graphviz's ``dot``, which the authors use, is no Python package): depth top to bottom, the leaves in the tree's
order, every inner node centred over its children. Node size grows with the feature's activation on the image, the
colour is the feature's; the paths to the classes of the prediction set are drawn thick in green, the prediction's
path and leaf in bold."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np
import torch
from matplotlib.figure import Figure

from ..conformal import Calibration, SetInputs, calibrate, predict_sets, prediction_tree, set_inputs
from ..conformal.tree import ROOT, tree_json
from .figures import _wrap, save_figure

__all__ = ['tree_layout', 'tree_figure', 'TreeSets', 'tree_sets', 'tree_pictures', 'SET_COLOUR']

SET_COLOUR = '#2ca02c'


def tree_layout(graph: nx.DiGraph) -> Dict[str, Tuple[float, float]]:
    """``{node: (x, y)}``: ``y = -depth``; leaves at ``x = 0, 1, ...`` in depth-first order (children in insertion
    order), every inner node at the mean ``x`` of its children."""
    pos: Dict[str, Tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(node: str) -> float:
        children = list(graph.successors(node))
        if children:
            x = float(np.mean([place(c) for c in children]))
        else:
            x, next_leaf[0] = next_leaf[0], next_leaf[0] + 1
        pos[node] = (x, -float(graph.nodes[node]['depth']))
        return x

    place(ROOT)
    return pos


def tree_figure(graph: nx.DiGraph, title: str, colours: np.ndarray, feature_labels: Sequence[str]) -> Figure:
    """The tree of one image: feature nodes labelled ``f<j>`` and listed with their ``feature_labels`` (``'f<j> ≈
    name'`` in a report), class leaves by name (module docstring)."""
    pos = tree_layout(graph)
    leaves = [n for n, d in graph.nodes(data=True) if d['kind'] == 'class']
    depth = max(d['depth'] for _, d in graph.nodes(data=True))
    width = max(6.0, 0.3 * len(leaves) + 2.5)
    fig = Figure(figsize=(width, 0.9 * depth + 1.8), layout='constrained')
    ax = fig.add_subplot()
    feats = [n for n, d in graph.nodes(data=True) if d['kind'] == 'feature']
    top = max([graph.nodes[n]['activation'] for n in feats] + [1e-9])
    plain = [e for e in graph.edges if not graph.nodes[e[1]]['highlight']]
    marked = [e for e in graph.edges if graph.nodes[e[1]]['highlight']]
    nx.draw_networkx_edges(graph, pos, edgelist=plain, ax=ax, edge_color='0.7', width=0.8, arrows=False)
    nx.draw_networkx_edges(graph, pos, edgelist=marked, ax=ax, edge_color=SET_COLOUR, width=3.0, arrows=False)
    sizes = [40 + 560 * graph.nodes[n]['activation'] / top for n in feats]
    nx.draw_networkx_nodes(graph, pos, nodelist=feats, ax=ax, node_size=sizes,
                           node_color=[colours[graph.nodes[n]['feature']] for n in feats],
                           edgecolors=['black' if graph.nodes[n]['predicted'] else 'white' for n in feats],
                           linewidths=[2.0 if graph.nodes[n]['predicted'] else 0.5 for n in feats])
    nx.draw_networkx_nodes(graph, pos, nodelist=[ROOT], ax=ax, node_size=30, node_color='0.3')
    nx.draw_networkx_nodes(graph, pos, nodelist=leaves, ax=ax, node_size=8, node_shape='s',
                           node_color=[SET_COLOUR if graph.nodes[n]['highlight'] else '0.5' for n in leaves])
    nx.draw_networkx_labels(graph, pos, {n: f'f{graph.nodes[n]["feature"]}' for n in feats}, ax=ax, font_size=6)
    for n in leaves:
        d = graph.nodes[n]
        x, y = pos[n]
        name = d['name'] if len(d['name']) <= 30 else d['name'][:29] + '…'
        ax.text(x, y - 0.08, name, rotation=90, ha='center', va='top', fontsize=6,
                fontweight='bold' if d['predicted'] else 'normal', color=SET_COLOUR if d['highlight'] else 'black')
    shown = sorted({graph.nodes[n]['feature'] for n in feats})
    for j in shown:
        ax.plot([], [], 'o', color=colours[j], label=_wrap(feature_labels[j], 40))
    ax.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=6, frameon=False, title='features',
              title_fontsize=7)
    ax.set_ylim(-depth - 1.4, 0.3)
    ax.axis('off')
    fig.suptitle(_wrap(title, int(11 * width)), fontsize=9)
    return fig


@dataclass
class TreeSets:
    """What the tree pictures of a report highlight: the prediction sets of ``calibration`` at ``target``
    (``source`` says where the calibration comes from), or, without a calibration, the prediction alone."""
    model: object
    calibration: Optional[Calibration]
    target: Optional[float]
    source: str

    def inputs(self, pooled: torch.Tensor) -> SetInputs:
        return set_inputs(self.model, pooled)

    def prediction_set(self, inputs: SetInputs) -> List[int]:
        """The set of the single image of ``inputs``."""
        if self.calibration is None:
            return [int(inputs.predictions[0])]
        sets = predict_sets(self.calibration, inputs, self.model.class_weights.detach().cpu(), self.target)
        return np.flatnonzero(sets[0]).tolist()

    def describe(self) -> Dict:
        if self.calibration is None:
            return dict(calibrated=False, source=self.source)
        level, threshold = self.calibration.entry(self.target)
        return dict(calibrated=True, source=self.source, target=self.target, level=level, threshold=threshold,
                    calibration_images=self.calibration.images)


def tree_sets(model, calibration: Optional[Calibration], pooled: Optional[torch.Tensor],
              labels: Optional[np.ndarray], target: float = 0.9) -> TreeSets:
    """The :class:`TreeSets` of a report: ``calibration`` when given (the export's, train.py's), else one made on the
    report's validation pass (all its images); none without a validation pass or when it cannot calibrate (a class
    without images, too few images for the target): then the trees highlight the prediction only."""
    source = 'given (the exported calibration)'
    if model.head_kind != 'qpm':
        return TreeSets(model, None, None, f'no prediction sets (a {model.head_kind} head\'s real-valued weights make '
                                           f'no binary feature tree); the trees highlight the prediction only')
    if calibration is None and pooled is None:
        return TreeSets(model, None, None, 'no calibration (no dataset and none exported); the trees highlight the '
                                           'prediction only')
    if calibration is None:
        try:
            calibration = calibrate(set_inputs(model, pooled, labels), model.class_weights.detach().cpu(), [target])
            source = f'calibrated on the {len(labels)} images of the validation pass'
        except ValueError as e:
            return TreeSets(model, None, None, f'no calibration ({e}); the trees highlight the prediction only')
    chosen = min(calibration.targets, key=lambda t: abs(t - target))
    return TreeSets(model, calibration, chosen, source)


def tree_pictures(sets: TreeSets, pooled: torch.Tensor, title: str, class_names: Sequence[str],
                  colours: np.ndarray, feature_labels: Sequence[str], root: Path, stem: str) -> Dict[str, Tuple]:
    """The global and the local tree of one image (``pooled``: its ``(F',)`` pooled features) as PNG + JSON
    (``trees/<stem>_global``, ``trees/<stem>_local``); ``{'global': (png, json), 'local': (png, json)}``."""
    if sets.model.head_kind != 'qpm':
        return _no_tree(sets, title, root, stem)
    inputs = sets.inputs(pooled[None])
    prediction = int(inputs.predictions[0])
    members = sets.prediction_set(inputs)
    weights = sets.model.class_weights.detach().cpu().numpy()
    out = {}
    for kind in ('global', 'local'):
        graph = prediction_tree(inputs.features[0], weights, prediction, members, local=kind == 'local',
                                class_names=class_names)
        what = f'{kind} tree; prediction {class_names[prediction]}; ' + (
            f'set at coverage {sets.target:g}: {len(members)} class{"es" if len(members) != 1 else ""}'
            if sets.calibration is not None else 'no calibrated set')
        fig = tree_figure(graph, f'{title}: {what}', colours, feature_labels)
        numbers = dict(image=title, sets=sets.describe(), features=inputs.features[0].tolist(), **tree_json(graph))
        out[kind] = save_figure(fig, numbers, root, f'trees/{stem}_{kind}')
    return out


def _no_tree(sets: TreeSets, title: str, root: Path, stem: str) -> Dict[str, Tuple]:
    """A baseline's head (real-valued weights, a different number per class) has no feature tree: the pictures say
    so, their JSON too, so a report of any head has the same files."""
    reason = (f'no feature tree: the {sets.model.head_kind} head\'s classes have real-valued weights on different '
              f'numbers of features, not a binary set each')
    out = {}
    for kind in ('global', 'local'):
        fig = Figure(figsize=(6, 1.2))
        fig.text(0.5, 0.5, _wrap(f'{title}: {reason}', 80), ha='center', va='center', fontsize=9)
        out[kind] = save_figure(fig, dict(image=title, sets=sets.describe(), tree=None, reason=reason), root,
                                f'trees/{stem}_{kind}')
    return out
