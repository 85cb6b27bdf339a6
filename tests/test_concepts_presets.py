"""Difficulty knobs, named presets and ground-truth masks of the generated concepts dataset."""
import hashlib
import re
import statistics

import numpy as np
import pytest
import torch

from helpers.scripts import run_script
from qpm_timm.data import CONCEPT_VOCABULARY, ConceptsDataset, create_qpm_transform
from qpm_timm.data.concepts import (
    CONCEPT_PRESETS,
    SHAPE_FAMILIES,
    concept_settings,
    make_class_concepts,
    make_shortcut_pairs,
)

# md5 of the default dataset's pixels as rendered before the knobs existed (train 3 / val 5 images per class)
DEFAULT_TRAIN_MD5 = '83ed99fb3bd7fafee8a3f81f10d901ab'
DEFAULT_VAL_MD5 = 'a45df596d2857c12ba307b2a9c7dbc50'
SMALL = dict(num_classes=24, images_per_class=4)


def _md5(images: np.ndarray) -> str:
    return hashlib.md5(images.tobytes()).hexdigest()


def test_default_preset_renders_exactly_the_published_default_images():
    train = ConceptsDataset('train', images_per_class=3)
    val = ConceptsDataset('val', images_per_class=5, preset='default')
    assert _md5(train.images) == DEFAULT_TRAIN_MD5 and _md5(val.images) == DEFAULT_VAL_MD5
    assert train.concept_names == list(CONCEPT_VOCABULARY[:12])
    assert np.array_equal(val.concept_presence, val.class_concepts[val.targets])


def _background_distance(ds: ConceptsDataset, index: int) -> np.ndarray:
    """Per pixel, the smallest channel distance (0..1) from the image's background colour (its median)."""
    img = ds.images[index].astype(np.float64) / 255
    return np.abs(img - np.median(img.reshape(-1, 3), axis=0)).min(axis=2)


@pytest.mark.parametrize('preset', ['default', 'clutter'])
def test_concept_masks_cover_exactly_the_drawn_concepts(preset):
    """Every concept differs from the background by >= 0.2 in every channel, the noise (std 0.07) rarely in all
    three: inside a concept's mask most pixels stand out; without distractors, nearly none outside the masks."""
    ds = ConceptsDataset('val', preset=preset, **SMALL)
    masks = ds.concept_masks(range(0, len(ds), 7))
    for row, index in enumerate(range(0, len(ds), 7)):
        far = _background_distance(ds, index) > 0.12
        shown = masks[row].any(axis=(1, 2))
        assert np.array_equal(shown, ds.concept_presence[index])
        assert far[masks[row].any(0)].mean() > 0.75
        if preset == 'default':
            assert far[~masks[row].any(0)].mean() < 0.01
    assert np.array_equal(ds.object_masks([3]), ds.concept_masks([3]).any(1))


def test_masks_option_returns_each_image_with_its_concept_masks_through_the_transform():
    transform = create_qpm_transform('concepts', is_training=False, img_size=32)
    ds = ConceptsDataset('val', masks=True, img_size=32, transform=transform, **SMALL)
    image, target, masks = ds[5]
    assert image.shape == (3, 32, 32) and target == 1
    assert masks.dtype == torch.bool and torch.equal(masks, torch.from_numpy(ds.concept_masks([5])[0]))
    batch = ds.__getitems__([5, 6])
    assert torch.equal(batch[0][2], masks) and len(batch[1]) == 3
    assert len(ConceptsDataset('val', img_size=32, transform=transform, **SMALL)[5]) == 2  # off by default


def test_presets_turn_the_declared_knobs():
    hard = ConceptsDataset('train', preset='hard', **SMALL)
    assert len(hard.concept_names) == 16 and set(SHAPE_FAMILIES['outlines']) <= set(hard.concept_names)
    assert (hard.class_concepts.sum(1) == 4).all()
    assert ((hard.placements[..., 0] >= 0).sum(1) == 4).all()  # hard: the four concepts, nothing else, upright
    assert (hard.placements[..., 4] == 0).all()
    hardest = ConceptsDataset('train', preset='hardest', **SMALL)
    assert hardest.concept_names == hard.concept_names and (hardest.placements[..., 4] != 0).mean() > 0.9
    assert ((hardest.placements[..., 0] >= 16).sum(1) == 1).all()  # one distractor, no concept of any class
    outlines = ConceptsDataset('val', preset='outlines', **SMALL)
    assert set(SHAPE_FAMILIES['outlines']) <= set(outlines.concept_names) and len(outlines.concept_names) == 12
    many = ConceptsDataset('val', preset='many', **SMALL)
    assert many.concept_names == list(CONCEPT_VOCABULARY[:18]) and (many.class_concepts.sum(1) == 4).all()
    clutter = ConceptsDataset('val', preset='clutter', **SMALL)
    shapes = clutter.placements[..., 0].astype(int)
    assert ((shapes >= 12).sum(1) == 2).all()  # two distractors per image, none of them a concept
    assert np.array_equal(clutter.concept_presence, clutter.class_concepts[clutter.targets])
    assert (clutter.placements[..., 4] != 0).mean() > 0.9  # turned
    similar = ConceptsDataset('val', preset='similar', images_per_class=1)
    assert len(similar.classes) == 96 and len(similar.concept_names) == 16
    assert (similar.class_concepts.sum(1) == 4).all()
    assert {n for f in ('filled', 'stripes') for n in SHAPE_FAMILIES[f]} <= set(similar.concept_names)
    override = ConceptsDataset('val', preset='hardest', num_concepts=8, concepts_per_class=2, **SMALL)
    assert override.concept_names == list(hard.concept_names[:8])


def test_shortcut_pairs_co_occur_in_training_only():
    kwargs = dict(preset='shortcut', num_classes=48, images_per_class=8)
    train, val = ConceptsDataset('train', **kwargs), ConceptsDataset('val', **kwargs)
    assert np.array_equal(val.concept_presence, val.class_concepts[val.targets])
    extra = train.concept_presence & ~train.class_concepts[train.targets]
    assert extra.any()
    for a, b in make_shortcut_pairs(12, 3, seed=0):
        one = train.class_concepts[train.targets][:, a] ^ train.class_concepts[train.targets][:, b]
        both = train.concept_presence[one][:, a] & train.concept_presence[one][:, b]
        assert 0.8 < both.mean() <= 1.0  # 90 % planted
    # the extras are exactly the shortcut partners
    paired = {k for pair in make_shortcut_pairs(12, 3, seed=0) for k in pair}
    assert set(np.flatnonzero(extra.any(0))) <= paired


def test_sibling_classes_differ_in_exactly_two_family_members_covering_every_pair():
    family = (2, 5, 7, 9)
    cc = make_class_concepts(24, 12, 3, seed=4, siblings=[family])
    assert (cc.sum(1) == 3).all() and len({row.tobytes() for row in cc}) == 24 and cc.any(0).all()
    differences = {tuple(np.flatnonzero(cc[2 * i] ^ cc[2 * i + 1])) for i in range(12)}
    assert differences == {(a, b) for i, a in enumerate(family) for b in family[i + 1:]}  # 6 pairs, each twice
    hard = ConceptsDataset('val', preset='hard', images_per_class=1)
    outlines = [hard.concept_names.index(n) for n in SHAPE_FAMILIES['outlines']]
    assert all(set(np.flatnonzero(hard.class_concepts[2 * i] ^ hard.class_concepts[2 * i + 1])) <= set(outlines)
               for i in range(24))
    # the shared parts are balanced: every concept is in about as many classes (4 x 48 / 16 = 12) as any other
    assert set(hard.class_concepts.sum(0)) <= set(range(10, 15))


def test_sibling_classes_of_several_families_pair_members_of_the_same_family_only():
    similar = ConceptsDataset('val', preset='similar', images_per_class=1)
    names = similar.concept_names
    families = [{names.index(n) for n in SHAPE_FAMILIES[f] if n in names} for f in ('filled', 'outlines', 'stripes',
                                                                                   'crosses')]
    cc = similar.class_concepts
    differences = {tuple(np.flatnonzero(cc[2 * i] ^ cc[2 * i + 1])) for i in range(48)}
    within = {(a, b) for family in families for a in family for b in family if a < b}
    assert differences == within  # 6 + 6 + 3 + 1 = 16 pairs of members, each at least once, and nothing else
    assert (cc.sum(1) == 4).all() and len({row.tobytes() for row in cc}) == 96


@pytest.mark.parametrize('kwargs, message', [
    (dict(preset='harder'), 'unknown concepts preset'),
    (dict(siblings='curves'), 'must name a family'),
    (dict(concepts=['disk', 'ring', 'plus', 'square'], num_classes=4, concepts_per_class=2, siblings='outlines'),
     'fewer than two of its shapes'),
    (dict(preset='hard', num_classes=47), 'even num_classes'),
    (dict(preset='hard', num_classes=6), 'do not use all 16 concepts'),
    (dict(concepts=['disk', 'blob']), 'unknown concepts'),
    (dict(concepts=['disk', 'disk', 'ring'], num_classes=2, concepts_per_class=2), 'twice'),
    (dict(scale=(0.4, 0.2)), 'scale'),
    (dict(rotation=200), 'rotation'),
    (dict(shortcut=1.5), 'probability'),
    (dict(shortcut=0.5, shortcut_pairs=7), 'shortcut_pairs'),
    (dict(num_concepts=len(CONCEPT_VOCABULARY), num_classes=48, distractors=1), 'distractors need'),
])
def test_bad_knobs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConceptsDataset(**{'images_per_class': 1, **kwargs})


def test_every_preset_builds_a_valid_split():
    for preset in CONCEPT_PRESETS:
        ds = ConceptsDataset('val', preset=preset, images_per_class=1)
        assert len(ds) == (96 if preset == 'similar' else 48) and ds.class_concepts.any(0).all()


def test_similar_preset_trains_on_150_images_per_class_and_validates_on_25():
    """The recovery target's preset sees 3600 training images per concept (docs/METHOD.md, "What the dense stage
    needs: images per concept"); the other presets keep 100, every validation split 25; images_per_class overrides."""
    few = dict(num_classes=4, siblings=False)  # four classes cover the 16 concepts: quick to draw
    assert len(ConceptsDataset('train', preset='similar', **few)) == 4 * 150
    assert len(ConceptsDataset('val', preset='similar', **few)) == 4 * 25
    assert len(ConceptsDataset('train', preset='hard', **few)) == 4 * 100
    assert len(ConceptsDataset('train', preset='similar', images_per_class=3, **few)) == 4 * 3
    with pytest.raises(ValueError, match='train_images_per_class'):
        concept_settings('default', train_images_per_class=0)


def test_preset_sweep_benchmark_prints_every_run_and_the_per_preset_summary(tmp_path, capsys):
    """The sweep's tiny mode: train.py + validate.py on the hardest preset for two seeds, one row each, then the
    preset's mean/min top-1 and median/min recovery over them."""
    assert run_script('benchmarks/concepts_presets.py', ['--tiny', '--presets', 'hardest', '--seeds', '0', '1',
                                                         '--output', tmp_path]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r'^hardest\s+([01])\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+$', out, re.MULTILINE)
    assert [r[0] for r in rows] == ['0', '1'], out
    top1, recovery = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    summary = re.search(r'^hardest\s+top-1 mean ([\d.]+) % \(min ([\d.]+)\)\s+recovery median ([\d.]+) \(min ([\d.]+)\)'
                        r'\s+over 2 seeds$', out, re.MULTILINE)
    assert summary, out
    assert float(summary[1]) == pytest.approx(statistics.mean(top1), abs=0.01)
    assert float(summary[4]) == pytest.approx(min(recovery), abs=1e-3)
    assert (tmp_path / 'hardest-1' / 'export').is_dir()
