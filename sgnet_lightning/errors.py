"""Errors that reach the user as one clear line instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class SgnetError(Exception):
    """Base class: the command-line entry point prints these as ``error: <message>`` and exits 1."""


class DataError(SgnetError):
    """A problem with one subject's file: names the subject, the file and the problem.

    Args:
        subject: subject ID (or ``"?"`` when not yet known).
        file: path of the offending file (or folder).
        problem: what is wrong, in a few words, e.g. ``"contains 12 NaN voxels"``.
        fatal: whether the command cannot go on; non-fatal problems become warnings and recorded
            exclusions where the work can continue without the subject.
    """

    def __init__(self, subject: str, file: str | Path | None, problem: str, fatal: bool = True):
        self.subject, self.file, self.problem, self.fatal = subject, str(file or ""), problem, fatal
        where = f" [{self.file}]" if self.file else ""
        super().__init__(f"subject {subject}{where}: {problem}")


class ConfigError(SgnetError):
    """A configuration or search space that cannot work; names the key and the problem."""
