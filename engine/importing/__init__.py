"""Bring your own model: a Keras file from a notebook imported as a run of mode `imported`.

    files   the file as given: its kind (.keras, allowed .h5, SavedModel), size limit, archive members
    model   loading it safely (safe_mode, Lambda and unknown classes refused first), checking it is an
            image classifier, and rebuilding it to end in logits (whatever its head ended in)
    savedmodel  a SavedModel folder or zip: unpacked safely, its graph's ops checked (no file or Python ops),
            its signature read; opaque (engine.model.savedmodel wraps it to end in logits)
    run     labels, the pixel convention (chosen by accuracy on labelled data when asked), the run folder

The run folder is like any other (engine.runs): model.keras (the rebuilt model: model input in,
logits out), labels.json, config.json (mode "imported", the file's hash and the import settings
under "imported"), status.json finished; an imported SavedModel is kept as given in savedmodel/ instead of
model.keras (runs.Run.model_path). Every page and command that takes a run takes it.
"""

from engine.importing.files import kind_of
from engine.importing.model import NEEDS_SIZE, Inspected, inspect, load_keras
from engine.importing.run import NEEDS_PREPROCESS, PREPROCESS_CHOICES, import_model, read_labels

__all__ = [
    "NEEDS_PREPROCESS",
    "NEEDS_SIZE",
    "PREPROCESS_CHOICES",
    "Inspected",
    "import_model",
    "inspect",
    "kind_of",
    "load_keras",
    "read_labels",
]
