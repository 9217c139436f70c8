"""The bridge: an unmodified Backend.AI's lifecycle events, published to the gateway.

``gateway bridge`` (:mod:`.app`) follows Backend.AI's own event bus (its Redis, database 4:
the ``events`` stream up to 25.10, the ``events_all`` channel from 25.11), decodes each
message without running any pickle in it (:mod:`.wire`), tells the lifecycle steps apart
(:mod:`.lifecycle`), finds whose each is in Backend.AI's PostgreSQL as the manager does
(:mod:`.database`), and publishes them exactly once at their source positions through the
publisher library (:mod:`publisher.positioned`), one bridge active at a time (:mod:`.lease`),
what the bus lost reconciled from the database (:mod:`.reconcile`). The process:
:mod:`.run`. The facts it rests on, with the source files they were read from:
``../shared/BACKENDAI.md`` §1.
"""
