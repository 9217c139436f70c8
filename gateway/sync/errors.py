"""Why an identity sync wrote nothing: every one of these is raised before the first write."""

from __future__ import annotations

from gateway.bridge.database import DatabaseUnavailable

__all__ = ["SourceUnavailable", "SyncError", "SyncRefused"]


class SyncError(Exception):
    """The identity sync did not apply a snapshot; the message says why."""


class SyncRefused(SyncError):
    """A snapshot that would remove or deactivate too large a share of the keypairs at once
    (a truncated or wrong database must not lock everyone out): nothing was written."""


class SourceUnavailable(SyncError, DatabaseUnavailable):
    """Backend.AI's database could not be read (down, refusing, a missing grant, a timeout):
    nothing was written to the identity store. The message says why."""
