"""``python -m qpm_timm.edit``: the command line of editing, which lives in the run layer (:mod:`qpm_timm.run.editing`),
as train.py's does."""
import sys

from ..run.editing import main

if __name__ == '__main__':
    sys.exit(main())
