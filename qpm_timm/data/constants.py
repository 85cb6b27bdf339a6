"""Plain dataset constants (as timm's ``timm/data/constants.py``): pixel mean/std per dataset and the generated
concepts dataset's defaults. :mod:`qpm_timm.data.configs` builds every dataset's data config from them."""

__all__ = ['CONCEPTS_MEAN', 'CONCEPTS_STD', 'CONCEPTS_NUM_CLASSES', 'CONCEPTS_IMG_SIZE', 'CUB_MEAN', 'CUB_STD',
           'CARS_MEAN', 'CARS_STD', 'AIRCRAFT_MEAN', 'AIRCRAFT_STD']

# The generated concepts dataset (qpm_timm/data/concepts.py): per-channel pixel mean/std of the default dataset
# (measured over the default train split, 0..1 scale; colours are symmetric around 0.5 by construction), its default
# number of classes (why 48: that module's docstring) and image side in pixels.
CONCEPTS_MEAN = (0.5, 0.5, 0.5)
CONCEPTS_STD = (0.155, 0.155, 0.155)
CONCEPTS_NUM_CLASSES = 48
CONCEPTS_IMG_SIZE = 64

# Per-dataset pixel statistics as used by the authors (configs/dataset_params.py of ThomasNorr/QPM); ImageNet's are
# timm's IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD.
CUB_MEAN = (0.4853, 0.4964, 0.4295)
CUB_STD = (0.2300, 0.2258, 0.2625)
CARS_MEAN = (0.4593, 0.4466, 0.4453)
CARS_STD = (0.2920, 0.2910, 0.2988)
AIRCRAFT_MEAN = (0.4827, 0.5130, 0.5352)
AIRCRAFT_STD = (0.2236, 0.2170, 0.2478)
