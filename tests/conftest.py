"""Shared fixtures: every machine a test builds is checked when the test ends."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

import migengine as me

# The first example of a property test pays for numba's compile: no deadline.
settings.register_profile("migengine", deadline=None, max_examples=60, derandomize=False)
settings.register_profile("ci", deadline=None, max_examples=30, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "migengine")

PROFILES = ("hmm-v25", "seed")


@pytest.fixture
def make_machine() -> Iterator[Callable[..., me.Machine]]:
    """Build machines with ``make_machine(...)``; each one must pass ``m.check()``
    at teardown, so every scenario ends with the invariant checker."""
    built: list[me.Machine] = []

    def factory(*args: object, **kwargs: object) -> me.Machine:
        m = me.Machine(*args, **kwargs)  # type: ignore[arg-type]
        built.append(m)
        return m

    yield factory
    for m in built:
        m.check()


@pytest.fixture(params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    """Run a test under both profiles."""
    return str(request.param)
