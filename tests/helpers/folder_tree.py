"""A class-per-folder image tree of random pictures (timm's ``ImageFolder`` layout), for tests and device checks."""
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def make_folder_tree(root, classes: int = 4, per_class: int = 2, splits: Sequence[str] = ('train', 'val'),
                     size=(40, 56), seed: int = 0) -> Path:
    """``root/<split>/c<k>/<i>.png``; image ``i`` is ``size`` plus ``7 * i`` rows (non-square, varying)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in splits:
        for c in range(classes):
            folder = root / split / f'c{c}'
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size[0] + 7 * i, size[1], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f'{i}.png')
    return root


if __name__ == '__main__':  # python tests/helpers/folder_tree.py ROOT CLASSES PER_CLASS HEIGHT WIDTH
    import sys
    make_folder_tree(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), size=(int(sys.argv[4]), int(sys.argv[5])))
