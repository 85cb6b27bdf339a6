"""create_qpm_dataset reaches every dataset name; recipe transforms and per-dataset configs."""
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN
from torchvision import transforms as T

from qpm_timm.data import (
    CONCEPTS_MEAN,
    ConceptsDataset,
    create_qpm_dataset,
    create_qpm_split,
    create_qpm_transform,
    get_class_names,
    resolve_qpm_data_config,
    with_transform,
)


def _png(path, size=(12, 10), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, colour).save(path)


def test_concepts_by_name_forwards_kwargs_and_refuses_a_root():
    ds = create_qpm_dataset('concepts', split='val', num_concepts=4, num_classes=3, concepts_per_class=2,
                            img_size=32, images_per_class=2)
    assert isinstance(ds, ConceptsDataset) and ds.split == 'val' and len(ds) == 6
    assert get_class_names(ds) == ds.classes
    with pytest.raises(ValueError, match='takes no root'):
        create_qpm_dataset('concepts', root='/data')


def test_with_transform_reads_the_same_samples_through_another_transform_without_rebuilding():
    train = create_qpm_split('concepts', split='train', is_training=True, transform_size=32, num_concepts=4,
                             num_classes=3, concepts_per_class=2, images_per_class=2)
    view = with_transform(train, T.PILToTensor())
    assert view.images is train.images and view.targets == train.targets
    assert train.transform is not view.transform and train[0][0].dtype == torch.float32  # original untouched
    image, target = view[1]
    assert torch.equal(image, torch.from_numpy(np.array(train.images[1])).permute(2, 0, 1)) and target == 0


def test_class_per_folder_tree_through_timm(tmp_path):
    for split in ('train', 'validation'):
        for cls in ('cardinal', 'albatross'):
            for i in range(2):
                _png(tmp_path / split / cls / f'{i}.png')
    for name in ('folder', 'imagenet', ''):
        ds = create_qpm_dataset(name, root=str(tmp_path), split='validation')
        assert len(ds) == 4
        assert get_class_names(ds) == ['albatross', 'cardinal']
        img, target = ds[3]
        assert img.size == (12, 10) and target == 1
    ds = create_qpm_dataset('folder', root=str(tmp_path), split='train', transform=T.ToTensor())
    assert ds[0][0].shape == (3, 10, 12)


def test_folder_and_imagenet_need_an_existing_root(tmp_path):
    with pytest.raises(ValueError, match='needs a root'):
        create_qpm_dataset('imagenet')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        create_qpm_dataset('folder', root=str(tmp_path / 'missing'))


@pytest.mark.parametrize('name, expected', [('cars', 'cars_meta.mat'), ('stanford_cars', 'cars_train'),
                                            ('aircraft', 'fgvc-aircraft-2013b'), ('fgvc_aircraft', 'variants.txt')])
def test_cars_and_aircraft_missing_files_are_named(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError, match=expected):
        create_qpm_dataset(name, root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        create_qpm_dataset(name, root=str(tmp_path / 'missing'))


def test_aircraft_reads_trainval_for_training_and_test_for_eval(tmp_path):
    data = tmp_path / 'fgvc-aircraft-2013b' / 'data'
    data.mkdir(parents=True)
    (data / 'variants.txt').write_text('707-320\nA300B4\n')
    (data / 'images_variant_trainval.txt').write_text('0001 A300B4\n0002 707-320\n0003 A300B4\n')
    (data / 'images_variant_test.txt').write_text('0004 707-320\n')
    for i in range(1, 5):
        _png(data / 'images' / f'{i:04d}.jpg')
    train = create_qpm_dataset('aircraft', root=str(tmp_path), split='train')
    test = create_qpm_dataset('aircraft', root=str(tmp_path / 'fgvc-aircraft-2013b'), split='val')
    assert train.targets == [1, 0, 1] and test.targets == [0]
    assert get_class_names(train) == ['707-320', 'A300B4'] and test[0][0].size == (12, 10)


def test_cars_reads_torchvision_layout(tmp_path):
    sio = pytest.importorskip('scipy.io')
    base = tmp_path / 'stanford_cars'
    (base / 'devkit').mkdir(parents=True)
    names = np.array(['AM General Hummer', 'Acura RL'], dtype=object)
    sio.savemat(base / 'devkit' / 'cars_meta.mat', {'class_names': names})
    annos = np.array([('00001.jpg', 2), ('00002.jpg', 1)], dtype=[('fname', object), ('class', np.uint8)])
    sio.savemat(base / 'devkit' / 'cars_train_annos.mat', {'annotations': annos})
    for name in ('00001.jpg', '00002.jpg'):
        _png(base / 'cars_train' / name)
    ds = create_qpm_dataset('cars', root=str(tmp_path), split='train')
    assert ds.targets == [1, 0] and get_class_names(ds) == ['AM General Hummer', 'Acura RL']
    assert ds[0][1] == 1 and ds[0][0].size == (12, 10)
    with pytest.raises(FileNotFoundError, match='cars_test_annos_withlabels.mat'):
        create_qpm_dataset('cars', root=str(base), split='test')


@pytest.mark.parametrize('split, expected', [('training', 'train'), ('test', 'val'), ('eval', 'val'),
                                             ('evaluation', 'val')])
def test_concepts_accepts_every_split_name_of_the_shared_table(split, expected):
    ds = create_qpm_dataset('concepts', split=split, num_concepts=4, num_classes=3, concepts_per_class=2,
                            img_size=32, images_per_class=1)
    assert ds.split == expected


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match='unknown split'):
        create_qpm_dataset('aircraft', root=str(tmp_path), split='holdout')
    with pytest.raises(ValueError, match='unknown split'):
        create_qpm_dataset('concepts', split='holdout')


def test_per_dataset_configs():
    assert resolve_qpm_data_config('concepts').img_size == 64
    assert resolve_qpm_data_config('concepts').mean == CONCEPTS_MEAN
    assert resolve_qpm_data_config('CUB2011').num_classes == 200
    assert resolve_qpm_data_config('cars').num_classes == 196
    assert resolve_qpm_data_config('fgvc-aircraft').num_classes == 100
    assert resolve_qpm_data_config('my_folder').mean == IMAGENET_DEFAULT_MEAN


@pytest.mark.parametrize('name, crop', [('cub', True), ('cub', False), ('cars', True), ('aircraft', True),
                                        ('folder', True), ('imagenet', True), ('concepts', True)])
def test_transforms_give_the_configured_size(name, crop):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8))
    size = 48
    for is_training in (True, False):
        out = create_qpm_transform(name, is_training, img_size=size, crop_to_bbox=crop)(img)
        assert isinstance(out, torch.Tensor) and out.shape == (3, size, size)


def test_recipe_augmentations_for_natural_images_and_none_that_change_concepts():
    ops = [type(t) for t in create_qpm_transform('cub', is_training=True).transforms]
    assert T.TrivialAugmentWide in ops and T.RandomHorizontalFlip in ops and T.ColorJitter in ops
    jitter = next(t for t in create_qpm_transform('cars', True).transforms if isinstance(t, T.ColorJitter))
    assert jitter.brightness == (0.9, 1.1) and jitter.contrast == (0.9, 1.1) and jitter.saturation == (0.9, 1.1)
    assert T.RandomCrop in [type(t) for t in create_qpm_transform('cars', True).transforms]
    concept_ops = [type(t) for t in create_qpm_transform('concepts', True).transforms]
    assert T.TrivialAugmentWide not in concept_ops and T.ColorJitter not in concept_ops
    for name in ('cub', 'concepts', 'imagenet'):
        evaluate = create_qpm_transform(name, is_training=False)
        img = Image.new('RGB', (70, 64), (10, 200, 90))
        assert torch.equal(evaluate(img), evaluate(img))
