"""Who may call and what they may see: identity records, the Redis identity store, keypair
signatures, and the role rules that turn a caller and its query into a hub filter.

No HTTP here: failures are :mod:`gateway.errors` domain errors that the HTTP edge maps.
Imports only downward (:mod:`gateway.fanout` for :class:`~gateway.fanout.filters.Filter`).

This package's namespace holds the pure part (the main records and signing: msgspec and the
standard library), so a client that signs requests imports no Redis. The parts that read Redis are
imported from their modules: :mod:`.store` (:class:`IdentityStore`), :mod:`.authenticate`
(the keypair signature), :mod:`.methods` (each way in as one unit: how it authenticates a
request, what it keeps, how it is re-checked), :mod:`.sessions` (browser sessions),
:mod:`.backendai_sessions` (Backend.AI's console sessions), :mod:`.passwords` (password
checks off the event loop), :mod:`.throttle` (failed logins), :mod:`.visibility`.
"""

from .models import Identity, IdentityError, Keypair, Role, User
from .signing import DEFAULT_VERSION, sign_request, signed_headers

__all__ = [
    "DEFAULT_VERSION",
    "Identity",
    "IdentityError",
    "Keypair",
    "Role",
    "User",
    "sign_request",
    "signed_headers",
]
