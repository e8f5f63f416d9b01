"""Exceptions of the gateway; every one carries the facts needed to say what went wrong."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of the gateway's exceptions."""


class ConfigError(GatewayError):
    """The configuration file or a device profile is invalid."""


class ProfileError(ConfigError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class RejectedReading(GatewayError):
    """A well-formed reading that fails validation; it is logged and counted, never stored."""

    def __init__(self, device_id: str, reason: str) -> None:
        super().__init__(f"reading from {device_id} rejected: {reason}")
        self.device_id = device_id
        self.reason = reason


class StorageFullError(GatewayError):
    """The outbox cannot take more; the peripheral keeps the reading and retries later."""
