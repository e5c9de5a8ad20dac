"""A reference multi-tenant SaaS API on pgtenancy: FastAPI, SQLAlchemy 2, SQLModel, Alembic and a worker.

Organizations (tenants) sign up, invite members, and keep projects, tasks and comments that row-level
security keeps apart; staff read cross-tenant reports through a separate BYPASSRLS engine; jobs queued by
a request run on a worker as the requesting tenant. ``create_app(Settings.from_environment())`` builds it.
"""
