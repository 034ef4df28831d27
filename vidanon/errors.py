"""Errors a user can act on. The message is one line; the CLI prints it as is."""


class VidanonError(Exception):
    """Base class: anything the CLI reports as `vidanon: error: <message>` without a traceback."""


class InputError(VidanonError):
    """A file that cannot be used as input (missing, empty, not a video, truncated, ...)."""


class ManifestAlteredError(InputError):
    """The key is right, but the manifest does not match its MACs or its track list: it was altered."""


class KeyFileError(VidanonError):
    """A key file that is missing, malformed, or readable by others."""


class WrongKeyError(VidanonError):
    """The key does not open the sealed data of a manifest: it is not the key the video was made with."""


class ModelNotFoundError(VidanonError):
    """Model weights that are neither on disk nor reachable."""


def os_error(e: OSError, where) -> str:
    """One line for an OS error (disk full, permission, a folder gone): the file it concerns, and the cause.
    `where`: the file or folder being written, named when the error itself names none."""
    return f"{e.filename or where}: {e.strerror or e}"
