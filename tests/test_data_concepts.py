"""The generated concepts dataset: determinism, ground truth, and that it needs a CNN."""
from math import comb

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import RidgeClassifierCV

from qpm_timm.data import CONCEPT_VOCABULARY, ConceptsDataset, create_qpm_transform, make_class_concepts
from qpm_timm.data.concepts import generate_concept_images

SMALL = dict(num_concepts=5, num_classes=6, concepts_per_class=2, img_size=32, images_per_class=3)
PINNED_SMALL_MD5 = '5782d5a2faf03456572848a53f7fd1e0'  # train split of SMALL, seed 5, as first rendered


def test_same_seed_gives_identical_pixels_and_another_seed_differs():
    a = ConceptsDataset('train', seed=3, **SMALL)
    generate_concept_images.cache_clear()  # regenerate rather than reuse the cached array
    b = ConceptsDataset('train', seed=3, **SMALL)
    assert a.images is not b.images
    c = ConceptsDataset('train', seed=4, **SMALL)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.class_concepts, b.class_concepts)
    assert a.images.shape == (18, 32, 32, 3) and a.images.dtype == np.uint8
    assert not np.array_equal(a.images, c.images)
    assert all(not np.array_equal(a.images[i], c.images[i]) for i in range(len(a)))


def test_splits_share_class_definitions_but_not_images():
    train = ConceptsDataset('train', **SMALL)
    val = ConceptsDataset('validation', **SMALL)
    assert val.split == 'val' and train.classes == val.classes
    assert np.array_equal(train.class_concepts, val.class_concepts)
    assert not any(np.array_equal(x, y) for x in train.images for y in val.images)


def test_default_ground_truth_is_consistent():
    ds = ConceptsDataset('train', images_per_class=2)
    assert ds.class_concepts.shape == (48, 12) and ds.class_concepts.dtype == bool
    assert ds.concept_presence.shape == (96, 12) and ds.concept_presence.dtype == bool
    assert ds.concept_names == list(CONCEPT_VOCABULARY[:12]) and ds.img_size == 64
    assert len({tuple(row) for row in ds.class_concepts}) == 48  # every class distinct
    assert (ds.class_concepts.sum(1) == 3).all() and ds.class_concepts.any(0).all()  # 3 each, all used
    assert ds.targets == [c for c in range(48) for _ in range(2)]
    assert np.array_equal(ds.concept_presence, ds.class_concepts[ds.targets])
    for name, row in zip(ds.classes, ds.class_concepts):
        assert name.split('+') == [ds.concept_names[k] for k in np.flatnonzero(row)]
    img, target = ds[5]
    assert isinstance(img, Image.Image) and img.size == (64, 64) and target == 2


@pytest.mark.parametrize('num_concepts, num_classes, k', [
    (4, 6, 2), (6, 3, 2), (12, 24, 3), (5, 5, 1), (18, 60, 4), (7, comb(7, 3), 3), (10, 4, 3)])
def test_class_concept_sets_are_distinct_and_cover_every_concept(num_concepts, num_classes, k):
    for seed in range(3):
        cc = make_class_concepts(num_classes, num_concepts, k, seed)
        assert cc.shape == (num_classes, num_concepts) and (cc.sum(1) == k).all()
        assert len({tuple(row) for row in cc}) == num_classes and cc.any(0).all()
        assert np.array_equal(cc, make_class_concepts(num_classes, num_concepts, k, seed))
    assert not np.array_equal(make_class_concepts(24, 12, 3, 0), make_class_concepts(24, 12, 3, 1))


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_concepts=4, num_classes=7, concepts_per_class=2), 'do not exist'),
    (dict(num_concepts=12, num_classes=3, concepts_per_class=3), 'cannot use all'),
    (dict(num_concepts=3, num_classes=1, concepts_per_class=4), 'concepts_per_class'),
    (dict(num_concepts=len(CONCEPT_VOCABULARY) + 1), 'CONCEPT_VOCABULARY'),
    (dict(img_size=8), 'img_size'),
    (dict(images_per_class=0), 'images_per_class'),
    (dict(split='holdout'), 'unknown split'),
])
def test_invalid_sizes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConceptsDataset(**{'images_per_class': 1, **kwargs})


def test_building_a_split_again_reuses_the_read_only_images():
    a = ConceptsDataset('train', **SMALL)
    b = ConceptsDataset('train', transform=lambda im: im.size, **SMALL)
    assert b.images is a.images and not a.images.flags.writeable and b[0][0] == (32, 32)


def test_transform_and_target_transform_are_applied():
    ds = ConceptsDataset('val', transform=create_qpm_transform('concepts', is_training=False, img_size=32),
                         target_transform=lambda t: t + 100, **SMALL)
    x, y = ds[4]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 101


def test_mean_colour_carries_no_class_information():
    ds = ConceptsDataset('train', num_concepts=6, num_classes=8, concepts_per_class=2, img_size=32,
                         images_per_class=150)
    per_image = ds.images.reshape(len(ds), -1, 3).mean(1) / 255.0  # (N, 3)
    class_means = np.stack([per_image[np.asarray(ds.targets) == c].mean(0) for c in range(8)])
    assert np.abs(class_means - per_image.mean(0)).max() < 0.02


def _small_cnn(num_classes: int, width: int = 16) -> nn.Module:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(3, width, 2), *block(width, 2 * width, 1), *block(2 * width, 2 * width, 2),
                         *block(2 * width, 2 * width, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, num_classes))


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on busy shared cores two OpenMP threads mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_linear_model_on_pixels_is_far_below_a_small_cnn(one_torch_thread):
    """No pixel or colour gives the class away: a linear model on raw pixels stays near chance
    (1/6) while a 4-layer CNN trained for a few seconds recognises the concept pairs."""
    torch.manual_seed(0)
    kw = dict(num_concepts=4, num_classes=6, concepts_per_class=2, img_size=32, seed=1)
    train = ConceptsDataset('train', images_per_class=300, **kw)
    val = ConceptsDataset('val', images_per_class=50, **kw)

    def tensors(ds):
        return torch.tensor(ds.images).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.155), \
            torch.tensor(ds.targets)
    xt, yt = tensors(train)
    xv, yv = tensors(val)

    net = _small_cnn(6)
    epochs, bs, lr = 10, 32, 5e-3
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * ((len(xt) + bs - 1) // bs),
                                                pct_start=0.2)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), bs):
            idx = perm[i:i + bs]
            x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, xt[idx].flip(3), xt[idx])
            loss = F.cross_entropy(net(x), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        cnn_acc = (net(xv).argmax(1) == yv).float().mean().item()

    linear = RidgeClassifierCV(alphas=(1.0, 1e2, 1e4)).fit(xt.flatten(1).numpy(), yt.numpy())
    linear_acc = linear.score(xv.flatten(1).numpy(), yv.numpy())
    assert linear_acc <= 0.35, linear_acc
    assert cnn_acc >= 0.8, cnn_acc
    assert cnn_acc - linear_acc >= 0.5, (cnn_acc, linear_acc)


def test_batched_reading_gives_what_the_per_image_transforms_give():
    """``__getitems__`` (the DataLoader's batched read) equals ``__getitem__``: bit for bit for the eval transform,
    and for the training shift + flip at every offset and both flips (given the same offsets and flips)."""
    from torchvision.transforms import functional as TF

    from qpm_timm.data.transforms import ShiftFlip, batched_transform
    ds = ConceptsDataset('val', transform=create_qpm_transform('concepts', is_training=False, img_size=32),
                         target_transform=lambda t: t + 100, **SMALL)
    batch = ds.__getitems__([4, 0, 17])
    assert all(torch.equal(x, ds[i][0]) and y == ds[i][1] for (x, y), i in zip(batch, [4, 0, 17]))
    train = create_qpm_transform('concepts', is_training=True, img_size=32)
    assert isinstance(train, ShiftFlip) and batched_transform(train, (32, 32)) is not None
    images = ConceptsDataset('train', **SMALL).images[:4]
    for top in range(2 * train.padding + 1):
        for left in range(2 * train.padding + 1):
            for flip in (False, True):
                out = train.batch(torch.from_numpy(images.copy()), torch.tensor([[top, left]] * 4),
                                  torch.tensor([flip] * 4))
                for x, image in zip(out, images):
                    ref = TF.crop(TF.pad(Image.fromarray(image), train.padding, padding_mode='reflect'), top, left,
                                  32, 32)
                    ref = train.transforms[-1](TF.to_tensor(TF.hflip(ref) if flip else ref))
                    assert torch.equal(x, ref), (top, left, flip)
    torch.manual_seed(0)
    drawn = train.batch(torch.from_numpy(np.repeat(images[:1], 400, 0)))
    assert len({x.numpy().tobytes() for x in drawn}) == 2 * (2 * train.padding + 1) ** 2  # every offset and flip
    # a size the batched path does not cover (resize to another side) falls back to the per-image transform
    other = ConceptsDataset('val', transform=create_qpm_transform('concepts', is_training=False, img_size=24), **SMALL)
    assert batched_transform(other.transform, (32, 32)) is None
    assert other.__getitems__([1])[0][0].shape == (3, 24, 24)


def test_a_run_at_another_side_reads_images_resized_once_as_the_per_image_transforms_resize_them():
    """``create_qpm_split('concepts', transform_size=24)`` holds the drawings resized once (``output_size``): the
    batched reads then give exactly the tensors that the per-image transforms give on the drawings at their own
    side (train: the same shift and flip of the resized drawing; eval: timm's resize, bit for bit), and the concept
    masks are those the eval transform carries (``masks_through_transform``)."""
    from qpm_timm.data import create_qpm_split
    from qpm_timm.data.masks import masks_through_transform
    from qpm_timm.data.transforms import batched_transform
    drawn = ConceptsDataset('train', **SMALL)
    train = create_qpm_split('concepts', split='train', is_training=True, transform_size=24, **SMALL)
    assert train.images.shape[1:3] == (24, 24) and drawn.images.shape[1:3] == (32, 32)
    assert batched_transform(train.transform, train.images.shape[1:3]) is not None  # read in batches
    shift_flip = train.transform
    for seed in range(3):
        torch.manual_seed(seed)
        batch = torch.stack([x for x, _ in train.__getitems__(list(range(6)))])
        torch.manual_seed(seed)  # the batch draws its offsets and flips as the per-image transforms draw them
        offsets = torch.randint(0, 2 * shift_flip.padding + 1, (6, 2))
        flips = torch.rand(6) < 0.5
        resized = [np.asarray(Image.fromarray(drawn.images[i]).resize((24, 24), Image.BILINEAR)) for i in range(6)]
        assert torch.equal(batch, shift_flip.batch(torch.from_numpy(np.stack(resized)), offsets, flips))
    eval_transform = create_qpm_transform('concepts', is_training=False, img_size=24)
    val = create_qpm_split('concepts', split='val', transform_size=24, **SMALL)
    slow = ConceptsDataset('val', transform=eval_transform, **SMALL)
    assert all(torch.equal(x, slow[i][0]) for i, (x, _) in enumerate(val.__getitems__(list(range(6)))))
    assert np.array_equal(val.concept_masks(range(6)), masks_through_transform(
        eval_transform, torch.from_numpy(slow.concept_masks(range(6)))).numpy())
    assert val.img_size == 32 and val.output_size == 24  # drawn at the preset's side, held at the run's
    # no side asked for (validate.py sets the transform once the model is known): the drawings as drawn
    assert create_qpm_split('concepts', split='val', **SMALL).images.shape[1:3] == (32, 32)
    with pytest.raises(ValueError, match='output_size'):
        ConceptsDataset('val', output_size=0, **SMALL)


def test_masks_are_rendered_once_per_shape_and_size_and_pixels_stay_fixed():
    """The renderer's pixels are pinned (a checksum of a few images); the masks it reuses are read-only."""
    import hashlib

    from qpm_timm.data.concepts import shape_mask
    ds = ConceptsDataset('train', seed=5, **SMALL)
    assert hashlib.md5(ds.images.tobytes()).hexdigest() == PINNED_SMALL_MD5
    assert not shape_mask('disk', 9).flags.writeable and shape_mask('disk', 9) is shape_mask('disk', 9)
    turned = shape_mask('disk', 9, 30.0)
    assert turned is shape_mask('disk', 9, 30.0) and not turned.flags.writeable
