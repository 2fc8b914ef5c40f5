"""The one family of errors vqc raises for bad input; the CLI maps each class to an exit code."""


class VqcError(Exception):
    """Base class of every error vqc reports to a user (one clear line, no traceback)."""

    exit_code = 1


class VqcFormatError(VqcError):
    """A `.vqc` byte string is malformed: bad magic, version, length, CRC, or header field."""

    exit_code = 3


class VqcImageError(VqcError):
    """An input image cannot be read or is not supported (empty, truncated, not an image)."""

    exit_code = 4


class VqcModelError(VqcError):
    """A model is unknown to the registry, missing, or its weights fail the hash check."""

    exit_code = 5


class VqcLimitError(VqcError):
    """A resource limit was hit, e.g. the decoded image would exceed the pixel cap."""

    exit_code = 6
