"""The exceptions MicroscopyMatching raises on purpose.

Every refusal of user input (unreadable or hostile file, wrong shape, box outside
the image, ...) is an :class:`InputError` whose message is written for a biologist:
it names the file or the value and says what is wrong with it. The app shows the
message as it is; the CLI prints it and skips the file.
"""

from __future__ import annotations


class MMError(Exception):
    """Base class of every error raised on purpose by :mod:`mm_core`."""


class InputError(MMError, ValueError):
    """User input that cannot be used, with a message that says why."""


class InputWarning(UserWarning):
    """Input that is used, but maybe not as the user meant (e.g. swapped box corners).

    Raised with :func:`warnings.warn`; the CLI prints each one with the file it is
    about, the app shows it next to the result.
    """


class ModelUnavailableError(MMError, RuntimeError):
    """Model weights or hardware needed by an engine or head cannot be had."""


def printable(text: str) -> str:
    r"""``text`` safe to print or write as UTF-8.

    Undecodable bytes of a file name from another system are written as ``\udcff``
    escapes instead of raising.
    """
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")
