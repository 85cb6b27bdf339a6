"""The compact baselines QPM is compared with (docs/METHOD.md, "Baselines"): glm-saga alone, SLDD-Model and Q-SENN,
each a sparse linear layer fitted by glm-saga's regularisation paths on the dense model's pooled training features
(:class:`PooledFeatures`, collected on the QPM statistics pass) and returned as a :class:`SparseLayer`, the content of
a :class:`~qpm_timm.models.sparse_head.SparseHead`. glm-saga is the ``[baselines]`` extra."""
from .features import VAL_FRACTION, FeatureCollector, PooledFeatures, fit_split
from .glm import fit_glm
from .layer import SparseLayer, normalised
from .path import ELASTIC_NET, GROUP_SELECTION, PathPoint, PathSettings, import_glm_saga, regularization_path
from .qsenn import QSENN_ROUND_LR_DECAY, QSENN_ROUNDS, count_bias, fit_qsenn_round, quantise
from .sldd import (
    SLDD_DENSITY,
    check_selection_size,
    fit_sldd,
    keep_largest,
    select_features,
    select_from_features,
    sparsest_enough,
)

__all__ = ['VAL_FRACTION', 'FeatureCollector', 'PooledFeatures', 'fit_split', 'fit_glm', 'SparseLayer', 'normalised',
           'ELASTIC_NET', 'GROUP_SELECTION', 'PathPoint', 'PathSettings', 'import_glm_saga', 'regularization_path',
           'QSENN_ROUND_LR_DECAY', 'QSENN_ROUNDS', 'count_bias', 'fit_qsenn_round', 'quantise', 'SLDD_DENSITY',
           'check_selection_size', 'fit_sldd', 'keep_largest', 'select_features', 'select_from_features',
           'sparsest_enough']
