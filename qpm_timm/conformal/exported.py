""" The prediction-set calibration exported beside a model's weights (``prediction_sets.json``, written by
:func:`qpm_timm.hub.save_pretrained`)."""
from typing import Optional

from ..hub import CALIBRATION_NAME, exported_file
from ..models.assignment import assignment_digest
from ..models.qpm import QPMModel
from .calibration import Calibration

__all__ = ['load_calibration']


def load_calibration(model: QPMModel) -> Optional[Calibration]:
    """The prediction-set calibration exported with ``model``'s weights (:func:`qpm_timm.hub.exported_file`), or
    None when its export has none. A calibration made for another assignment is refused."""
    path = exported_file(model, CALIBRATION_NAME)
    if path is None:
        return None
    calibration = Calibration.from_json(path.read_text())
    if calibration.assignment != assignment_digest(model.class_weights.detach().cpu()):
        raise ValueError(f'{path} calibrates another class x feature assignment than this model\'s; recalibrate '
                         f'(qpm_timm.conformal.calibrate) and export again.')
    return calibration
