"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class RnnlabError(Exception):
    """An error caused by input or settings, explained in one line for the user."""


class ConfigError(RnnlabError):
    """An invalid setting: out of range, of the wrong type, or unknown."""


class CorpusError(RnnlabError):
    """A text file that cannot be used: missing, empty, binary, not UTF-8, too small."""


class CheckpointError(RnnlabError):
    """A checkpoint that is missing, truncated, corrupt, or from a newer rnnlab."""


class VocabularyError(RnnlabError):
    """Text holding characters the model's vocabulary does not know."""


def os_error_line(exc: OSError) -> str:
    """An OSError as the one line users see: what went wrong, and on which file."""
    return f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}"
