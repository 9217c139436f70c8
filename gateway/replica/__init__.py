"""What a replica runs besides its requests: the process's resources and their lifespan
(:mod:`.lifespan`, :class:`~.state.GatewayState`), the re-authorization of open streams
(:mod:`.reauthorize`), the limits on streams per process and per key across the fleet
(:mod:`.limits`), and which partitions it subscribes to (:mod:`.partitions`).

Imports :mod:`gateway.identity`, :mod:`gateway.fanout` and :mod:`gateway.settings`; no HTTP
framework. :mod:`gateway.http` runs it as its lifespan and reads its state.
"""

from .lifespan import running_replica
from .state import GatewayState

__all__ = ["GatewayState", "running_replica"]
