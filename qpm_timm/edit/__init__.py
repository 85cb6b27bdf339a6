""" Editing a trained QPM: forbid or require features and re-solve the assignment on the run's statistics
(docs/METHOD.md, "Editing").

A QPM's decision is the binary class -> feature table the solver found, so "never use feature 7" or "class 3 must
not rely on feature 2" is one more constraint and a re-solve on the statistics the run saved: no pass over the
data. Every QPM constraint stays (``n_f*`` kept features, ``n_wc`` per class, all classes different).

Python API (stable)::

    from qpm_timm.edit import Edit, edit_from_features, edit_model
    edit = edit_from_features(model, forbid_features=[2], forbid=[(3, 1)], require=[(5, 7)])  # the model's f<j>
    edit = Edit(forbid_channels=(57,), forbid_pairs=((3, 12),), require_pairs=((5, 40),))     # or backbone channels
    result = edit_model(model, statistics, edit, *, effort=EDIT_EFFORT, seed=0, locality=True)  # -> EditResult
    result.model                 # a new QPMModel with the edited head (``model`` itself is unchanged)
    result.selection             # (n_f*,) kept channels, the new head's feature order
    result.assignment            # (C, n_f*) bool W of the new head
    result.objective, result.bound, result.gap, result.status   # Z, its proven bound and gap, of the re-solve
    result.before_objective      # Z of the model's own assignment on the same statistics
    result.changes               # EditChanges: .classes [(class, channels before, channels after)], .dropped, .added
    result.table(class_names, names)   # markdown: changed classes before -> after, dropped/added ({channel: label})

``edit_model`` raises :class:`EditImpossible` (a ValueError) naming the reason when no QPM satisfies the edit
(contradictory constraints, too few features left, two classes forced to the same set) or when the re-solve found
none within its effort. The command line (:mod:`qpm_timm.run.editing`; exit code 2 on bad input, nothing
written)::

    python -m qpm_timm.edit <experiment-or-export> --forbid-feature F ... --forbid CLASS:FEATURE ...
        --require CLASS:FEATURE ... --output <folder> [--finetune-epochs N] [--with-statistics] [--effort E] [--seed S]
        [--resolve-all]

Classes by index or label name; features by index ``j`` (or ``f<j>``) of the model's kept features, by their name
(the report's label or its annotation), or by backbone channel ``ch<k>``.
"""
from .api import (
    EDIT_EFFORT,
    Edit,
    EditChanges,
    EditImpossible,
    EditResult,
    EditSource,
    edit_from_features,
    edit_model,
    export_edit,
    kept_pairs,
    parse_edit,
    read_source,
    resolve_feature,
    result_labels,
    solve_edit,
)
