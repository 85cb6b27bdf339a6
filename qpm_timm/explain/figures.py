""" The pictures of a QPM report, drawn with matplotlib (object API, no pyplot state; PNG via Agg).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes it as a PNG with a JSON
beside it holding the numbers it shows. Features are titled by their names and drawn in their colour
(:func:`qpm_timm.explain.heatmap.feature_colours`) in every picture. What each picture shows:
docs/EXPLANATIONS.md.
"""
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .heatmap import overlay, text_colour

__all__ = ['assignment_order', 'global_figure', 'feature_gallery_figure', 'class_card_figure',
           'contrastive_figure', 'local_figure', 'image_caption', 'save_figure', 'HEAT_NOTE', 'HEAT_NOTE_PER_MAP',
           'DPI']

DPI = 90
CELL = 1.7  # inches per image panel
HEAT_NOTE = ('colour strength = where the feature fired (map / its maximum) x how strongly '
             '(pooled activation / its typical active value, at most 1)')
HEAT_NOTE_PER_MAP = ('colour strength = where the feature fired (map / its maximum); no dataset was given, so no '
                     'typical active value scales it: a weak feature is drawn as strongly as a strong one')


def save_figure(fig: Figure, numbers: Dict, root: Path, stem: str) -> Tuple[str, str]:
    """Write ``<root>/<stem>.png`` and ``<root>/<stem>.json`` (the numbers the picture shows); returns both paths
    relative to ``root`` (``stem`` may name a subfolder: ``'features/f3'``)."""
    png, data = f'{stem}.png', f'{stem}.json'
    (root / png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(root / png, dpi=DPI, pil_kwargs={'compress_level': 1})  # fast zlib: encoding was half the time
    (root / data).write_text(json.dumps(numbers, indent=1, ensure_ascii=False), encoding='utf-8')
    return png, data


def _wrap(text: str, width: int = 22) -> str:
    """``text`` wrapped to ``width`` characters, line by line, also after '+' (concept-set class names) and
    '::' (CUB attribute names)."""
    lines = []
    for line in text.split('\n'):
        marked = line.replace('+', '+\x00 ').replace('::', '::\x00 ')
        wrapped = textwrap.wrap(marked, width, break_on_hyphens=False)
        lines += [part.replace('\x00 ', '').replace('\x00', '') for part in wrapped] or [line]
    return '\n'.join(lines)


def _title(label: str, width: int = 22) -> str:
    """A feature label for a panel title: the name wrapped, its correlation ``(r = ...)`` on a line of its own."""
    name, sep, corr = label.partition(' (r = ')
    return _wrap(name, width) + (f'\n(r = {corr}' if sep else '')


def _bare(ax, colour=None, width: float = 0.0) -> None:
    """No ticks; a coloured frame of ``width`` points (none for 0)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(width > 0)
        if width > 0:
            spine.set_edgecolor(colour)
            spine.set_linewidth(width)


@dataclass(frozen=True)
class _Tiles:
    """Square image tiles of ``cell`` inches drawn in a single Axes whose data units are inches (y down): one Axes
    instead of one per image, whose creation costs more than the drawing for these many small pictures."""
    cell: float
    col_gap: float
    row_gap: float

    def corner(self, row: int, col: int) -> Tuple[float, float]:
        """Top-left ``(x, y)`` of tile ``(row, col)``."""
        return col * (self.cell + self.col_gap), row * (self.cell + self.row_gap)

    def figure(self, rows: int, cols: int, top: float, side: float = 0.12, bottom: float = 0.12):
        """A figure for ``rows x cols`` tiles below a ``top`` inch header, and its Axes."""
        inner_w = cols * self.cell + (cols - 1) * self.col_gap
        inner_h = rows * self.cell + (rows - 1) * self.row_gap
        width, height = inner_w + 2 * side, inner_h + top + bottom
        fig = Figure(figsize=(width, height))
        ax = fig.add_axes((side / width, bottom / height, inner_w / width, inner_h / height))
        ax.set_xlim(0, inner_w)
        ax.set_ylim(inner_h, 0)
        ax.set_axis_off()
        return fig, ax

    def draw(self, ax, row: int, col: int, image: np.ndarray, colour=None, frame: float = 0, title: str = '',
             smooth: bool = False) -> Tuple[float, float]:
        """``image`` in tile ``(row, col)``, framed ``frame`` points wide in ``colour``, ``title`` above it."""
        x, y = self.corner(row, col)
        ax.imshow(image, extent=(x, x + self.cell, y + self.cell, y), interpolation='bilinear' if smooth else 'nearest')
        if frame:
            ax.add_patch(Rectangle((x, y), self.cell, self.cell, fill=False, edgecolor=colour, linewidth=frame))
        if title:
            ax.text(x + self.cell / 2, y - 0.05, title, ha='center', va='bottom', fontsize=7)
        return x, y


def assignment_order(assignment: torch.Tensor) -> Tuple[List[int], List[int]]:
    """``(class order, feature order)`` for drawing ``W``: features by how many classes use them (most first),
    classes by average-linkage clustering of their rows (Hamming distance, optimal leaf order), so classes that
    share features sit together."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    w = torch.as_tensor(assignment).cpu().numpy() > 0
    features = sorted(range(w.shape[1]), key=lambda f: (-int(w[:, f].sum()), f))
    if w.shape[0] <= 2:
        return list(range(w.shape[0])), features
    tree = linkage(w.astype(np.float64), method='average', metric='hamming', optimal_ordering=True)
    return leaves_list(tree).tolist(), features


def global_figure(assignment: torch.Tensor, feature_labels: Sequence[str], class_names: Sequence[str],
                  colours: np.ndarray) -> Tuple[Figure, Dict]:
    """The class x feature assignment: a cell in the feature's colour where the class uses the feature; above,
    how many classes use each feature."""
    w = torch.as_tensor(assignment).cpu().numpy() > 0
    num_classes, n = w.shape
    classes, features = assignment_order(assignment)
    show_classes = num_classes <= 250
    label_size = max(4, min(8, 600 // num_classes))
    labels_width = 0.075 * label_size / 8 * max(len(name) for name in class_names) if show_classes else 0.4
    matrix_height = min(0.17 * num_classes, 60) + 0.5
    fig = Figure(figsize=(max(6.0, 1.0 + labels_width + 0.36 * n), matrix_height + 3.4), layout='constrained')
    fig.suptitle(_wrap(f'{num_classes} classes x {n} features, {int(w[0].sum())} per class; rows: classes, grouped '
                       f'by shared features; columns: features, ordered by use', int(9 * fig.get_figwidth())),
                 fontsize=10)
    top, ax = fig.subplots(2, 1, height_ratios=[1.2, matrix_height], sharex=True)
    usage = w[:, features].sum(0)
    top.bar(range(n), usage, color=colours[features], edgecolor='black', linewidth=0.4)
    top.set_ylabel('classes')
    top.spines[['top', 'right']].set_visible(False)
    cells = np.full((num_classes, n, 3), 0.94)
    for col, f in enumerate(features):
        cells[w[classes, f], col] = colours[f]
    ax.imshow(cells, aspect='auto', interpolation='nearest')
    ax.set_xticks(np.arange(n) - 0.5, minor=True)
    ax.set_yticks(np.arange(num_classes) - 0.5, minor=True)
    ax.grid(which='minor', color='white', linewidth=0.6)
    ax.tick_params(which='minor', length=0)
    ax.set_xticks(range(n))
    ax.set_xticklabels([feature_labels[f] for f in features], rotation=60, ha='right', fontsize=8)
    for tick, f in zip(ax.get_xticklabels(), features):
        tick.set_color(text_colour(colours[f]))
    if show_classes:
        ax.set_yticks(range(num_classes))
        ax.set_yticklabels([class_names[c] for c in classes], fontsize=label_size)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f'{num_classes} classes (names in global.json)')
    numbers = dict(class_order=classes, feature_order=features, classes=[class_names[c] for c in classes],
                   features=[feature_labels[f] for f in features], classes_per_feature=usage.tolist(),
                   assignment=w[classes][:, features].astype(int).tolist())
    return fig, numbers


def feature_gallery_figure(label: str, colour: np.ndarray, images: Sequence[np.ndarray],
                           boxes: Sequence[Tuple[int, int, int, int]], captions: Sequence[str],
                           subtitle: str) -> Figure:
    """A feature's top images (its patch framed in its colour) and, below, the patches themselves."""
    k, tiles = max(4, len(images)), _Tiles(CELL, 0.12, 0.08)
    title = f'{label}\n{_wrap(subtitle, int(11 * k * CELL))}'
    captions = [_wrap(caption, 26) for caption in captions]
    caption_lines = max([c.count('\n') + 1 for c in captions] or [0])
    fig, ax = tiles.figure(2, k, top=0.3 + 0.2 * (title.count('\n') + 1) + 0.12 * caption_lines)
    fig.suptitle(title, color=text_colour(colour), fontsize=11, y=1 - 0.06 / fig.get_figheight(), va='top')
    for i, (image, (top, left, bottom, right)) in enumerate(zip(images, boxes)):
        x, y = tiles.draw(ax, 0, i, image, title=captions[i])
        height, width = image.shape[:2]
        ax.add_patch(Rectangle((x + left / width * CELL, y + top / height * CELL), (right - left) / width * CELL,
                               (bottom - top) / height * CELL, fill=False, edgecolor=colour, linewidth=2))
        tiles.draw(ax, 1, i, image[top:bottom, left:right], colour, 3, smooth=True)
    return fig


def class_card_figure(class_name: str, feature_labels: Sequence[str], colours: Sequence[np.ndarray],
                      patches: Sequence[Sequence[np.ndarray]]) -> Figure:
    """A class's features (columns, titled by name, in their colour) with their best gallery patches."""
    tiles = _Tiles(1.45, 0.3, 0.06)
    # a baseline's class may have no positive weight: its card is a title over one empty column
    fig, ax = tiles.figure(max([1] + [len(p) for p in patches]), max(1, len(feature_labels)), top=1.0, side=0.25)
    fig.suptitle(_wrap(class_name, int(9 * fig.get_figwidth())), fontsize=12, fontweight='bold',
                 y=1 - 0.06 / fig.get_figheight(), va='top')
    for col, (label, colour, column) in enumerate(zip(feature_labels, colours, patches)):
        ax.text(tiles.corner(0, col)[0] + tiles.cell / 2, -0.08, _title(label, 20), ha='center', va='bottom',
                fontsize=8, color=text_colour(colour))
        for row, patch in enumerate(column):
            tiles.draw(ax, row, col, patch, colour, 3, smooth=True)
    return fig


def _heat_cell(ax, image: np.ndarray, heat: np.ndarray, colour: np.ndarray, title: str, marked: bool) -> None:
    ax.imshow(overlay(image, heat, colour))
    ax.set_title(title, fontsize=7, color=text_colour(colour), fontweight='bold' if marked else 'normal')
    _bare(ax, colour, 4 if marked else 1.5)


def _contribution_bars(ax, labels: Sequence[str], values: Sequence[float], colours: Sequence[np.ndarray],
                       title: str) -> None:
    y = np.arange(len(values))[::-1]
    ax.barh(y, values, color=list(colours), edgecolor='black', linewidth=0.4)
    ax.set_yticks(y)
    ax.set_yticklabels([_title(label, 18) for label in labels], fontsize=6)
    ax.axvline(0, color='black', linewidth=0.6)
    ax.set_title(_wrap(title, 34), fontsize=8)
    ax.tick_params(axis='x', labelsize=7)
    ax.spines[['top', 'right']].set_visible(False)


def contrastive_figure(class_names: Tuple[str, str], images: Sequence[np.ndarray], heats: np.ndarray,
                       columns: Sequence[int], kinds: Sequence[str], feature_labels: Sequence[str],
                       colours: np.ndarray, contributions: np.ndarray, differences: np.ndarray,
                       logits: np.ndarray, row_titles: Optional[Sequence[str]] = None,
                       heat_note: str = HEAT_NOTE) -> Figure:
    """Two classes A and B that differ in one feature each: a row per image (by default the example images of A
    and B; ``row_titles`` name other images), its heatmaps for every feature of both classes (``kinds``: 'only A',
    'shared', 'only B'; the differing ones framed thick), and each feature's contribution to ``logit_A - logit_B``
    on that image."""
    n, rows = len(columns), len(images)
    titles = row_titles or [f'example of {"AB"[row]}: {class_names[row]}' for row in range(rows)]
    fig = Figure(figsize=(CELL * (n + 1) + 3.4, rows * CELL + 2.0), layout='constrained')
    axes = np.asarray(fig.subplots(rows, n + 2, squeeze=False, width_ratios=[1] * (n + 1) + [1.9]))
    shared = kinds.count('shared')
    fig.suptitle(f'A = {class_names[0]}   vs   B = {class_names[1]}\nthey share {shared} of their '
                 f'{shared + kinds.count("only A")} features; the differing ones are framed thick', fontsize=11)
    for row in range(rows):
        ax = axes[row, 0]
        ax.imshow(images[row])
        ax.set_title(_wrap(titles[row], 24), fontsize=8, fontweight='bold')
        ax.set_xlabel(f'logit A {logits[row, 0]:.2f}, logit B {logits[row, 1]:.2f}', fontsize=7)
        _bare(ax)
        for col, f in enumerate(columns):
            title = f'{_title(feature_labels[f])}\n{kinds[col]}, z = {contributions[row, col]:+.2f}'
            _heat_cell(axes[row, col + 1], images[row], heats[row, col], colours[f], title, kinds[col] != 'shared')
        differing = [col for col, kind in enumerate(kinds) if kind != 'shared']
        _contribution_bars(axes[row, -1], [feature_labels[columns[c]] for c in differing],
                           [differences[row, c] for c in differing], [colours[columns[c]] for c in differing],
                           f'contribution to logit A - logit B = {logits[row, 0] - logits[row, 1]:+.2f} '
                           f'(shared features cancel)')
    fig.supxlabel(heat_note, fontsize=6, color='0.35')
    return fig


def local_figure(title: str, image: np.ndarray, rows: Sequence[Dict], colours: np.ndarray,
                 feature_labels: Sequence[str], heat_note: str = HEAT_NOTE) -> Figure:
    """An image's prediction and runner-up (a row each): every feature of the class with its heatmap and its
    contribution (normalised activation) to the logit, as bars."""
    n = max([1] + [len(r['features']) for r in rows])  # a baseline's class may have no positive weight
    fig = Figure(figsize=(CELL * (n + 1) + 3.0, CELL * len(rows) + 1.4), layout='constrained')
    axes = np.asarray(fig.subplots(len(rows), n + 2, squeeze=False, width_ratios=[1] * (n + 1) + [1.7]))
    fig.suptitle(_wrap(title, 90), fontsize=10)
    for i, row in enumerate(rows):
        ax = axes[i, 0]
        ax.imshow(image)
        ax.set_title(_wrap(f'{row["role"]}: {row["class_name"]}', 24), fontsize=8, fontweight='bold')
        ax.set_xlabel(f'logit {row["logit"]:.2f}', fontsize=7)
        _bare(ax)
        for col in range(n):
            if col >= len(row['features']):
                _bare(axes[i, col + 1])
                continue
            f = row['features'][col]
            _heat_cell(axes[i, col + 1], image, row['heats'][col], colours[f],
                       f'{_title(feature_labels[f])}\ncontribution {row["contributions"][col]:+.2f}', False)
        _contribution_bars(axes[i, -1], [feature_labels[f] for f in row['features']], row['contributions'],
                           [colours[f] for f in row['features']],
                           f'contributions to the logit of {row["class_name"]} (sum {row["logit"]:.2f})')
    fig.supxlabel(heat_note, fontsize=6, color='0.35')
    return fig


def image_caption(class_name: Optional[str], value: float) -> str:
    """Caption of a gallery image: its class and the feature's activation on it."""
    return f'{class_name}\nactivation {value:.2f}' if class_name else f'activation {value:.2f}'
