"""Errors raised by boq_vpr. Each message says what went wrong and what to do about it."""


class BoqVprError(Exception):
    """Base class of every error raised by boq_vpr."""


class ConfigError(BoqVprError, ValueError):
    """A configuration, parameter or name is invalid."""


class CheckpointError(BoqVprError):
    """A weight file cannot be read or does not fit the model."""


class ImageError(BoqVprError, ValueError):
    """An image or array cannot be used as network input."""


class BackendError(BoqVprError):
    """An encoder backend is unavailable or failed."""


class MapError(BoqVprError):
    """A map database cannot be read, written or used with this model."""


class BagError(BoqVprError):
    """A bag cannot be read or written, or lacks the topic or ground truth asked for."""


class DatasetError(BoqVprError, ValueError):
    """A training or validation dataset is missing files or holds malformed rows."""


class ExportError(BoqVprError):
    """A model cannot be exported, or an exported file (ONNX, engine) is corrupt or does not fit."""


def explain(err: BaseException) -> str:
    """Describe an error in one line for a log or a service response.

    Our own errors say what to do already, others get their type named.
    """
    return str(err) if isinstance(err, BoqVprError) else f'{type(err).__name__}: {err}'
