"""tenant_context binds per context: nests, restores, follows tasks, stays out of other threads."""

import asyncio
import threading
import uuid

import pytest

from pgtenancy import InvalidTenantError, current_tenant_id, tenant_context, without_tenant
from pgtenancy.context import NO_TENANT, current_binding

A, B = uuid.UUID(int=1), uuid.UUID(int=2)


def test_nesting_inner_wins_and_outer_is_restored():
    assert current_tenant_id() is None
    with tenant_context(A):
        assert current_tenant_id() == A
        with tenant_context(B):
            assert current_tenant_id() == B
        assert current_tenant_id() == A
    assert current_tenant_id() is None


def test_restored_after_an_exception():
    with pytest.raises(RuntimeError), tenant_context(A):
        raise RuntimeError("boom")
    assert current_tenant_id() is None


def test_without_tenant_is_an_explicit_binding():
    with tenant_context(A), without_tenant():
        assert current_tenant_id() is None
        assert current_binding() is NO_TENANT
    assert current_binding() is None


async def test_async_with_and_tasks_inherit_the_binding():
    async def read_later():
        await asyncio.sleep(0)
        return current_tenant_id()

    async with tenant_context(A):
        task = asyncio.create_task(read_later())
        async with tenant_context(B):
            inner = asyncio.create_task(read_later())
    assert await task == A
    assert await inner == B
    assert current_tenant_id() is None


async def test_concurrent_tasks_do_not_see_each_other():
    seen = {}

    async def worker(tenant):
        async with tenant_context(tenant):
            await asyncio.sleep(0.01)
            seen[tenant] = current_tenant_id()

    await asyncio.gather(*(worker(uuid.UUID(int=n)) for n in range(20)))
    assert all(key == value for key, value in seen.items())
    assert len(seen) == 20


def test_other_threads_do_not_inherit():
    result = []
    with tenant_context(A):
        thread = threading.Thread(target=lambda: result.append(current_tenant_id()))
        thread.start()
        thread.join()
    assert result == [None]


def test_key_type_validates_and_canonicalises_early():
    with tenant_context("A0A0A0A0-0000-4000-8000-00000000000F", key_type="uuid"):
        assert current_tenant_id() == "a0a0a0a0-0000-4000-8000-00000000000f"
    with pytest.raises(InvalidTenantError):
        tenant_context("'; DROP TABLE notes; --", key_type="uuid")


@pytest.mark.parametrize("value", [None, 1.5, True, b"abc", object()])
def test_non_id_types_are_rejected(value):
    with pytest.raises(InvalidTenantError):
        tenant_context(value)


def test_subclasses_of_the_id_types_are_accepted_but_not_bool():
    class TenantName(str):
        pass

    with tenant_context(TenantName("acme")), tenant_context(uuid.UUID(int=3)):
        assert current_tenant_id() == uuid.UUID(int=3)
    with pytest.raises(InvalidTenantError, match="not bool"):
        tenant_context(False)


def test_async_with_completes_on_any_event_loop_without_suspending():
    # entering and leaving await an already-done awaitable: no loop of its own, nothing scheduled
    async def bound_in_a_fresh_loop(tenant):
        async with tenant_context(tenant):
            seen = current_tenant_id()
        return seen, current_tenant_id()

    for tenant in (A, B):  # each asyncio.run makes a new loop
        assert asyncio.run(bound_in_a_fresh_loop(tenant)) == (tenant, None)
    results = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(bound_in_a_fresh_loop(A))))
    thread.start()
    thread.join()
    assert results == [(A, None)]
    coroutine = bound_in_a_fresh_loop(B)
    with pytest.raises(StopIteration) as finished:  # one send runs it to the end: nothing was awaited
        coroutine.send(None)
    assert finished.value.value == (B, None)


async def test_entering_the_same_context_twice_is_refused_and_leaves_the_outer_binding():
    binder = tenant_context(A)
    with binder:
        with pytest.raises(RuntimeError, match="already entered"), binder:
            pass
        assert current_tenant_id() == A
    async with binder:  # usable again once left
        assert current_tenant_id() == A
    assert current_tenant_id() is None


async def test_async_with_binds_and_restores_without_a_value():
    async with tenant_context(7, key_type="int") as bound:
        assert bound is None and current_tenant_id() == "7"
        async with without_tenant():
            assert current_binding() is NO_TENANT
        assert current_tenant_id() == "7"
    assert current_binding() is None


def test_exiting_in_another_context_says_what_happened_and_what_to_write_instead():
    """As FastAPI does with a sync generator dependency: entered in one copied context, exited in another."""
    import contextvars

    binder = tenant_context(A)
    contextvars.copy_context().run(binder.__enter__)
    with pytest.raises(RuntimeError, match=r"another context than it was entered in.*async def"):
        contextvars.copy_context().run(binder.__exit__, None, None, None)
    assert current_tenant_id() is None
    with binder:  # usable again, once
        assert current_tenant_id() == A
