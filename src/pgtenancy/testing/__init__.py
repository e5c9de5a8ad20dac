"""pgtenancy's pytest plugin: a real PostgreSQL per test run, roles, databases and tenant engines."""

from pgtenancy.testing.assertions import assert_no_findings, assert_tenant_isolated
from pgtenancy.testing.database import TestDatabase, TestRoles
from pgtenancy.testing.server import ServerNotFoundError, TestServer, find_server

__all__ = [
    "ServerNotFoundError",
    "TestDatabase",
    "TestRoles",
    "TestServer",
    "assert_no_findings",
    "assert_tenant_isolated",
    "find_server",
]
