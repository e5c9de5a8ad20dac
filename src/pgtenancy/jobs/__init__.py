"""Background work: the tenant travels with every job (extras ``celery``, ``arq``).

``capture()`` turns the current binding into message headers when a job is enqueued; ``restore()``
checks them on the worker and binds them around the job. ``pgtenancy.jobs.celery`` and
``pgtenancy.jobs.arq`` do both for those queues; ``for_each_tenant`` fans periodic work out, one job
per tenant; ``detached()`` and ``run_in_executor`` decide what tasks started inside a request inherit.
"""

from __future__ import annotations

from pgtenancy.jobs.carrier import capture, restore
from pgtenancy.jobs.fanout import detached, for_each_tenant, for_each_tenant_async, run_in_executor

__all__ = ["capture", "detached", "for_each_tenant", "for_each_tenant_async", "restore", "run_in_executor"]
