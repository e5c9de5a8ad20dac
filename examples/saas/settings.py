"""The application's configuration, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Where the databases are and the secrets the app verifies tokens and signs jobs with.

    :param database_url: the app role (NOSUPERUSER NOBYPASSRLS), asyncpg: every tenant request runs there.
    :param admin_database_url: the admin role (BYPASSRLS), asyncpg: staff reports, never a tenant's request.
    :param jwt_key: the key access tokens are verified with (an HMAC secret for HS*, a public key otherwise).
    :param job_signing_key: the secret that signs the tenant header of every queued job.
    """

    database_url: str
    admin_database_url: str
    jwt_key: str
    job_signing_key: str
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None

    @classmethod
    def from_environment(cls) -> Settings:
        """``SAAS_DATABASE_URL``, ``SAAS_ADMIN_DATABASE_URL``, ``SAAS_JWT_KEY``, ``SAAS_JOB_SIGNING_KEY``."""
        return cls(
            database_url=os.environ["SAAS_DATABASE_URL"],
            admin_database_url=os.environ["SAAS_ADMIN_DATABASE_URL"],
            jwt_key=os.environ["SAAS_JWT_KEY"],
            job_signing_key=os.environ["SAAS_JOB_SIGNING_KEY"],
            jwt_audience=os.environ.get("SAAS_JWT_AUDIENCE"),
        )
