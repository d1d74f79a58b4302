"""The exceptions diffmatch raises on purpose, in one place; each one's message is one line that names
the problem (the command lines print it as ``error: ...`` and exit 2, :mod:`diffmatch.cli.common`)."""

from __future__ import annotations

__all__ = ["InputError", "MissingCalibrationError", "MissingWeightsError"]


class InputError(ValueError):
    """Bad user input: a missing or unreadable file, a wrong shape, an impossible option."""


class MissingCalibrationError(ValueError):
    """Raised when a confidence is asked of a model that has no calibration."""


class MissingWeightsError(InputError):
    """A backbone's pretrained weights are not on this machine; the message says how to get them.

    Its text ends by saying how to pass a local file instead, ``weights=FILE`` by default (the
    extractor's argument, also ``feature_kwargs: {weights: FILE}`` in a config); a command line with
    its own flag for it (``convert_official --vgg16``) words it with :meth:`text`.

    Args:
        message: what is missing and how to install or download it.
        file_example: the local file to pass instead, e.g. ``/path/to/vgg16-397923af.pth``.
    """

    def __init__(self, message: str, file_example: str) -> None:
        self.message = message
        self.file_example = file_example
        super().__init__(self.text())

    def text(self, flag: str | None = None) -> str:
        """The message, ending with how to pass a local file: ``weights=FILE``, or ``FLAG FILE`` for a CLI flag."""
        passing = f"weights={self.file_example}" if flag is None else f"{flag} {self.file_example}"
        return f"{self.message}; or pass {passing}"
