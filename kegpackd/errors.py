"""The project's own exceptions: every layer raises these, never a library's.

The message of each is a complete one-line sentence that can be shown to a user
as is; it names the offending value and where it came from.
"""

from __future__ import annotations

from kegpackd.shown import MESSAGE_LIMIT, cut_middle, one_line, quoted


class KegpackError(Exception):
    """Base of every error kegpackd raises on purpose.

    Messages name outside values (a label, a mount path, an engine's answer), and are
    copied into job records, logs, webhook bodies and the terminal: shown, a message keeps
    its head and its tail (``MESSAGE_LIMIT`` characters in all) and its control characters
    are escaped, whatever the raising code put in it.
    """

    def __str__(self) -> str:
        return one_line(cut_middle(super().__str__(), MESSAGE_LIMIT))


class InvalidValueError(KegpackError):
    """A value from a label, a flag or the config is not acceptable.

    ``source`` names where the value came from (``label kegpack.tags``,
    ``--repository``, ``config packaging.tags``) so the message can point at it.
    """

    def __init__(self, source: str, value: object, reason: str) -> None:
        self.source = source
        self.value = value
        self.reason = reason
        super().__init__(f"{source}: invalid value {quoted(value)}: {reason}")


class ConfigError(KegpackError):
    """The config file cannot be read or does not validate."""


class TarFormatError(KegpackError):
    """An archive stream is malformed or ends before its end-of-archive marker."""


class EngineError(KegpackError):
    """The Docker engine refused or failed a request."""


class EngineUnreachable(EngineError):
    """The engine cannot be reached at all (socket missing, refused, TLS failure)."""


class EnginePermissionDenied(EngineUnreachable):
    """The engine's socket exists but this user may not open it."""


class NotFoundError(EngineError):
    """A container or image the job needs does not exist (any more)."""


class RegistryError(KegpackError):
    """A push was refused, failed, or targeted a registry that is not allowed.

    ``retryable`` is False when trying again cannot help (credentials refused).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class JobConflict(KegpackError):
    """A request for a container whose waiting job has other options (it would be lost)."""


class PackagingError(KegpackError):
    """The job cannot produce a complete image (nothing to package, data would be lost)."""


class ProjectNotFound(PackagingError):
    """No container carries the Compose project's label: there is no such project here."""


class NotPermitted(KegpackError):
    """A request whose credential does not grant what it asks (HTTP 403)."""
