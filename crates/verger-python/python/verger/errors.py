"""The exceptions verger raises. Every one is a :class:`VergerError`; the message is the command line's."""


class VergerError(Exception):
    """Base class of every error verger raises."""


class UsageError(VergerError, ValueError):
    """Options that cannot work (the command line's exit status 2), found before anything ran."""


class RunError(VergerError):
    """A run or call that failed; a run commits nothing then (``resume=True`` continues it)."""


class StoreError(VergerError, OSError):
    """An object store or output that could not be reached, read or written (also: another run holds it)."""


class FileError(VergerError, OSError):
    """A local file that could not be read or written; the message names it."""


class ModelError(VergerError):
    """The model or the ONNX Runtime library could not be loaded or verified."""


class ImageError(VergerError, ValueError):
    """An image that could not be decoded (corrupt, truncated, too large, not an image)."""


class ClassifyError(VergerError):
    """A classifier that could not be trained, loaded, evaluated or applied."""


class ClusterError(VergerError):
    """The cluster could not be reached."""


__all__ = [
    "VergerError",
    "UsageError",
    "RunError",
    "StoreError",
    "FileError",
    "ModelError",
    "ImageError",
    "ClassifyError",
    "ClusterError",
]
