"""CUB-200-2011 read from its native folder format, with the ground-truth bounding-box crop.

Expected files in the ``CUB_200_2011`` folder (``root`` may be that folder or its parent):
``images.txt`` (``<image_id> <relative path>``), ``image_class_labels.txt`` (``<image_id>
<class_id>``), ``train_test_split.txt`` (``<image_id> <is_training_image>``),
``bounding_boxes.txt`` (``<image_id> <x> <y> <width> <height>``), ``classes.txt`` (``<class_id>
<folder name>``) and the images under ``images/``. Optional: ``attributes/
class_attribute_labels_continuous.txt`` (one row of attribute percentages per class, needed by
the Structural Grounding metric), ``attributes/image_attribute_labels.txt`` (per-image attributes, which name
the features of the explanations) and ``attributes.txt`` (``<attribute_id> <name>``, found in
``attributes/``, the CUB folder or its parent, where the official archive puts it). The segmentations of the
birds (the release's separate ``segmentations/`` folder: ``<class folder>/<image name>.png``, grey levels of the
annotators' agreement) are read when their folder is given (``segmentations=``): :meth:`CUB200Dataset.object_masks`.
"""
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from .splits import is_train_split

__all__ = ['CUB200Dataset', 'find_cub_folder', 'cub_readable_name']

CUB_FOLDER = 'CUB_200_2011'


def find_cub_folder(root: str) -> str:
    """The folder holding ``images.txt``: ``root`` itself or ``root/CUB_200_2011``."""
    if root is None:
        raise ValueError('CUB-200-2011 needs root= (the CUB_200_2011 folder or its parent).')
    for candidate in (root, os.path.join(root, CUB_FOLDER)):
        if os.path.isfile(os.path.join(candidate, 'images.txt')):
            return candidate
    if not os.path.isdir(root):
        raise FileNotFoundError(f'CUB-200-2011 root {root!r} does not exist.')
    raise FileNotFoundError(
        f'CUB-200-2011: missing images.txt: neither {os.path.join(root, "images.txt")!r} nor '
        f'{os.path.join(root, CUB_FOLDER, "images.txt")!r} exists; pass the CUB_200_2011 folder or its parent.')


def cub_readable_name(folder_name: str) -> str:
    """``'001.Black_footed_Albatross'`` -> ``'Black footed Albatross'``."""
    number, dot, rest = folder_name.partition('.')
    name = rest if dot and number.isdigit() else folder_name
    return name.replace('_', ' ')


def _read_table(folder: str, filename: str, field_desc: str, casts: Sequence[Callable]) -> Dict[int, tuple]:
    """``{id: (casted fields...)}`` of a whitespace-separated CUB text file (an id, then one field per cast;
    the last field keeps spaces); a malformed line names the file and line."""
    n_fields = len(casts) + 1
    path = os.path.join(folder, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'CUB-200-2011: missing file {path!r}.')
    rows = []
    with open(path, 'r', encoding='utf-8') as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split(None, n_fields - 1)
            if len(fields) != n_fields:
                raise ValueError(f'CUB-200-2011: malformed {filename} line {line_no}: expected '
                                 f'"{field_desc}", got {line!r}.')
            rows.append((line_no, fields))
    if not rows:
        raise ValueError(f'CUB-200-2011: {path!r} is empty.')
    return _parse(rows, filename, casts)


def _parse(rows: List[Tuple[int, List[str]]], filename: str, casts: Sequence[Callable]) -> Dict[int, tuple]:
    """``{id: (casted fields...)}``; a value that does not parse names the file and line."""
    out = {}
    for line_no, row in rows:
        try:
            key = int(row[0])
            values = tuple(cast(v) for cast, v in zip(casts, row[1:]))
        except ValueError:
            raise ValueError(f'CUB-200-2011: malformed {filename} line {line_no}: {" ".join(row)!r}.') from None
        if key in out:
            raise ValueError(f'CUB-200-2011: duplicate id {key} in {filename} line {line_no}.')
        out[key] = values
    return out


def _lookup(table: Dict[int, tuple], image_id: int, filename: str) -> tuple:
    if image_id not in table:
        raise ValueError(f'CUB-200-2011: image id {image_id} of images.txt is missing from {filename}.')
    return table[image_id]


class CUB200Dataset(Dataset):
    """CUB-200-2011 (200 bird species), optionally cropped to the ground-truth bounding boxes.

    Args:
        root: the ``CUB_200_2011`` folder or its parent.
        split: ``'train'`` or ``'test'`` (any name of :mod:`.splits`: ``'val'``, ``'eval'``... mean ``'test'``).
        crop_to_bbox: crop every image to its ground-truth bounding box (the authors' CUB recipe).
        transform / target_transform: applied in ``__getitem__``.
        loader: path -> PIL image (RGB).
        segmentations: the release's ``segmentations`` folder (or None): the bird masks of
            :meth:`object_masks` (docs/METHOD.md, "Explanation metrics").

    Attributes: ``samples`` [(path, target)], ``targets``, ``classes`` (readable names,
    ``'Black footed Albatross'``), ``class_folders`` (``'001.Black_footed_Albatross'``),
    ``class_to_idx``, ``image_ids``, ``boxes`` (N, 4) float ``x, y, width, height`` in pixels,
    ``class_attributes`` (C, A) float64 attribute percentages or None, ``attribute_names`` or None.
    """

    def __init__(
            self,
            root: str,
            split: str = 'train',
            crop_to_bbox: bool = True,
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
            loader: Callable = default_loader,
            segmentations: Optional[str] = None,
    ):
        self.folder = find_cub_folder(root)
        is_training_image = int(is_train_split(split))
        self.split = 'train' if is_training_image else 'test'
        self.crop_to_bbox = crop_to_bbox
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader

        class_rows = _read_table(self.folder, 'classes.txt', '<class_id> <class_name>', (str,))
        class_ids = sorted(class_rows)
        if class_ids != list(range(1, len(class_ids) + 1)):
            raise ValueError(f'CUB-200-2011: classes.txt must number the classes 1..{len(class_ids)}.')
        self.class_folders = [class_rows[i][0] for i in class_ids]
        self.classes = [cub_readable_name(name) for name in self.class_folders]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

        images = _read_table(self.folder, 'images.txt', '<image_id> <image_name>', (str,))
        labels = _read_table(self.folder, 'image_class_labels.txt', '<image_id> <class_id>', (int,))
        is_train = _read_table(self.folder, 'train_test_split.txt', '<image_id> <is_training_image>', (int,))
        boxes = _read_table(self.folder, 'bounding_boxes.txt', '<image_id> <x> <y> <width> <height>', (float,) * 4)

        self.image_ids: List[int] = []
        self.samples: List[Tuple[str, int]] = []
        box_list = []
        for image_id in sorted(images):
            if _lookup(is_train, image_id, 'train_test_split.txt')[0] != is_training_image:
                continue
            class_id = _lookup(labels, image_id, 'image_class_labels.txt')[0]
            if not 1 <= class_id <= len(self.classes):
                raise ValueError(f'CUB-200-2011: image id {image_id} has class {class_id} in image_class_labels.txt, '
                                 f'not in classes.txt (1..{len(self.classes)}).')
            box = _lookup(boxes, image_id, 'bounding_boxes.txt')
            if box[2] <= 0 or box[3] <= 0:
                raise ValueError(f'CUB-200-2011: image id {image_id} has an empty box {box} in bounding_boxes.txt.')
            self.image_ids.append(image_id)
            self.samples.append((os.path.join(self.folder, 'images', images[image_id][0]), class_id - 1))
            box_list.append(box)
        if not self.samples:
            raise ValueError(f'CUB-200-2011: no {self.split} images in {self.folder!r} (train_test_split.txt).')
        missing = [path for path, _ in self.samples if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(f'CUB-200-2011: {len(missing)} image file(s) listed in images.txt are missing, '
                                    f'e.g. {missing[0]!r}.')
        self.targets = [t for _, t in self.samples]
        self.boxes = np.asarray(box_list, dtype=np.float64).reshape(-1, 4)
        self.segmentations = None if segmentations is None else self._segmentation_paths(segmentations)
        self.class_attributes, self.attribute_names = self._load_attributes()

    def _load_attributes(self) -> Tuple[Optional[np.ndarray], Optional[List[str]]]:
        """The optional class x attribute matrix (percent of images showing each attribute)."""
        path = os.path.join(self.folder, 'attributes', 'class_attribute_labels_continuous.txt')
        if not os.path.isfile(path):
            return None, None
        try:
            matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise ValueError(f'CUB-200-2011: malformed {path!r}: {e}') from None
        if matrix.shape[0] != len(self.classes):
            raise ValueError(f'CUB-200-2011: {path!r} has {matrix.shape[0]} rows, expected one per class '
                             f'({len(self.classes)}).')
        names = None
        for folder in (os.path.join(self.folder, 'attributes'), self.folder, os.path.dirname(self.folder)):
            if os.path.isfile(os.path.join(folder, 'attributes.txt')):
                rows = _read_table(folder, 'attributes.txt', '<attribute_id> <attribute_name>', (str,))
                names = [rows[i][0] for i in sorted(rows)]
                if len(names) != matrix.shape[1]:
                    raise ValueError(f'CUB-200-2011: attributes.txt names {len(names)} attributes, '
                                     f'class_attribute_labels_continuous.txt has {matrix.shape[1]} columns.')
                break
        return matrix, names

    def image_attributes(self) -> Optional[np.ndarray]:
        """``(N, A)`` bool: the attributes annotators marked present in each image of this split (CUB's
        ``attributes/image_attribute_labels.txt``: ``<image_id> <attribute_id> <is_present> ...``), or None
        without that file. Read on first use (3.7 million lines), then kept."""
        if not hasattr(self, '_image_attributes'):
            path = os.path.join(self.folder, 'attributes', 'image_attribute_labels.txt')
            self._image_attributes = None
            if os.path.isfile(path):
                try:
                    rows = np.loadtxt(path, usecols=(0, 1, 2), dtype=np.int64, ndmin=2)
                except ValueError as e:
                    raise ValueError(f'CUB-200-2011: malformed {path!r}: {e}') from None
                present = np.zeros((max(rows[:, 0].max(), max(self.image_ids)) + 1, rows[:, 1].max()), dtype=bool)
                present[rows[:, 0], rows[:, 1] - 1] = rows[:, 2] > 0
                self._image_attributes = present[self.image_ids]
        return self._image_attributes

    def _segmentation_paths(self, folder: str) -> List[str]:
        """The segmentation file of every image (``<folder>/<image path under images/, as .png>``); all must exist."""
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'CUB-200-2011: segmentations folder {folder!r} does not exist; give the '
                                    "release's segmentations/ folder.")
        images = os.path.join(self.folder, 'images')
        paths = [os.path.join(folder, os.path.splitext(os.path.relpath(path, images))[0] + '.png')
                 for path, _ in self.samples]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(f'CUB-200-2011: {len(missing)} segmentation file(s) missing from {folder!r}, '
                                    f'e.g. {missing[0]!r}.')
        return paths

    def object_masks(self, indices: Sequence[int]) -> List[np.ndarray]:
        """The bird of each image ``indices``, ``(H, W)`` bool per image, where any annotator marked it (grey level
        above 0), cropped like the image (``crop_to_bbox``); needs ``segmentations=``."""
        if self.segmentations is None:
            raise ValueError('CUB-200-2011: no segmentations; build the dataset with segmentations=<the '
                             "release's segmentations/ folder> (--dataset-args \"{segmentations: PATH}\").")
        masks = []
        for index in indices:
            with Image.open(self.segmentations[index]) as seg, Image.open(self.samples[index][0]) as img:
                seg, image_size = seg.convert('L'), img.size
                if seg.size != image_size:
                    raise ValueError(f'CUB-200-2011: segmentation {self.segmentations[index]!r} is {seg.size}, its '
                                     f'image {image_size}.')
                if self.crop_to_bbox:
                    seg = seg.crop(self.crop_box(index, seg.size))
                masks.append(np.asarray(seg) > 0)
        return masks

    def crop_box(self, index: int, size: Tuple[int, int]) -> Tuple[int, int, int, int]:
        """Integer ``(left, top, right, bottom)`` of the ground-truth box, clipped to ``size=(w, h)``."""
        x, y, w, h = self.boxes[index]
        left, top = max(0, int(round(x))), max(0, int(round(y)))
        right, bottom = min(size[0], int(round(x + w))), min(size[1], int(round(y + h)))
        return left, top, max(right, left + 1), max(bottom, top + 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        img = self.loader(path)
        if self.crop_to_bbox:
            img = img.crop(self.crop_box(index, img.size))
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(folder={self.folder!r}, split={self.split!r}, '
                f'crop_to_bbox={self.crop_to_bbox}, images={len(self)}, classes={len(self.classes)})')
