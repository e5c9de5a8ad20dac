"""The role names the migrations grant to: ``-x app_role=...``, ``-x admin_role=...`` or the environment."""

from __future__ import annotations

import os

from alembic import context

__all__ = ["admin_role", "app_role"]


def _option(name: str, default: str) -> str:
    """``-x name=...`` on the alembic command line, else ``$SAAS_<NAME>``, else ``default``."""
    given = context.get_x_argument(as_dictionary=True).get(name)
    return given or os.environ.get("SAAS_" + name.upper()) or default


def app_role() -> str:
    """The role the application connects as: NOSUPERUSER NOBYPASSRLS, owner of nothing."""
    return _option("app_role", "saas_app")


def admin_role() -> str:
    """The role of staff reports: BYPASSRLS, created beforehand by a superuser, never granted to the app."""
    return _option("admin_role", "saas_admin")
