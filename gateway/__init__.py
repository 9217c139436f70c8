"""The kernel event gateway: Backend.AI's ``GET /stream/kernel/_/events`` as a horizontally
scaled service. One subpackage per layer, each importing only downward:

* :mod:`gateway.fanout` the fan-out core (hub, connections, resume, history, subscriber)
* :mod:`gateway.identity` who may call and what they may see (store, signing, visibility)
* :mod:`gateway.http` the HTTP edge (app + lifespan, stream endpoint, errors, sessions,
  dashboard, metrics, server)
* :mod:`gateway.cli` the ``gateway`` command (serve, sign, tail, identity admin)

Beside them: :mod:`gateway.settings` (one frozen settings object), :mod:`gateway.errors`
(domain errors), :mod:`gateway.logs`, and :mod:`gateway.consumer` (a resuming consumer client
that imports only the pure signing code). ARCHITECTURE.md draws the whole.
"""
