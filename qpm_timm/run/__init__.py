"""The run layer under ``train.py``, ``validate.py`` and ``explain.py``: what the three scripts share.

``args``: the shared flag groups and ``-c config.yaml``; ``data``: the dataset, its eval data config and splits;
``model``: the model a run trains or evaluates; ``evaluate``: the one evaluation loop (on
:func:`qpm_timm.forward.forward_pass`, in the precision of :mod:`qpm_timm.precision`); ``experiment``: the
experiment folder and resume; ``sets``: the prediction sets' flags and their measurement; ``cli``: bad input -> exit
code 2. ``training``, ``validation`` and ``explaining``
hold what each script runs, so a script is its flags plus a short ``main``.
"""
from . import args, methods, sets
from .cli import BAD_INPUT, UsageError, exit_code
from .evaluate import Evaluation, evaluate
from .explaining import explain
from .training import train
from .validation import validate
