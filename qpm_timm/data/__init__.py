"""Datasets and transforms of qpm-timm: the generated concepts dataset, CUB-200-2011, Stanford Cars,
FGVC-Aircraft and anything timm's ``create_dataset`` reads, behind one factory."""
from .concepts import CONCEPT_VOCABULARY, ConceptsDataset, make_class_concepts
from .constants import (
    AIRCRAFT_MEAN,
    AIRCRAFT_STD,
    CARS_MEAN,
    CARS_STD,
    CONCEPTS_IMG_SIZE,
    CONCEPTS_MEAN,
    CONCEPTS_NUM_CLASSES,
    CONCEPTS_STD,
    CUB_MEAN,
    CUB_STD,
)
from .cub import CUB200Dataset, cub_readable_name, find_cub_folder
from .dataset_factory import (
    FGVCAircraftDataset,
    StanfordCarsDataset,
    create_qpm_dataset,
    create_qpm_split,
    get_class_names,
    with_transform,
)
from .feature_cache import (
    FeatureCache,
    build_feature_cache,
    cache_key,
    ensure_feature_cache,
    feature_cache_bytes,
    open_feature_cache,
)
from .loader import create_qpm_loader
from .transforms import QPMDataConfig, create_qpm_transform, qpm_data_config, resolve_qpm_data_config
