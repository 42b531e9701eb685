"""Errors the engine raises for bad input or missing resources.

Each carries a message meant for the user: what was wrong and what to do.
The CLI maps them to exit code 2 and `{"error": ...}`; pages show them as-is.
"""


class ConvScopeError(ValueError):
    """Base class: a problem the user can fix (bad input, missing resource)."""


class ImageError(ConvScopeError):
    """An image could not be read, or is unsafe to decode."""


class BackboneUnavailable(ConvScopeError):
    """A backbone cannot be loaded here (no network, package missing, not allowed)."""


class UnknownBackbone(ConvScopeError):
    """No backbone of that name is registered."""


class DatasetError(ConvScopeError):
    """A dataset cannot be opened or is not fit for training (too few classes or images)."""


class ArchiveError(DatasetError):
    """An uploaded archive is unsafe (path escape, link, bomb) or unreadable."""


class ExplainError(ConvScopeError):
    """A layer or method that does not apply to this model."""


class EvaluationError(ConvScopeError):
    """A run or source that cannot be evaluated."""
