"""Send a Celery task as the current tenant: the worker runs it as that tenant, or refuses it."""

from celery_worker import add_note

from pgtenancy import tenant_context


def add_note_for(tenant_id: str, body: str) -> int:
    """Send ``add_note`` for ``tenant_id`` and wait for its result (the tenant's count of notes)."""
    with tenant_context(tenant_id):  # in a request, pgtenancy's middleware has bound it already
        result = add_note.delay(body)
    return result.get(timeout=30)
