"""The exception types. Each carries what a user needs to act on it."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a failure the CLI reports as one line, with an exit code."""

    exit_code = 1


class UsageError(PipelineError):
    """An option value is invalid (bad date, --since after --until, ...)."""

    exit_code = 2


class ArchiveError(PipelineError):
    """The archive is missing, not SQLite, or lacks a table or column we need."""

    exit_code = 3


class OutputError(PipelineError):
    """The output folder cannot be written, or is not ours to replace."""

    exit_code = 4


class ExportError(PipelineError):
    """Reading, converting or writing a batch failed; names where it happened."""

    exit_code = 1

    def __init__(self, message: str, *, record_type: str | None = None, key_range: str | None = None):
        where = ""
        if record_type:
            where = f" ({record_type}"
            where += f", batch {key_range})" if key_range else ")"
        super().__init__(message + where)
        self.record_type = record_type
        self.key_range = key_range


class Cancelled(Exception):  # noqa: N818 - a control signal, not an error to report
    """Another stream failed (or the run was interrupted): stop now."""


class Interrupted(PipelineError):
    """The export was stopped by a signal (Ctrl-C or SIGTERM)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(f"interrupted by {signal.Signals(signum).name}; nothing was published")
        self.signum = signum
        self.exit_code = 128 + signum
