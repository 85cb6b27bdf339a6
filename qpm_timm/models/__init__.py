"""QPM architectures, registered in timm's model registry on import."""
from .adopt import from_timm_classifier, is_qpm_state_dict, load_weights
from .authors import AUTHORS_RELEASES, authors_to_qpm
from .backbone import reduce_resnet_strides
from .head import BinaryLinear, DenseHead, QPMHead, check_assignment, check_qpm_sizes, check_selection
from .load_errors import PretrainedWeightsUnavailableError  # what pretrained=True raises without weights
from .qpm import HEAD_KINDS, QPMModel, QPMOutput, create_qpm, default_cfgs
from .sparse_head import SPARSE_HEADS, SparseHead, SparseLinear
from .variants import HF_HUB_ORG, VARIANT_ARGS, VARIANTS, Variant, get_variant
