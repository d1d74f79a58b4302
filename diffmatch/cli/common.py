"""What every diffmatch command line shares: one-line errors, exit statuses, early output checks, threads.

The commands (``infer.py``, ``train.py``, ``python -m diffmatch.export``, ``.calibrate``,
``.evaluate``, ``.evaluate_confidence``, ``.convert_official``) answer a bad input with one line on
stderr, never a traceback:

* ``2``: bad arguments, missing or corrupt inputs (:class:`~diffmatch.errors.InputError`), an output
  path that cannot be written (checked before any model or data is loaded);
* ``1``: the work failed (some pairs failed, a full disk, an ``OSError`` while writing);
* ``130``: interrupted with Ctrl-C (the shell's convention, 128 + SIGINT).

This module imports nothing heavy (no torch), so that ``--help`` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, ParamSpec

from diffmatch.errors import InputError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "OneLineArgumentParser",
    "check_out_file",
    "check_out_folder",
    "describe_os_error",
    "one_line_errors",
    "print_error",
    "remove_empty_folders",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

P = ParamSpec("P")


_PROGRAM: list[str] = []  # the name the `diffmatch` command runs a subcommand under (cli/main.py)


def program(default: str) -> str:
    """The command's name for its usage line: ``default`` (e.g. ``python -m diffmatch.evaluate``), or
    ``diffmatch evaluate`` when the ``diffmatch`` command runs it."""
    return _PROGRAM[-1] if _PROGRAM else default


@contextlib.contextmanager
def running_as(name: str) -> Iterator[None]:
    """Within the block, :func:`program` answers ``name``."""
    _PROGRAM.append(name)
    try:
        yield
    finally:
        _PROGRAM.pop()


class OneLineErrors:
    """Parser mixin: errors are one line on stderr (no usage block) and exit status 2.

    The one base every command's parser shares: :class:`OneLineArgumentParser` (``argparse``) and the
    training command's LightningCLI parser (:mod:`diffmatch.cli.train`).
    """

    prog: str
    exit_on_error: bool

    def error(self, message: str, *args: Any) -> NoReturn:
        if getattr(self, "exit_on_error", True) is False:
            super().error(message, *args)  # type: ignore[misc]  # the parser raises instead
        text = " ".join(str(message).split())
        command = self.prog.replace(" [options]", "")
        self.exit(EXIT_USAGE, f"error: {text} (see {command} --help)\n")  # type: ignore[attr-defined]


class OneLineArgumentParser(OneLineErrors, argparse.ArgumentParser):
    """``argparse`` whose errors are one line on stderr (no usage block) and exit status 2."""


def print_error(message: object) -> None:
    """``error: MESSAGE`` on stderr, on one line."""
    text = " ".join(str(message).split("\n"))
    print(f"error: {text}", file=sys.stderr, flush=True)


def describe_os_error(err: OSError) -> str:
    """An ``OSError`` in a few words: the file it concerns and the system's reason (``No space left on device``)."""
    reason = err.strerror or str(err) or type(err).__name__
    return f"{err.filename}: {reason}" if err.filename else reason


def one_line_errors(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a command's ``main`` so that what escapes it becomes one line and an exit status.

    :class:`~diffmatch.errors.InputError` gives status 2, ``OSError`` (a full disk, a folder that
    vanished) 1, and ``KeyboardInterrupt`` 130 with ``interrupted`` on stderr. Anything else is a bug
    and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("\ninterrupted (Ctrl-C); files already completed are kept, none is half-written",
                  file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except InputError as err:
            print_error(err)
            return EXIT_USAGE
        except OSError as err:
            print_error(describe_os_error(err))
            return EXIT_FAILED

    return wrapper


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that exists and is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def _probe_writable(folder: Path) -> None:
    with tempfile.TemporaryFile(dir=folder):
        pass


def _named(flag: str | None, path: Path) -> str:
    return f"{flag} {path}" if flag else str(path)


def check_out_folder(out: str | os.PathLike, flag: str | None = "--out") -> list[Path]:
    """Make sure files can be written in the folder ``out``, creating it (and missing parents) if needed.

    Call it before loading a model or data: a bad output path then costs nothing. ``flag`` names the
    option in the message (``None`` for a positional argument).

    Returns:
        The folders this created, deepest first, for :func:`remove_empty_folders` if the run stops early.

    Raises:
        InputError: one line naming ``out`` and why it cannot take the outputs.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{_named(flag, out)}: exists and is not a folder")
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        _probe_writable(out)
    except OSError as err:
        remove_empty_folders(created)
        raise InputError(f"{_named(flag, out)}: cannot write there ({err.strerror or type(err).__name__})") from None
    return created


def check_out_file(path: str | os.PathLike, flag: str | None = "--out") -> list[Path]:
    """Make sure the file ``path`` can be written (atomically, beside itself), creating missing parent folders.

    Returns:
        The folders this created, deepest first (see :func:`check_out_folder`).

    Raises:
        InputError: ``path`` is a folder, or its folder cannot take a file.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{_named(flag, path)}: is a folder; give a file name, e.g. {path / 'model.pt'}")
    if path.exists() and not path.is_file():
        raise InputError(f"{_named(flag, path)}: exists and is not a regular file")
    try:
        return check_out_folder(path.parent, flag)
    except InputError as err:
        raise InputError(f"{_named(flag, path)}: cannot write in its folder ({err})") from None

