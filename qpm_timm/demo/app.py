""" The demo's Gradio app (docs/EXPLANATIONS.md, "The demo"): an image in, the QPM's decision out.

``/explain``: an uploaded or example image -> the top-k classes with their probabilities, the predicted class's
``n_wc`` features (names, contributions, heatmaps on the image, the report's gallery of each and the class card),
and the nearest class with what separates it on this image (:mod:`.analysis`). With the run's statistics,
``/switch_off`` (a feature's backbone channel) re-solves without that feature and shows the edited model's decision
and the table diff, ``/undo`` returns to the exported model (:mod:`.editing`; per browser session). An unreadable
file is a readable error in the page (``gr.Error``), never a traceback.
Gradio is an optional extra (``pip install -e ".[demo]"``); everything runs offline (no analytics, no fonts or
assets from the internet).
"""
import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..models.assignment import weights_per_class
from ..run.cli import UsageError
from .analysis import Analysis, DemoModel, analyse, model_title, read_image
from .editing import Editor, find_edit_source
from .sets import load_sets, prediction_set

__all__ = ['build_app', 'launch', 'import_gradio', 'require_gradio', 'DISPLAY_SIZE', 'TOP_K']

DISPLAY_SIZE = 256  # pictures smaller than this (the model's input size) are enlarged for the page
TOP_K = 5
OFFLINE_ENV = dict(GRADIO_ANALYTICS_ENABLED='False', HF_HUB_DISABLE_TELEMETRY='1', DO_NOT_TRACK='1')
FEATURE_HEADERS = ['feature', 'contribution to the logit']
EXPLAIN_OUTPUTS = ('top-k classes', 'prediction', 'image as seen', 'heatmaps', 'feature table', 'class card',
                   'feature galleries', 'nearest class', 'separating features', 'prediction set',
                   'its tree')  # what /explain returns, in order


def require_gradio() -> None:
    """A clear error naming the install command when Gradio is missing (checked without importing it)."""
    if importlib.util.find_spec('gradio') is None:
        raise UsageError('the demo needs Gradio, an optional extra: pip install -e ".[demo]" (or pip install gradio).')


def import_gradio():
    """Gradio, with its analytics off (:func:`require_gradio` first)."""
    require_gradio()
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import gradio
    return gradio


def head_sentence(model) -> str:
    """What the model's last layer is: a QPM's binary assignment, or a baseline's sparse layer with its measured
    number of weights per class."""
    if model.head_kind == 'qpm':
        return (f'{model.num_classes} classes share {model.n_features} features; every class uses exactly '
                f'{model.n_per_class} of them, so a class\'s logit is the sum of its features\' normalised '
                f'activations.')
    return (f'A {model.head_kind} baseline: {model.num_classes} classes read {model.n_features} features through a '
            f'sparse, real-valued layer with a bias ({weights_per_class(model.class_weights.detach().cpu())} nonzero '
            f'weights, measured); a class\'s logit is its weighted sum of the normalised activations plus its bias.')


def _picture(pixels: np.ndarray) -> Image.Image:
    """An ``(H, W, 3)`` array in [0, 1] as an image, enlarged to :data:`DISPLAY_SIZE` when smaller."""
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
    scale = DISPLAY_SIZE / max(1, min(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    return image


def _signed(value: float) -> str:
    return f'{value:+.2f}'


def prediction_text(demo: DemoModel, analysis: Analysis) -> str:
    """Markdown: the predicted class, its logit as the sum of its features' contributions."""
    c, logit, probability = analysis.top[0]
    terms = ' '.join(f'{_signed(v)} ({analysis.view.labels[j]})'
                     for j, v in zip(analysis.features, analysis.contributions))
    head = f'### Prediction: {demo.class_names[c]} ({100 * probability:.1f} %)\n\n'
    if demo.model.head_kind != 'qpm':  # a baseline: weighted activations and a bias
        bias = float(demo.model.head.fc.bias[c])
        return (head + f'Its logit {logit:.2f} is its bias {_signed(bias)} plus its {len(analysis.features)} '
                f'features\' weighted normalised activations: {terms}.')
    return head + (f'Its logit {logit:.2f} is the sum of its {len(analysis.features)} features\' normalised '
                   f'activations: {terms}.')


def feature_rows(analysis: Analysis) -> List[List[Any]]:
    """Rows ``feature | contribution`` of the predicted class's features, largest contribution first."""
    rows = [[analysis.view.labels[j], round(v, 3)] for j, v in zip(analysis.features, analysis.contributions)]
    return sorted(rows, key=lambda row: -row[1])


def contrast_text(demo: DemoModel, analysis: Analysis) -> str:
    """Markdown: the nearest class, the features that separate it from the prediction and their terms here."""
    contrast = analysis.contrast
    if contrast is None:
        return 'The model has a single class.'
    labels, names = analysis.view.labels, demo.class_names
    a, b = names[contrast.predicted], names[contrast.other]
    kind = 'differs in one feature' if len(contrast.only_predicted) == 1 else \
        f'differs in {len(contrast.only_predicted)} features (no class differs in one)'
    shared = ', '.join(labels[j] for j in contrast.shared) or 'none'
    lines = [f'### Nearest class: {b}', '',
             f'{b} {kind} from {a}; shared: {shared}. Logits here: {a} {contrast.logits[0]:.2f}, '
             f'{b} {contrast.logits[1]:.2f}.', '',
             f'| feature | used by | its term of logit({a}) − logit({b}) on this image |', '|---|---|---|']
    lines += [f'| {labels[j]} | {a} | {_signed(contrast.terms[j])} |' for j in contrast.only_predicted]
    lines += [f'| {labels[j]} | {b} | {_signed(contrast.terms[j])} |' for j in contrast.only_other]
    return '\n'.join(lines)


def _outputs(demo: DemoModel, analysis: Analysis, edited: bool) -> Tuple:
    """The values of the explain outputs (:data:`EXPLAIN_OUTPUTS`) for one analysis."""
    view = analysis.view
    scores = {demo.class_names[c]: p for c, _, p in analysis.top}
    heat = [(_picture(o), f'{view.labels[j]}: {_signed(v)}')
            for o, j, v in zip(analysis.overlays, analysis.features, analysis.contributions)]
    galleries = [(str(view.galleries[j]), view.labels[j]) for j in analysis.features if view.galleries[j]]
    card = None if edited else demo.report.picture(f'classes/c{analysis.predicted}.png')
    contrast = []
    if analysis.contrast is not None:
        c = analysis.contrast
        contrast = [(_picture(o), f'{view.labels[j]} ({demo.class_names[owner]})') for o, j, owner in
                    zip(c.overlays, c.only_predicted + c.only_other,
                        [c.predicted] * len(c.only_predicted) + [c.other] * len(c.only_other))]
        a, b = sorted((c.predicted, c.other))
        pair = None if edited else demo.report.picture(f'pairs/c{a}_vs_c{b}.png')
        contrast += [(str(pair), 'the report\'s contrastive picture of the pair')] if pair else []
    return (scores, prediction_text(demo, analysis), _picture(analysis.image), heat, feature_rows(analysis),
            str(card) if card else None, galleries, contrast_text(demo, analysis), contrast)


def _uploaded_image(payload: Optional[Dict], gr) -> Image.Image:
    """The image of an Image component's raw payload (Gradio itself refuses paths it did not receive)."""
    if not payload or not payload.get('path'):
        raise gr.Error('Upload an image or pick an example image first.')
    try:
        return read_image(Path(payload['path']), payload.get('orig_name'))
    except (ValueError, FileNotFoundError) as e:
        raise gr.Error(str(e)) from None


def _edit_text(demo: DemoModel, editor: Editor, result, before: Optional[Analysis], after: Optional[Analysis]) -> str:
    """Markdown of an edit: what was switched off, the prediction before and after, the table diff."""
    names = editor.channel_names(result)
    off = ', '.join(names.get(c, f'ch {c}') for c in result.edit.forbid_channels)
    lines = [f'### Switched off: {off}', '']
    if before is not None and after is not None:
        (a, logit_a, _), (b, logit_b, _) = before.top[0], after.top[0]
        lines += [f'Prediction before: **{demo.class_names[a]}** ({logit_a:.2f}); after the edit: '
                  f'**{demo.class_names[b]}** ({logit_b:.2f}).', '']
    lines += ['Classes whose features changed (before → after):', '', result.table(demo.class_names, names), '',
              f'Re-solve: {result.summary()}.']
    return '\n'.join(lines)


def _set_outputs(demo: DemoModel, sets, analysis: Analysis, model) -> List[Any]:
    """The prediction set (Markdown) and its local tree (image) of one analysis; a note for an edited model."""
    found = prediction_set(sets, demo, analysis, model) if sets is not None else None
    if found is None:
        return ['The prediction set is calibrated for the exported model: undo the edits to see it.' if sets else '',
                None]
    names = ', '.join(demo.class_names[c] for c in found.classes)
    size = f'{len(found.classes)} class{"es" if len(found.classes) != 1 else ""}'
    return [f'### Prediction set (coverage {found.target:g}): {size}\n\n{names}\n\nCHiQPM\'s calibrated set holds the '
            f'true class with probability {found.target:g}. The local tree: every class whose most active feature on '
            f'this image is the prediction\'s, as the path of its features from most to least active here; the '
            f'set\'s paths in green.', found.tree]


def _edit_menu(analysis: Analysis, model) -> Tuple[List[Tuple[str, int]], int]:
    """The edit menu: ``(name, backbone channel)`` of every feature of ``model``, and the channel of the
    prediction's strongest feature (selected)."""
    selection = model.head.selection.tolist()
    best = analysis.features[int(np.argmax(analysis.contributions))]
    return [(label, int(c)) for label, c in zip(analysis.view.labels, selection)], int(selection[best])


def build_app(demo: DemoModel, top_k: int = TOP_K, title: Optional[str] = None):
    """The Gradio ``Blocks`` of the demo (module docstring); it opens with the report's first example explained.
    With the run's statistics (:func:`.editing.find_edit_source`) it has the edit action: switch a feature off."""
    gr = import_gradio()
    model, title, examples = demo.model, title or model_title(demo.name), demo.report.examples
    source, sets = find_edit_source(demo), load_sets(demo)
    editor = Editor(demo, source) if source is not None else None

    def model_of(off: Sequence[int]):
        return editor.switch_off(off).model if off else demo.model

    def values(analysis: Analysis, off: Sequence[int]) -> List[Any]:
        shown = list(_outputs(demo, analysis, edited=bool(off))) + _set_outputs(demo, sets, analysis, model_of(off))
        if editor is None:
            return shown
        options, value = _edit_menu(analysis, model_of(off))
        return shown + [gr.update(choices=options, value=value)]

    def explain(payload, off=()):
        off = tuple(off or ())
        return values(analyse(demo, _uploaded_image(payload, gr), top_k, model_of(off)), off)

    def switch_off(payload, off, channel):
        if channel is None:
            raise gr.Error('Pick a feature to switch off.')
        new_off = tuple(off or ()) + (int(channel),)
        try:
            result = editor.switch_off(new_off)
        except ValueError as e:  # qpm_timm.edit.EditImpossible: no QPM without these features
            raise gr.Error(str(e)) from None
        if not payload:
            return [gr.skip()] * len(outputs) + [_edit_text(demo, editor, result, None, None), new_off]
        image = _uploaded_image(payload, gr)
        before = analyse(demo, image, top_k, model_of(off or ()))
        after = analyse(demo, image, top_k, result.model)
        return values(after, new_off) + [_edit_text(demo, editor, result, before, after), new_off]

    def undo(payload):
        shown = explain(payload) if payload else [gr.skip()] * len(outputs)
        return list(shown) + ['', ()]

    opening = analyse(demo, read_image(examples[0][0]), top_k) if examples else None
    first = list(_outputs(demo, opening, False)) + _set_outputs(demo, sets, opening, model) if opening else \
        [None] * len(EXPLAIN_OUTPUTS)
    menu = _edit_menu(opening, demo.model) if opening else ([], None)
    with gr.Blocks(title=f'QPM demo: {title}') as app:
        gr.Markdown(f'# QPM demo: {title}\n\n{head_sentence(model)} Upload an image or pick an example.')
        off = gr.State(())
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(str(examples[0][0]) if examples else None, label='image', type='filepath',
                                 sources=['upload', 'clipboard'], height=240)
                button = gr.Button('Explain', variant='primary')
                if examples:
                    gr.Examples([[str(path)] for path, _ in examples], inputs=[image],
                                label='example images (from the report)', examples_per_page=12)
            with gr.Column(scale=1):
                scores = gr.Label(first[0], label=f'top-{min(top_k, model.num_classes)} classes',
                                  num_top_classes=top_k)
                seen = gr.Image(first[2], label='as the model sees it', interactive=False, height=200)
        summary = gr.Markdown(first[1])
        with gr.Row():
            heat = gr.Gallery(first[3], label='where the predicted class\'s features fired (heatmaps)',
                              columns=min(model.n_per_class, 5), height=280, format='png', object_fit='contain',
                              scale=2)
            table = gr.Dataframe(first[4], headers=FEATURE_HEADERS, label='the predicted class\'s features',
                                 interactive=False, scale=1)
        contrast = gr.Markdown(first[7])
        contrast_pictures = gr.Gallery(first[8], label='the separating features on this image', columns=4,
                                       height='auto', format='png', object_fit='contain')
        with gr.Row():
            card = gr.Image(first[5], label='class card: its features\' best gallery patches (report)',
                            interactive=False)
            galleries = gr.Gallery(first[6], label='each feature\'s gallery: most activating training images '
                                   '(report)', columns=1, height=420, format='png', object_fit='contain')
        with gr.Row(visible=sets is not None):
            set_text = gr.Markdown(first[9])
            tree = gr.Image(first[10], label='the prediction\'s local tree', interactive=False)
        outputs = [scores, summary, seen, heat, table, card, galleries, contrast, contrast_pictures, set_text, tree]
        gr.Markdown('### Edit the model: switch a feature off')
        if editor is None:
            gr.Markdown('Editing re-solves the assignment on the statistics of the run that made the model '
                        '(`statistics.npz`); none was found beside this export, so editing is off here.')
        else:
            gr.Markdown('No class may use the feature any more: the class → feature assignment is re-solved on the '
                        'run\'s statistics (no pass over data), and the page shows the edited model\'s decision.')
            with gr.Row():
                feature = gr.Dropdown(menu[0], value=menu[1], label='feature', scale=3)
                switch = gr.Button('switch this feature off', scale=1)
                reset = gr.Button('undo all edits', scale=1)
            edit_text = gr.Markdown()
            outputs.append(feature)
            switch.click(switch_off, [image, off, feature], outputs + [edit_text, off], api_name='switch_off',
                         preprocess=False)
            reset.click(undo, [image], outputs + [edit_text, off], api_name='undo', preprocess=False)
        button.click(explain, [image, off], outputs, api_name='explain', preprocess=False)
        image.change(lambda payload, edits: explain(payload, edits) if payload else [None] * len(outputs),
                     [image, off], outputs, api_visibility='private', preprocess=False)
    return app


def launch(app, host: str = '127.0.0.1', port: Optional[int] = None, block: bool = True):
    """Serve ``app`` on ``host:port`` (a free port from 7860 on when None); offline, no share link. With
    ``block=False`` it returns at once (the server runs in a thread): ``(app, local_url)``."""
    gr = import_gradio()
    theme = gr.themes.Default(font=['system-ui', 'sans-serif'], font_mono=['monospace'])  # no web fonts
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                           ssr_mode=False, quiet=not block, theme=theme, footer_links=[], show_error=False)
    return app, url
