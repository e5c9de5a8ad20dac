"""Test sessions beside the README's (the latest releases): the declared floors, SQLAlchemy 2.0, and arq.

``nox -s floors`` installs every dependency at the lowest release ``pyproject.toml`` declares
(``constraints/floors.txt``) and runs the suite; ``nox -s sqlalchemy20`` runs it on the newest 2.0.x;
``nox -s arq`` runs the arq integration, which cannot share the ``dev`` environment (arq pins
``redis<6``, Celery's Redis transport needs ``redis>=6.1``). CI runs all three after the README's test
command. Arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["floors", "sqlalchemy20", "arq"]
nox.options.reuse_existing_virtualenvs = True


def _suite(session: nox.Session, *requirements: str) -> None:
    session.install("-e", ".[dev]", *requirements)
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def floors(session: nox.Session) -> None:
    """The suite on the lowest declared release of every dependency."""
    _suite(session, "-c", "constraints/floors.txt")


@nox.session
def sqlalchemy20(session: nox.Session) -> None:
    """The suite on SQLAlchemy 2.0.x, the series before the latest."""
    _suite(session, "SQLAlchemy[asyncio]>=2.0.58,<2.1")


@nox.session
def arq(session: nox.Session) -> None:
    """The arq integration, type-checked against arq, and its docs' examples, in an environment of its own."""
    session.install("-e", ".[arq,asyncpg,psycopg,testing]", "pytest-asyncio>=0.24", "mypy>=1.13")
    session.run("python", "-m", "mypy", "src/pgtenancy/jobs/arq.py")  # the dev environment sees arq as Any
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_jobs_arq.py", *session.posargs
    )
