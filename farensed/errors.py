"""Errors farense reports to a user as one line: `Erro: …` / `Error: …`, in the chosen language."""

# The one-line error's prefix in either language: the daemon finds a child's reason by it (queue/outcome.py).
ERROR_PREFIXES = ("Error: ", "Erro: ")


def error_line(exc: BaseException) -> str:
    """How a FarenseError is printed (the CLI, the training child, a rank)."""
    from farensed.i18n import _

    return _("Erro: {message}").format(message=exc)


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
