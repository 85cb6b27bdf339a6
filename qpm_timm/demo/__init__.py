""" A Gradio demo of a QPM and its Hugging Face Space (docs/EXPLANATIONS.md, "The demo").

* :mod:`.analysis` -- what the demo shows for one image, without any user interface;
* :mod:`.app` -- the Gradio app (``build_app``, ``launch``); Gradio is the optional extra ``demo``;
* :mod:`.editing` -- "switch this feature off": a re-solve by :mod:`qpm_timm.edit` on the run's statistics;
* :mod:`.sets` -- the prediction set and its tree, when the model carries a calibration;
* :mod:`.space` -- ``export-space``: a folder that runs as a Hugging Face Space unchanged;
* ``python -m qpm_timm.demo`` -- the command line (:mod:`.__main__`).
"""
from .analysis import Analysis, DemoModel, ReportAssets, analyse, load_demo_model, nearest_class
from .app import build_app, launch
from .editing import Editor, find_edit_source
from .space import export_space
