"""pgtenancy's pytest plugin: a real PostgreSQL per test run, roles, databases and tenant engines."""

from pgtenancy.testing.database import TestDatabase, TestRoles
from pgtenancy.testing.server import ServerNotFoundError, TestServer, find_server

__all__ = ["ServerNotFoundError", "TestDatabase", "TestRoles", "TestServer", "find_server"]
