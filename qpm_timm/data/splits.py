"""Split names, one table for every dataset: the training split and the evaluation split (CUB, Cars and
Aircraft only have a test split, which serves as validation)."""

__all__ = ['TRAIN_SPLITS', 'EVAL_SPLITS', 'is_train_split']

TRAIN_SPLITS = ('train', 'training')
EVAL_SPLITS = ('val', 'validation', 'test', 'eval', 'evaluation')


def is_train_split(split: str) -> bool:
    """True for a training split name, False for an evaluation one; ValueError naming the choices otherwise."""
    if split in TRAIN_SPLITS:
        return True
    if split in EVAL_SPLITS:
        return False
    raise ValueError(f'unknown split {split!r}; use one of {TRAIN_SPLITS + EVAL_SPLITS}.')
