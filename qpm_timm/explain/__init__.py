""" Explanations of a QPM a person can look at (docs/EXPLANATIONS.md).

* :mod:`qpm_timm.models.assignment` -- the class -> feature table (text), re-exported here;
* :mod:`.local` -- why an image got its logits (each feature's exact contribution and its map);
* :mod:`.gallery` -- every feature's most activating images and patches, collected in one streaming pass
  (rides along the training run's statistics pass);
* :mod:`.naming` -- feature names from the dataset's annotations (concepts, CUB attributes);
* :mod:`.heatmap` -- heatmaps and the colour of every feature;
* :mod:`.contrastive` -- class pairs that differ in one feature each;
* :mod:`.scan`, :mod:`.figures`, :mod:`.report` -- one validation pass, the pictures (PNG + JSON) and the HTML
  report (:func:`write_report`), which composes :mod:`.pictures` (the report's pictures), :mod:`.drawing` (worker
  processes that draw them) and :mod:`.page` (report.json and index.html).
"""
from ..models.assignment import class_feature_table, class_features, feature_names, model_feature_table
from .contrastive import contrastive_pairs, difference_contributions, pair_features, resolve_class, spread_pairs
from .gallery import FeatureGallery, GalleryCollector, patch_box
from .heatmap import active_values, data_normalization, denormalize, feature_colours, heatmaps, overlay
from .local import Explanation, class_evidence, explain, explain_top, require_qpm
from .naming import FeatureNames, dataset_annotations, name_features
from .report import Report, check_report_folder, load_images, write_report
from .scan import DatasetScan, class_examples, scan_dataset
