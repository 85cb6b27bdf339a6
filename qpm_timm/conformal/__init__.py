""" CHiQPM's interpretable prediction sets for any QPM, the APS / LAC baselines and their metrics
(docs/METHOD.md, "CHiQPM prediction sets and trees")."""
from .baselines import BASELINES, baseline_sets
from .calibration import (
    CALIBRATION_PER_CLASS,
    DEFAULT_TARGETS,
    Calibration,
    calibrate,
    calibration_split,
    check_labels,
    check_targets,
    conformal_rank,
    predict_sets,
)
from .evaluation import (
    METHODS,
    compare_sets,
    cosine_similarity,
    coverage_over_splits,
    coverage_slack,
    flat_results,
    format_table,
    jaccard_similarity,
    set_coherence,
    set_metrics,
)
from .exported import load_calibration
from .hierarchy import (
    SetInputs,
    class_members,
    class_paths,
    feature_floor,
    hierarchical_scores,
    set_inputs,
    shared_prefix,
)
from .tree import prediction_tree
