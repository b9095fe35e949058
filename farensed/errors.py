"""Errors farense reports to a user as one line (the CLI maps them to click.ClickException)."""


class FarenseError(Exception):
    """A problem the user can fix; its message is one line that names the file, key or line."""

    exit_code = 1


class SpecError(FarenseError):
    """A job spec or its inputs (model folder, data files) are invalid."""

    exit_code = 2


class ResumeError(FarenseError):
    """A run cannot resume from what is on disk (spec or data changed, no valid checkpoint)."""

    exit_code = 3


class QueueError(FarenseError):
    """A queue operation is impossible (unknown job id, wrong state, daemon already running)."""

    exit_code = 4
