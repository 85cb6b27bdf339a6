"""CUB-200-2011 read from its native folder format (tiny generated tree)."""
import os

import numpy as np
import pytest
from PIL import Image

from qpm_timm.data import CUB200Dataset, create_qpm_dataset, create_qpm_split, cub_readable_name, get_class_names

CLASSES = ['001.Black_footed_Albatross', '002.Laysan_Albatross', '003.Sooty_Albatross']
# image_id: (class_id, is_train, (x, y, w, h), image size (w, h))
IMAGES = {
    1: (1, 1, (3, 5, 20, 10), (40, 30)),
    2: (1, 0, (0, 0, 16, 16), (16, 16)),
    3: (2, 1, (10, 2, 7, 25), (32, 32)),
    4: (2, 0, (4, 4, 12, 8), (24, 20)),
    5: (3, 1, (1, 1, 30, 20), (36, 28)),
    6: (3, 0, (2, 6, 9, 9), (20, 20)),
}


def make_cub_tree(parent, attributes=True):
    """Write a CUB_200_2011 folder under ``parent``; each image has a distinct colour per id."""
    folder = parent / 'CUB_200_2011'
    lines = {k: [] for k in ('images', 'image_class_labels', 'train_test_split', 'bounding_boxes')}
    for image_id, (class_id, is_train, box, size) in IMAGES.items():
        rel = f'{CLASSES[class_id - 1]}/img_{image_id:04d}.png'
        path = folder / 'images' / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new('RGB', size, (image_id * 40, 255 - image_id * 30, 7)).save(path)
        lines['images'].append(f'{image_id} {rel}')
        lines['image_class_labels'].append(f'{image_id} {class_id}')
        lines['train_test_split'].append(f'{image_id} {is_train}')
        lines['bounding_boxes'].append(f'{image_id} ' + ' '.join(f'{v:.1f}' for v in box))
    for name, rows in lines.items():
        (folder / f'{name}.txt').write_text('\n'.join(rows) + '\n')
    (folder / 'classes.txt').write_text(''.join(f'{i + 1} {c}\n' for i, c in enumerate(CLASSES)))
    if attributes:
        (folder / 'attributes').mkdir()
        matrix = np.arange(len(CLASSES) * 4, dtype=float).reshape(len(CLASSES), 4) * 2.5
        np.savetxt(folder / 'attributes' / 'class_attribute_labels_continuous.txt', matrix, fmt='%.6f')
        (parent / 'attributes.txt').write_text(''.join(f'{i + 1} has_part::colour_{i}\n' for i in range(4)))
    return folder


def test_reads_train_and_test_split_with_readable_class_names(tmp_path):
    folder = make_cub_tree(tmp_path)
    train = CUB200Dataset(str(tmp_path), split='train', crop_to_bbox=False)
    test = CUB200Dataset(str(folder), split='test', crop_to_bbox=False)  # the CUB folder itself also works
    assert train.image_ids == [1, 3, 5] and test.image_ids == [2, 4, 6]
    assert train.targets == [0, 1, 2] and test.targets == [0, 1, 2]
    assert train.classes == ['Black footed Albatross', 'Laysan Albatross', 'Sooty Albatross']
    assert train.class_folders == CLASSES
    img, target = train[1]
    assert target == 1 and img.size == IMAGES[3][3] and img.getpixel((0, 0)) == (120, 165, 7)
    np.testing.assert_allclose(train.boxes, [IMAGES[i][2] for i in (1, 3, 5)])


def test_crop_returns_the_ground_truth_box(tmp_path):
    make_cub_tree(tmp_path)
    for split, ids in (('train', (1, 3, 5)), ('test', (2, 4, 6))):
        ds = CUB200Dataset(str(tmp_path), split=split, crop_to_bbox=True)
        for index, image_id in enumerate(ids):
            img, _ = ds[index]
            x, y, w, h = IMAGES[image_id][2]
            assert img.size == (w, h)


def test_crop_box_is_clipped_to_the_image(tmp_path):
    make_cub_tree(tmp_path)
    ds = CUB200Dataset(str(tmp_path), split='train')
    ds.boxes[0] = (-3.0, 25.0, 100.0, 100.0)  # partly outside the 40 x 30 image
    assert ds.crop_box(0, (40, 30)) == (0, 25, 40, 30)
    assert ds[0][0].size == (40, 5)


def test_class_attribute_matrix_and_names_are_exposed(tmp_path):
    make_cub_tree(tmp_path)
    ds = CUB200Dataset(str(tmp_path))
    assert ds.class_attributes.shape == (3, 4) and ds.class_attributes[2, 3] == 27.5
    assert ds.attribute_names == [f'has_part::colour_{i}' for i in range(4)]


def test_per_image_attributes_are_read_for_the_split_and_name_features(tmp_path):
    folder = make_cub_tree(tmp_path)
    # <image_id> <attribute_id> <is_present> <certainty_id> <time>; the official file has a few lines with an
    # extra field, which must not matter
    rows = [f'{i} {a} {int((i + a) % 3 == 0)} 3 12.5' + (' 7' if (i, a) == (3, 2) else '')
            for i in IMAGES for a in range(1, 5)]
    (folder / 'attributes' / 'image_attribute_labels.txt').write_text('\n'.join(rows) + '\n')
    test = CUB200Dataset(str(tmp_path), split='test', crop_to_bbox=False)
    expected = np.array([[(i + a) % 3 == 0 for a in range(1, 5)] for i in (2, 4, 6)])
    np.testing.assert_array_equal(test.image_attributes(), expected)
    from qpm_timm.explain import dataset_annotations
    values, names, source = dataset_annotations(test)
    np.testing.assert_array_equal(values, expected)
    assert names == [f'has_part::colour_{i}' for i in range(4)] and source == 'per-image attributes'
    assert CUB200Dataset(str(make_cub_tree(tmp_path / 'plain')), split='test').image_attributes() is None


def test_attributes_are_optional(tmp_path):
    make_cub_tree(tmp_path, attributes=False)
    ds = CUB200Dataset(str(tmp_path))
    assert ds.class_attributes is None and ds.attribute_names is None


@pytest.mark.parametrize('filename', ['images.txt', 'image_class_labels.txt', 'train_test_split.txt',
                                      'bounding_boxes.txt', 'classes.txt'])
def test_missing_file_is_named(tmp_path, filename):
    folder = make_cub_tree(tmp_path)
    os.remove(folder / filename)
    with pytest.raises(FileNotFoundError, match=filename):
        CUB200Dataset(str(tmp_path))


@pytest.mark.parametrize('filename, bad_line, message', [
    ('bounding_boxes.txt', '3 10.0 2.0 7.0', r'bounding_boxes.txt line 3'),
    ('bounding_boxes.txt', '3 10.0 2.0 seven 25.0', r'bounding_boxes.txt line 3'),
    ('image_class_labels.txt', '3 two', r'image_class_labels.txt line 3'),
    ('train_test_split.txt', '3', r'train_test_split.txt line 3'),
])
def test_malformed_line_names_file_and_line(tmp_path, filename, bad_line, message):
    folder = make_cub_tree(tmp_path)
    rows = (folder / filename).read_text().splitlines()
    rows[2] = bad_line
    (folder / filename).write_text('\n'.join(rows) + '\n')
    with pytest.raises(ValueError, match=message):
        CUB200Dataset(str(tmp_path))


def test_image_id_missing_from_a_table_is_named(tmp_path):
    folder = make_cub_tree(tmp_path)
    rows = (folder / 'bounding_boxes.txt').read_text().splitlines()
    (folder / 'bounding_boxes.txt').write_text('\n'.join(rows[:-1]) + '\n')
    with pytest.raises(ValueError, match=r'image id 6 .*bounding_boxes.txt'):
        CUB200Dataset(str(tmp_path), split='test')


def test_missing_image_and_wrong_root_are_named(tmp_path):
    folder = make_cub_tree(tmp_path)
    os.remove(folder / 'images' / CLASSES[2] / 'img_0005.png')
    with pytest.raises(FileNotFoundError, match='img_0005.png'):
        CUB200Dataset(str(tmp_path), split='train')
    with pytest.raises(FileNotFoundError, match='images.txt'):
        CUB200Dataset(str(folder / 'images'))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        CUB200Dataset(str(tmp_path / 'nowhere'))


def test_factory_reaches_cub_with_transform_and_class_names(tmp_path):
    make_cub_tree(tmp_path)
    ds = create_qpm_dataset('cub', root=str(tmp_path), split='validation', transform=lambda im: im.size)
    assert ds.split == 'test' and ds[0] == ((16, 16), 0)
    assert get_class_names('CUB2011', root=str(tmp_path))[0] == 'Black footed Albatross'


def test_split_transform_follows_the_datasets_crop_to_bbox(tmp_path):
    make_cub_tree(tmp_path)
    cropped = create_qpm_split('cub', str(tmp_path), 'test', transform_size=8)
    whole = create_qpm_split('cub', str(tmp_path), 'test', transform_size=8, crop_to_bbox=False)
    assert cropped.crop_to_bbox and not whole.crop_to_bbox
    wide = Image.new('RGB', (80, 40), (128, 128, 128))
    wide.paste((255, 0, 0), (0, 0, 16, 40))  # a red band at the left edge
    assert cropped.transform(wide)[0, :, 0].min() > 1  # box crop: squashed, the left edge is kept
    assert whole.transform(wide)[0, :, 0].max() < 1  # whole image: center-cropped, the edge is cut away
    assert cropped[0][0].shape == whole[0][0].shape == (3, 8, 8)


@pytest.mark.parametrize('split, expected', [('training', 'train'), ('val', 'test'), ('eval', 'test'),
                                             ('evaluation', 'test')])
def test_every_split_name_of_the_shared_table_is_accepted(tmp_path, split, expected):
    make_cub_tree(tmp_path)
    assert CUB200Dataset(str(tmp_path), split=split).split == expected


def test_readable_name_strips_the_number_prefix():
    assert cub_readable_name('200.Common_Yellowthroat') == 'Common Yellowthroat'
    assert cub_readable_name('Plain_Name') == 'Plain Name'


def test_segmentations_give_the_bird_masks_cropped_like_the_images(tmp_path):
    folder = make_cub_tree(tmp_path)
    segmentations = tmp_path / 'segmentations'
    for image_id, (class_id, _, _, (w, h)) in IMAGES.items():
        seg = np.zeros((h, w), dtype=np.uint8)
        seg[2:9, 4:15] = 51 * image_id % 256 or 1  # one annotator's grey level or more: the bird
        path = segmentations / CLASSES[class_id - 1] / f'img_{image_id:04d}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(seg).save(path)
    full = CUB200Dataset(str(tmp_path), split='train', crop_to_bbox=False, segmentations=str(segmentations))
    (mask,) = full.object_masks([0])  # image 1, 40 x 30
    assert mask.shape == (30, 40) and mask.sum() == 7 * 11 and mask[2:9, 4:15].all()
    cropped = CUB200Dataset(str(tmp_path), split='train', segmentations=str(segmentations))
    (crop,) = cropped.object_masks([0])  # box x 3, y 5, w 20, h 10
    assert crop.shape == (10, 20) and np.array_equal(crop, mask[5:15, 3:23])
    with pytest.raises(ValueError, match='no segmentations'):
        CUB200Dataset(str(folder), split='train').object_masks([0])
    (segmentations / CLASSES[0] / 'img_0001.png').unlink()
    with pytest.raises(FileNotFoundError, match='segmentation file'):
        CUB200Dataset(str(tmp_path), split='train', segmentations=str(segmentations))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        CUB200Dataset(str(tmp_path), split='train', segmentations=str(tmp_path / 'nowhere'))
