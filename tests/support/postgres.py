"""The PostgreSQL fixtures (``postgres_server`` per test process, so one cluster per xdist
worker; ``private_postgres``; ``backendai_db`` and ``backendai_db_factory``) over
:mod:`devtools.postgres` (the server, the schema, the manager's rows: import those from
it). A conftest or a test module takes them with ``pytest_plugins = ("tests.support.postgres",)``.
PYTEST_DONT_REWRITE: test modules import this module before pytest registers it as a plugin.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from devtools.postgres import (
    SCHEMAS,
    BackendAIDatabase,
    PostgresNotInstalled,
    PostgresServer,
    SchemaVersion,
    unique_name,
)

__all__ = ["backendai_db", "backendai_db_factory", "postgres_server", "private_postgres"]


# -- fixtures ---------------------------------------------------------------------------------
def _server_or_skip() -> PostgresServer:
    try:
        return PostgresServer()
    except PostgresNotInstalled as exc:
        if "CI" in os.environ:  # CI must run these tests: a missing server is a failure
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster per test process (so per xdist worker); a test that stops it
    should start it again, the database fixtures do if it did not."""
    with _server_or_skip() as server:
        yield server


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A cluster of the test's own, for tests that kill or restart it."""
    with _server_or_skip() as server:
        yield server


@pytest.fixture
def backendai_db_factory(
    postgres_server: PostgresServer,
) -> Iterator[Callable[[SchemaVersion], BackendAIDatabase]]:
    """``make(version)``: a new database with that Backend.AI schema; every one made, and the
    roles made through it, are dropped at teardown."""
    made: list[BackendAIDatabase] = []

    def make(version: SchemaVersion) -> BackendAIDatabase:
        if postgres_server.proc is None:  # stopped by an earlier test that then failed
            postgres_server.start()
        db = BackendAIDatabase(
            postgres_server, version, unique_name("bai" + version.replace(".", ""))
        )
        postgres_server.create_database(db.name, SCHEMAS[version])
        made.append(db)
        return db

    yield make
    if postgres_server.proc is None:
        postgres_server.start()
    for db in made:
        postgres_server.drop_database(db.name)
        for role in db.roles:
            postgres_server.drop_role(role)


@pytest.fixture(params=list(SCHEMAS), ids=lambda version: f"backendai-{version}")
def backendai_db(
    request: pytest.FixtureRequest,
    backendai_db_factory: Callable[[SchemaVersion], BackendAIDatabase],
) -> BackendAIDatabase:
    """A fresh database per test, once with each schema generation (narrow it with
    ``@pytest.mark.parametrize("backendai_db", ["26.8"], indirect=True)``)."""
    version: SchemaVersion = request.param
    return backendai_db_factory(version)
