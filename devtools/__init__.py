"""Development tooling that runs the gateway locally; not part of the wheel.

* :mod:`.localredis` a private ``redis-server`` on a free loopback port
* :mod:`.cluster` redis + N replicas + the shipped nginx config + the demo publisher
* :mod:`.demo` one in-process replica with the demo publisher, and the demo's identities

``python -m devtools [cluster|demo]`` (``scripts/demo`` runs the cluster). It needs the
repository checkout (``deploy/nginx``) and the test extra (``httpx``).
"""
