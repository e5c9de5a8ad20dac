"""Each driver adapter names the private internals it relies on and the releases they were verified in.

These tests fail the day a driver or SQLAlchemy renames one of them, or a release newer than the newest
verified one is installed: then the adapter is re-verified and its VERIFIED bounds moved, not guessed.
"""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest

from pgtenancy.drivers import _asyncpg, _psycopg, _release, unverified
from pgtenancy.engine import UnverifiedVersionWarning, instrumentation_path

ADAPTERS = {"asyncpg": _asyncpg, "psycopg": _psycopg, "psycopg_async": _psycopg}


@pytest.mark.parametrize("adapter", [_asyncpg, _psycopg], ids=["asyncpg", "psycopg"])
def test_the_installed_releases_are_within_the_verified_ones(adapter):
    for distribution, (oldest, newest) in adapter.VERIFIED.items():
        installed = metadata.version(distribution)
        assert _release(oldest) <= _release(installed) <= _release(newest), (
            f"{distribution} {installed} is outside the releases {adapter.NAME}'s adapter was verified with "
            f"({oldest} to {newest}): re-check the names in {adapter.__name__} and move VERIFIED"
        )
    assert unverified(adapter) == []


@pytest.mark.parametrize("driver", list(ADAPTERS))
def test_a_newer_release_than_verified_is_said_at_instrument_time(
    pgtenancy_engine_factory, driver, monkeypatch
):
    adapter = ADAPTERS[driver]
    distribution = next(name for name in adapter.VERIFIED if name != "sqlalchemy")
    monkeypatch.setitem(adapter.VERIFIED, distribution, ("0.0.1", "0.0.1"))
    with pytest.warns(UnverifiedVersionWarning, match=rf"{distribution} \S+ \(verified up to 0.0.1\)"):
        engine = pgtenancy_engine_factory(driver)
    assert instrumentation_path(engine) == "driver"  # found its names: still the atomic check, said loudly


@pytest.mark.parametrize("driver", list(ADAPTERS))
def test_no_warning_on_the_verified_releases(pgtenancy_engine_factory, driver):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pgtenancy_engine_factory(driver)


def test_the_standard_library_lock_still_has_the_fast_path_the_asyncpg_adapter_copies():
    import asyncio
    import inspect

    lock = asyncio.Lock()
    assert (lock._locked, lock._waiters) == (False, None)
    assert "self._locked = True" in inspect.getsource(asyncio.Lock.acquire)
