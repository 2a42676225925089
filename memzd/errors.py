"""Errors a memz user can hit. Each says what was wrong, where, and what to do.

Library code raises these; only the CLI and the daemon loop turn them into
messages and exit codes.
"""


class MemzError(Exception):
    """Base of every error memz raises on purpose."""


class ConfigError(MemzError):
    """config.yaml has an unknown key or a value that is not allowed."""


class ExampleError(MemzError):
    """One example line is not one of the accepted shapes."""


class RequestError(MemzError):
    """A request file cannot be answered; `code` goes into the error response."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class CheckpointError(MemzError):
    """A checkpoint is missing, unsafe, corrupt or from another base model."""


class ServiceError(MemzError):
    """Installing, removing or querying the OS service failed."""


class DaemonNotRunning(MemzError):
    """memzctl needs a running memzd and there is none."""
