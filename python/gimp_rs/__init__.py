"""GiMP-rs from Python: the gimp-rs engine (readers, cohorts, models, training, metrics) with
numpy arrays in and out, no PyTorch needed.

Every call that reads files or computes releases the GIL. Long calls (``train``,
``experiment``, ``extract``, ``synth``) report progress (``progress=``; a text line on stderr by
default) and stop with ``KeyboardInterrupt`` at the next report after Ctrl-C; an interrupted run
continues with ``resume=True``.

Errors: every error is a :class:`GimpError` carrying the message the ``gimp-rs`` command prints.

* :class:`DataError` — a file is missing, unreadable or wrong (``.path``, ``.location``,
  ``.line``, ``.field``, ``.kind``);
* :class:`CohortError` (a ``DataError``) — ``Cohort.check()`` found errors (``.errors``,
  ``.warnings``);
* :class:`ModelError` — a model cannot be built or run on an input;
* :class:`InternalError` — a bug: Rust code panicked; the interpreter is unaffected.

Arguments of the wrong type, dtype or shape raise ``ValueError`` naming the argument.
"""

from ._native import (
    CohortError,
    Cohort,
    DataError,
    GimpError,
    InternalError,
    Model,
    ModelError,
    Prediction,
    __version__,
    accuracy,
    architectures,
    delong,
    evaluate,
    experiment,
    extract,
    read_expression,
    read_features,
    read_gdc_folder,
    read_mcat_table,
    report,
    roc_auc,
    set_threads,
    synth,
    train,
)
from ._progress import Progress, TextProgress

__all__ = [
    "Cohort",
    "CohortError",
    "DataError",
    "GimpError",
    "InternalError",
    "Model",
    "ModelError",
    "Prediction",
    "Progress",
    "TextProgress",
    "__version__",
    "accuracy",
    "architectures",
    "delong",
    "evaluate",
    "experiment",
    "extract",
    "read_expression",
    "read_features",
    "read_gdc_folder",
    "read_mcat_table",
    "report",
    "roc_auc",
    "set_threads",
    "synth",
    "train",
]
