""" The tree of a prediction (docs/METHOD.md, "CHiQPM prediction sets and trees"): for one image, every class's
path (its features ordered by the image's activation) hangs from a common root; a node is ``(depth, feature,
prefix)`` -- the classes whose paths start with the same features share it -- and the leaves are the classes. The
global tree holds every class, the local tree the classes whose path starts with the prediction's first feature."""
from typing import Dict, Optional, Sequence

import networkx as nx
import numpy as np

from .hierarchy import class_members, class_paths

__all__ = ['prediction_tree', 'tree_json', 'ROOT']

ROOT = 'root'


def _node_id(prefix: Sequence[int]) -> str:
    return 'p:' + '/'.join(str(int(f)) for f in prefix)


def prediction_tree(features: np.ndarray, weights, prediction: int, prediction_set: Optional[Sequence[int]] = None,
                    local: bool = True, class_names: Optional[Sequence[str]] = None) -> nx.DiGraph:
    """The tree of one image (``features``: its ``(F',)`` :class:`SetInputs` features) as a networkx ``DiGraph``.

    Node attributes: ``kind`` ('root', 'feature', 'class'), ``depth``, and for a feature node its ``feature``,
    ``prefix`` (the features from the root to it) and ``activation``; for a class leaf its ``class_index`` and
    ``name``. ``highlight`` marks the nodes on the path of a class of ``prediction_set``, ``predicted`` those on the
    prediction's path. Children are added in descending activation, so the drawing reads left to right."""
    members = class_members(weights)
    paths, values = class_paths(np.asarray(features, dtype=np.float64)[None], members)
    paths, values = paths[0], values[0]  # (C, K)
    in_set = set(int(c) for c in (prediction_set if prediction_set is not None else [prediction]))
    keep = [c for c in range(len(members)) if not local or paths[c, 0] == paths[prediction, 0]]
    # classes in the order of their paths' activations, depth by depth (largest first)
    keep.sort(key=lambda c: [(-values[c, d], int(paths[c, d])) for d in range(members.shape[1])])
    graph = nx.DiGraph(prediction=int(prediction), prediction_set=sorted(in_set), local=local)
    graph.add_node(ROOT, kind='root', depth=0, highlight=True, predicted=True)
    for c in keep:
        parent = ROOT
        for d in range(members.shape[1]):
            node = _node_id(paths[c, :d + 1])
            if node not in graph:
                graph.add_node(node, kind='feature', depth=d + 1, feature=int(paths[c, d]),
                               prefix=[int(f) for f in paths[c, :d + 1]], activation=float(values[c, d]),
                               highlight=False, predicted=False)
                graph.add_edge(parent, node)
            graph.nodes[node]['highlight'] |= c in in_set
            graph.nodes[node]['predicted'] |= c == prediction
            parent = node
        leaf = f'c:{c}'
        graph.add_node(leaf, kind='class', depth=members.shape[1] + 1, class_index=c,
                       name=class_names[c] if class_names is not None else str(c), highlight=c in in_set,
                       predicted=c == prediction)
        graph.add_edge(parent, leaf)
    return graph


def tree_json(graph: nx.DiGraph) -> Dict:
    """The numbers of a tree picture: its nodes (with their attributes), edges and every class's root-to-leaf
    feature path."""
    paths = {}
    for node, data in graph.nodes(data=True):
        if data['kind'] == 'class':
            route = nx.shortest_path(graph, ROOT, node)[1:-1]
            paths[str(data['class_index'])] = [graph.nodes[n]['feature'] for n in route]
    return dict(graph.graph, nodes=[dict(id=n, **d) for n, d in graph.nodes(data=True)],
                edges=[list(e) for e in graph.edges], class_paths=paths)
