"""Every error the engine raises on purpose: bad input or a missing resource.

Each carries a message meant for the user: what was wrong and what to do.
The CLI maps them to exit code 2 and `{"error": ...}`; pages show them as-is.
Anything else (a ValueError from NumPy, a KeyError) is a bug and surfaces as one:
a traceback in the CLI, Streamlit's exception box in a page. So ConvScopeError
is based on Exception, not ValueError, and callers catch ConvScopeError only.

The hierarchy (each class is also importable from the module that raises it):

    ConvScopeError
    ├── ConfigError          engine.config: an option out of range or unknown
    ├── ImageError
    │   └── ImageLoadError   engine.imaging: one image unusable, with a reason code
    ├── BackboneUnavailable
    │   └── TorchPickleError engine.backbones.torch_pickle: a weights file it cannot read
    ├── UnknownBackbone
    ├── DatasetError
    │   └── ArchiveError
    ├── RunError             engine.runs
    │   └── RunGone
    ├── ExplainError         engine.model.explainable
    ├── EvaluationError      engine.evaluate.evaluation
    ├── TrainingError        engine.training.fit
    ├── FinetuneError        engine.training.finetune
    ├── LRFinderError        engine.training.lr_finder
    ├── DistributeError      engine.training.distribute
    ├── ImportModelError     engine.importing: a model file it cannot or should not load
    ├── ExportError          engine.export.formats
    │   └── ExportUnavailable
    └── WorkerError          engine.jobs.worker
"""


class ConvScopeError(Exception):
    """Base class: a problem the user can fix (bad input, missing resource)."""


class ConfigError(ConvScopeError):
    """A configuration value that is out of range, unknown or malformed (engine.config)."""


class ImageError(ConvScopeError):
    """An image could not be read, or is unsafe to decode."""


class ImageLoadError(ImageError):
    """An image that cannot be used; `reason` is one of engine.imaging's reason constants."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackboneUnavailable(ConvScopeError):
    """A backbone cannot be loaded here (no network, package missing, not allowed)."""


class TorchPickleError(BackboneUnavailable):
    """A weights file is not a legacy PyTorch state dict this reader understands."""


class UnknownBackbone(ConvScopeError):
    """No backbone of that name is registered."""


class DatasetError(ConvScopeError):
    """A dataset cannot be opened or is not fit for training (too few classes or images)."""


class ArchiveError(DatasetError):
    """An uploaded archive is unsafe (path escape, link, bomb) or unreadable."""


class RunError(ConvScopeError):
    """A run folder that is missing, unreadable or in the wrong state."""


class NoTimeline(RunError):
    """The run has no timeline (recorded with --no-timeline, before timelines existed, or no epoch yet)."""


class RunGone(RunError):
    """The run folder was deleted while a command was using it."""


class ExplainError(ConvScopeError):
    """A layer or method that does not apply to this model."""


class EvaluationError(ConvScopeError):
    """A run or source that cannot be evaluated."""


class TrainingError(ConvScopeError):
    """A run that cannot start or continue: bad data, bad options, an unusable run folder."""


class FinetuneError(ConvScopeError):
    """A fine-tune that cannot start: an unusable parent run or unfreeze point."""


class LRFinderError(ConvScopeError):
    """A sweep that cannot run: bad options, or nothing trainable."""


class DistributeError(ConvScopeError):
    """A cluster description or device setup that cannot be used."""


class ImportModelError(ConvScopeError):
    """A model file that cannot or should not be imported (unsafe, damaged, not an image classifier).

    `reason` names the refusals a user answers with one more choice (engine.importing's NEEDS_SIZE,
    NEEDS_PREPROCESS), so a page can ask for it; "" for every other.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ExportError(ConvScopeError):
    """A run that cannot be exported (not finished, bad format or path)."""


class ExportUnavailable(ExportError):
    """A converter that cannot handle this model on this TensorFlow; the message is its reason."""


class WorkerError(ConvScopeError):
    """A worker process that ended without a result (killed, crashed)."""
