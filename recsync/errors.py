"""The one error hierarchy of recsync: every exception carries a sentence a user can act on."""

from __future__ import annotations


class RecsyncError(Exception):
    """Base of every error recsync raises on purpose.

    ``str(err)`` is a complete sentence that says what is wrong and where.
    """


class ConfigError(RecsyncError):
    """A configuration file is invalid (syntax, unknown key, wrong type, missing rule set)."""


class ConnectorError(RecsyncError):
    """A connector could not talk to its system. Transient: the call may be retried."""


class ConnectorConfigError(ConnectorError):
    """A connector's target is unusable as configured (missing table, key column, file)."""


class RecordRejected(RecsyncError):
    """The target system refused one record for good (constraint, validation)."""


class RateLimited(ConnectorError):
    """The external system asked us to slow down; ``retry_after`` seconds, when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitOpen(ConnectorError):
    """The circuit breaker of a system is open: no calls until ``retry_at``."""

    def __init__(self, message: str, retry_at: float) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class ControlError(RecsyncError):
    """A control command failed; ``code`` is the protocol's fault code (NOT_FOUND, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DaemonUnreachable(ControlError):
    """recsyncd could not be reached (no socket, no answer in time, no permission)."""

    def __init__(self, message: str) -> None:
        super().__init__("UNAVAILABLE", message)


class StateError(RecsyncError):
    """A pipeline's state file could not be read or written (names the file)."""


class StateUnavailable(StateError):
    """The state storage cannot take writes for now (disk full, I/O error, read-only or
    unreachable folder): the pipeline waits and resumes by itself once it can.
    ``problem``: what failed, without what a pipeline does about it (for a caller that is
    no pipeline, such as a command)."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message
